import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { TokenizerError } from "../errors.ts";

/** The whole tokenizer file, or a TokenizerError naming it. */
export function readTokenizerFile(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (cause) {
    throw new TokenizerError({ file, problem: `cannot read the tokenizer file (${describeCause(cause)})` });
  }
}

/** The first `length` bytes of a tokenizer file (fewer if it is shorter). */
export function readTokenizerHead(file: string, length: number): Buffer {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (cause) {
    throw new TokenizerError({ file, problem: `cannot open the tokenizer file (${describeCause(cause)})` });
  }
  try {
    const head = Buffer.alloc(length);
    const read = readSync(fd, head, 0, length, 0);
    return head.subarray(0, read);
  } catch (cause) {
    throw new TokenizerError({ file, problem: `cannot read the tokenizer file (${describeCause(cause)})` });
  } finally {
    closeSync(fd);
  }
}

export function describeCause(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
