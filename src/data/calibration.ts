import { DataError } from "../errors.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { Rng } from "../rng.ts";
import { readJsonlDocuments, readTextFile } from "./text-source.ts";

export interface CalibrationRequest {
  /** A text file, a JSON-lines file (by extension .jsonl), or brown:<part>. */
  readonly source: string;
  readonly field?: string;
  readonly samples: number;
  readonly seqlen: number;
  readonly seed?: number;
}

/**
 * Calibration windows following the standard protocol (SparseGPT / Wanda `get_c4`):
 * for JSON lines, draw a random document whose token count exceeds seqlen (redrawing
 * otherwise), then a random window of seqlen tokens inside it; for plain text, a random
 * window of the whole token stream. Draws come from the project's seeded Rng (default
 * seed 0), so the same request always gives the same windows.
 */
export const calibrationWindows = (request: CalibrationRequest, tokenizer: Tokenizer): Int32Array[] => {
  const { source, samples, seqlen } = request;
  const rng = new Rng(request.seed ?? 0);
  const windows: Int32Array[] = [];
  if (source.endsWith(".jsonl")) {
    const documents = readJsonlDocuments(source, request.field ?? "text");
    const encoded = new Map<number, number[]>();
    const tokensOf = (i: number) => {
      let t = encoded.get(i);
      if (!t) encoded.set(i, (t = tokenizer.encode(documents[i]!)));
      return t;
    };
    // Bounded redraws: a file with no long-enough document must fail, not spin.
    const maxDraws = samples * 1000;
    for (let draws = 0; windows.length < samples; draws++) {
      if (draws >= maxDraws) {
        throw new DataError({ file: source, problem: `found too few documents longer than ${seqlen} tokens for ${samples} calibration windows` });
      }
      const tokens = tokensOf(rng.int(documents.length));
      if (tokens.length <= seqlen) continue;
      const start = rng.int(tokens.length - seqlen);
      windows.push(Int32Array.from(tokens.slice(start, start + seqlen)));
    }
    return windows;
  }
  const tokens = tokenizer.encode(readTextFile(source));
  if (tokens.length <= seqlen) throw new DataError({ file: source, problem: `only ${tokens.length} tokens: too short for calibration windows of ${seqlen}` });
  for (let k = 0; k < samples; k++) {
    const start = rng.int(tokens.length - seqlen);
    windows.push(Int32Array.from(tokens.slice(start, start + seqlen)));
  }
  return windows;
};
