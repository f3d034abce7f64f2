import { TokenizerError } from "../errors.ts";
import { readBounded, readHead } from "../reads.ts";

/** The whole tokenizer file (a regular file within the tokenizer size limit), or a TokenizerError naming it. */
export function readTokenizerFile(file: string): Buffer {
  return readBounded(file, "tokenizer", { error: (problem) => new TokenizerError({ file, problem }) });
}

/** The first `length` bytes of a tokenizer file (fewer if it is shorter). */
export function readTokenizerHead(file: string, length: number): Buffer {
  return readHead(file, length, { error: (problem) => new TokenizerError({ file, problem }) }).bytes;
}

export function describeCause(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
