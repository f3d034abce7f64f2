/**
 * Every text input is read by readTextFile, which refuses content that is not text:
 * invalid UTF-8 or a NUL byte, each a DataError naming the file and the byte offset.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { calibrationWindows } from "../src/data/calibration.ts";
import { decodeText, firstInvalidUtf8, readEvaluationDocuments, readJsonlDocuments, readTextFile } from "../src/data/text-source.ts";
import { DataError } from "../src/errors.ts";
import type { Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { expectTaggedError } from "./helpers/errors.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-text-input-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const write = (name: string, content: string | Uint8Array): string => {
  const p = join(root, name);
  writeFileSync(p, content);
  return p;
};

/** Bytes of a small binary file: a header with NUL bytes, then bytes that are not UTF-8. */
const binary = Uint8Array.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0xff, 0xfe, 0x90, 0x00]);
const fatal = new TextDecoder("utf-8", { fatal: true });

/** A tokenizer that never gets called: the text must be refused before it is encoded. */
const unusedTokenizer: Tokenizer = {
  vocabSize: 256,
  encode: () => {
    throw new Error("a refused text reached the tokenizer");
  },
  decode: () => "",
};

describe("text inputs refuse content that is not text", () => {
  it("names the byte of the first invalid UTF-8 sequence", () => {
    const p = write("latin1.txt", Buffer.concat([Buffer.from("plain words, then caf", "utf8"), Buffer.from([0xe9]), Buffer.from(" au lait\n")]));
    expectTaggedError(DataError, () => readTextFile(p), /^not a text file \(invalid UTF-8 at byte 21\)$/, p);
    expect(() => readTextFile(p)).toThrow(`${p}: not a text file (invalid UTF-8 at byte 21)`);
  });

  it("names the byte of the first NUL, which is valid UTF-8 but never text", () => {
    const p = write("nul.txt", Buffer.concat([Buffer.from("seventeen bytes.."), Buffer.from([0]), Buffer.from("more text")]));
    expectTaggedError(DataError, () => readTextFile(p), /^not a text file \(a NUL byte at byte 17\)$/, p);
  });

  it("reports whichever comes first, NUL or invalid UTF-8", () => {
    const p = write("x.bin", binary);
    expectTaggedError(DataError, () => readTextFile(p), /^not a text file \(a NUL byte at byte 7\)$/, p);
    const q = write("y.bin", Uint8Array.from([0x41, 0xc0, 0x80, 0x00]));
    expectTaggedError(DataError, () => readTextFile(q), /^not a text file \(invalid UTF-8 at byte 1\)$/, q);
  });

  it("tells UTF-16 apart from other non-UTF-8 bytes", () => {
    const p = write("utf16.txt", Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from("text", "utf16le")]));
    expectTaggedError(DataError, () => readTextFile(p), /^not a text file \(invalid UTF-8 at byte 0: .*UTF-16.*\)$/, p);
  });

  it("accepts UTF-8 with or without a byte-order mark, dropping the mark", () => {
    const p = write("bom.txt", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from("naïve café 🙂\n", "utf8")]));
    expect(readTextFile(p)).toBe("naïve café 🙂\n");
    const j = write("bom.jsonl", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"text":"first"}\n{"text":"second"}\n')]));
    expect(readJsonlDocuments(j, "text")).toEqual(["first", "second"]);
    expect(readTextFile(write("empty.txt", ""))).toBe("");
  });

  it("refuses a binary file in every format and every reader of text", () => {
    for (const name of ["data.bin", "data.jsonl", "data.txt"]) {
      const p = write(name, binary);
      const pattern = /^not a text file \(a NUL byte at byte 7\)$/;
      for (const format of ["text", "jsonl", "stories"] as const) expectTaggedError(DataError, () => readEvaluationDocuments(p, format), pattern, p);
      expectTaggedError(DataError, () => readJsonlDocuments(p, "text"), pattern, p);
      // --calib: .jsonl documents and plain text both go through the same reader.
      expectTaggedError(DataError, () => calibrationWindows({ source: p, samples: 2, seqlen: 4 }, unusedTokenizer), pattern, p);
    }
  });

  it("says a folder is not a text file", () => {
    expectTaggedError(DataError, () => readTextFile(root), /^is a folder, not a text file$/, root);
  });
});

/** Arbitrary bytes, UTF-8 text, and text with a few bytes spliced in: all three kinds of input. */
const inputs = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.string({ unit: "binary", maxLength: 40 }).map((s) => new TextEncoder().encode(s)),
  fc
    .tuple(fc.string({ unit: "binary", maxLength: 30 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }))
    .map(([s, edits]) => {
      const bytes = new TextEncoder().encode(s);
      for (const [at, value] of edits) if (bytes.length > 0) bytes[at % bytes.length] = value;
      return bytes;
    }),
  fc.string({ unit: "binary", maxLength: 20 }).map((s) => Uint8Array.from([0xef, 0xbb, 0xbf, ...new TextEncoder().encode(s)])),
);

describe("decoding arbitrary bytes", () => {
  it("gives exactly TextDecoder's text for valid UTF-8 without NUL, and otherwise a DataError naming the file and the offending byte", () => {
    fc.assert(
      fc.property(inputs, (bytes) => {
        let expected: string | undefined;
        try {
          expected = fatal.decode(bytes);
        } catch {
          expected = undefined;
        }
        const isText = expected !== undefined && !bytes.includes(0);
        let text: string;
        try {
          text = decodeText(bytes, "some.bin");
        } catch (error) {
          expect(error).toBeInstanceOf(DataError);
          const e = error as DataError;
          expect(e.file).toBe("some.bin");
          expect(isText).toBe(false);
          const at = /^not a text file \((?:invalid UTF-8|a NUL byte) at byte (\d+)\b/.exec(e.problem);
          expect(at).not.toBeNull();
          const offset = Number(at![1]);
          // Everything before the named byte is text; the named byte is where it stops.
          expect(() => fatal.decode(bytes.subarray(0, offset))).not.toThrow();
          expect(bytes.subarray(0, offset).includes(0)).toBe(false);
          if (/NUL/.test(e.problem)) expect(bytes[offset]).toBe(0);
          else expect(() => fatal.decode(bytes.subarray(0, Math.min(bytes.length, offset + 4)))).toThrow();
          return;
        }
        expect(isText).toBe(true);
        expect(text).toBe(expected);
      }),
      { numRuns: 2000 },
    );
  });

  it("finds invalid UTF-8 exactly where TextDecoder does", () => {
    fc.assert(
      fc.property(inputs, (bytes) => {
        let valid = true;
        try {
          fatal.decode(bytes);
        } catch {
          valid = false;
        }
        expect(firstInvalidUtf8(bytes) === -1).toBe(valid);
      }),
      { numRuns: 2000 },
    );
  });

  it("agrees with TextDecoder on every non-ASCII lead byte followed by the boundary bytes of each range", () => {
    const edges = [0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xf4, 0xf5, 0xff];
    const wrong: string[] = [];
    for (let a = 0x80; a <= 0xff; a++) {
      for (const b of edges) {
        for (const c of [0x00, 0x41, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0]) {
          for (const d of [0x80, 0xbf, 0x41]) {
            const bytes = Uint8Array.of(a, b, c, d);
            let valid = true;
            try {
              fatal.decode(bytes);
            } catch {
              valid = false;
            }
            if ((firstInvalidUtf8(bytes) === -1) !== valid) wrong.push(Buffer.from(bytes).toString("hex"));
          }
        }
      }
    }
    expect(wrong).toEqual([]);
  });
});

describe("the eval command with a binary --data", () => {
  const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
  it("exits 1 with one line naming the file", () => {
    const p = write("some.bin", binary);
    const r = spawnSync(process.execPath, [bin, "eval", "--data", p, "--backend", "cpu"], { encoding: "utf8", env: { ...process.env, CI: "true" } });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")).toEqual([`evosparse: ${p}: not a text file (a NUL byte at byte 7)`]);
  });
});
