import { DataError } from "../errors.ts";
import { freemem, totalmem } from "node:os";
import { formatSize, readBounded, readHead } from "../reads.ts";
import { brownText, isBrownSource, parseBrownSource } from "./brown.ts";

export type TextFormat = "text" | "jsonl" | "stories";
export const TEXT_FORMATS = ["text", "jsonl", "stories"] as const satisfies readonly TextFormat[];

/** TinyStories' document separator. */
export const STORY_SEPARATOR = "<|endoftext|>";

/**
 * A text file, or a built-in part of the Brown corpus named `brown:<part>`. Every text
 * input (evaluation, calibration, fitness, validation and training text, .jsonl
 * included) is read here, so none of them takes a binary file as text.
 */
export const readTextFile = (file: string): string => {
  if (isBrownSource(file)) return brownText(parseBrownSource(file));
  return decodeText(readTextBytes(file), file);
};

/**
 * Memory that tokenising a text whole takes per byte of it: about 20x measured with the
 * embedded model's tokenizer (36 s for 20 MB), up to 55x with others; planned high.
 */
export const TOKENIZE_BYTES_PER_BYTE = 64;

/** What the machine can still give (Linux's MemAvailable, or the cgroup's limit when lower). */
const availableMemory = (): number => {
  const constrained = typeof process.constrainedMemory === "function" ? process.constrainedMemory() : 0;
  const limit = constrained > 0 && constrained < totalmem() ? constrained - process.memoryUsage.rss() : Infinity;
  return Math.max(0, Math.min(freemem(), limit));
};

/**
 * A text file's bytes: a regular file within the text limit (src/reads.ts) whose whole
 * tokenisation fits the memory the machine has, refused before a byte is read otherwise.
 */
const readTextBytes = (file: string): Buffer =>
  readBounded(file, "text", {
    error: (problem) => new DataError({ file, problem: problem === "is a folder, not a file" ? "is a folder, not a text file" : problem }),
    checkSize: (size) => {
      const needed = size * TOKENIZE_BYTES_PER_BYTE;
      const available = availableMemory();
      if (needed > available) {
        throw new DataError({
          file,
          problem: `is ${formatSize(size)}: tokenising it whole would take about ${formatSize(needed)} and ${formatSize(available)} are available; use a shorter text, or a window limit (--max-windows, --eval-windows) where the text is read only as far as its windows need`,
        });
      }
    },
  });

/**
 * The text of a file's first `bytes` bytes, cut after the last line break there so no
 * character or line is cut; undefined when that would be the whole file (or a built-in
 * text). For inputs read only as far as their windows need.
 */
export const readTextPrefix = (file: string, bytes: number): string | undefined => {
  if (isBrownSource(file)) return undefined;
  const fail = (problem: string) => new DataError({ file, problem: problem === "is a folder, not a file" ? "is a folder, not a text file" : problem });
  const head = readHead(file, bytes, { error: fail, onlyIfShorter: true });
  // The whole file: read it with readTextFile, whose limits apply to whole texts.
  if (head.size <= bytes) return undefined;
  const cut = head.bytes.lastIndexOf(0x0a);
  // No line break in the prefix: one very long line, read on as the caller asks for more.
  return cut < 0 ? "" : decodeText(head.bytes.subarray(0, cut + 1), file);
};

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The text of a file's bytes: strict UTF-8 (a leading byte-order mark is dropped, as
 * TextDecoder does) with no NUL byte, which no text file holds and every binary file
 * (and UTF-16 text) soon does. Anything else is a DataError naming the file and the
 * byte offset (from 0) where the content stops being text.
 */
export const decodeText = (bytes: Uint8Array, file: string): string => {
  const notText = (why: string): DataError => new DataError({ file, problem: `not a text file (${why})` });
  const nul = bytes.indexOf(0);
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    const bad = firstInvalidUtf8(bytes);
    if (nul >= 0 && (bad < 0 || nul < bad)) throw notText(`a NUL byte at byte ${nul}`);
    const utf16 = bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff));
    if (utf16) throw notText("invalid UTF-8 at byte 0: it starts with a UTF-16 byte-order mark; evosparse reads UTF-8");
    throw notText(bad >= 0 ? `invalid UTF-8 at byte ${bad}` : "invalid UTF-8");
  }
  if (nul >= 0) throw notText(`a NUL byte at byte ${nul}`);
  return text;
};

/**
 * Offset of the first byte of the first ill-formed UTF-8 sequence, by the rules
 * TextDecoder follows (no overlong forms, no surrogates, nothing above U+10FFFF, no
 * sequence cut off by the end), or -1 when the bytes are well formed.
 */
export const firstInvalidUtf8 = (bytes: Uint8Array): number => {
  const n = bytes.length;
  const continuation = (at: number, lo = 0x80, hi = 0xbf): boolean => at < n && bytes[at]! >= lo && bytes[at]! <= hi;
  for (let i = 0; i < n; ) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
    } else if (b >= 0xc2 && b <= 0xdf) {
      if (!continuation(i + 1)) return i;
      i += 2;
    } else if (b >= 0xe0 && b <= 0xef) {
      const [lo, hi] = b === 0xe0 ? [0xa0, 0xbf] : b === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
      if (!continuation(i + 1, lo, hi) || !continuation(i + 2)) return i;
      i += 3;
    } else if (b >= 0xf0 && b <= 0xf4) {
      const [lo, hi] = b === 0xf0 ? [0x90, 0xbf] : b === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
      if (!continuation(i + 1, lo, hi) || !continuation(i + 2) || !continuation(i + 3)) return i;
      i += 4;
    } else {
      return i;
    }
  }
  return -1;
};

/** Documents of a JSON-lines file, taken from one string field. */
export const readJsonlDocuments = (file: string, field: string): string[] => {
  const docs: string[] = [];
  readTextFile(file)
    .split("\n")
    .forEach((line, i) => {
      if (line.trim() === "") return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        throw new DataError({ file, problem: `line ${i + 1} is not valid JSON` });
      }
      const value = typeof row === "object" && row !== null ? (row as Record<string, unknown>)[field] : undefined;
      if (typeof value !== "string") throw new DataError({ file, problem: `line ${i + 1} has no string field "${field}"` });
      docs.push(value);
    });
  if (docs.length === 0) throw new DataError({ file, problem: "no documents" });
  return docs;
};

/** Stories split on <|endoftext|>, stripped, empty ones dropped. */
export const splitStories = (text: string): string[] =>
  text
    .split(STORY_SEPARATOR)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);

/**
 * The evaluation text as documents. `text` is one document (the whole file); `jsonl`
 * joins its documents with "\n\n" into one, as the standard protocol does for C4-style
 * data; `stories` keeps each story apart, to be scored on its own.
 */
export const readEvaluationDocuments = (file: string, format: TextFormat, field = "text"): string[] => {
  switch (format) {
    case "text":
      return [readTextFile(file)];
    case "jsonl":
      return [readJsonlDocuments(file, field).join("\n\n")];
    case "stories": {
      const stories = splitStories(readTextFile(file));
      if (stories.length === 0) throw new DataError({ file, problem: `no stories (expected text separated by ${STORY_SEPARATOR})` });
      return stories;
    }
  }
};
