import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { calibrationWindows } from "../src/data/calibration.ts";
import { DataError } from "../src/errors.ts";
import { byteLevelTokenizer } from "../src/tokenizer/byte-level.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-calib-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const tokenizer = byteLevelTokenizer();

describe("calibration sampler", () => {
  const docs = ["short", "a".repeat(10) + "b".repeat(40), "0123456789".repeat(8), "tiny"];
  const jsonl = join(root, "c.jsonl");
  writeFileSync(jsonl, docs.map((text) => JSON.stringify({ text })).join("\n"));

  it("draws windows of seqlen tokens from documents longer than seqlen, inside one document", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 1, max: 12 }), fc.integer({ min: 2, max: 40 }), (seed, samples, seqlen) => {
        const windows = calibrationWindows({ source: jsonl, samples, seqlen, seed }, tokenizer);
        expect(windows).toHaveLength(samples);
        for (const w of windows) {
          expect(w.length).toBe(seqlen);
          const text = Buffer.from(Uint8Array.from(w)).toString("latin1");
          expect(docs.some((d) => d.length > seqlen && d.includes(text))).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("is a pure function of the seed", () => {
    const a = calibrationWindows({ source: jsonl, samples: 8, seqlen: 16, seed: 5 }, tokenizer);
    const b = calibrationWindows({ source: jsonl, samples: 8, seqlen: 16, seed: 5 }, tokenizer);
    const c = calibrationWindows({ source: jsonl, samples: 8, seqlen: 16, seed: 6 }, tokenizer);
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
  });

  it("samples plain text as one stream, and fails clearly when nothing is long enough", () => {
    const text = join(root, "t.txt");
    writeFileSync(text, "abcdefghij".repeat(20));
    const windows = calibrationWindows({ source: text, samples: 4, seqlen: 30 }, tokenizer);
    for (const w of windows) expect("abcdefghij".repeat(20)).toContain(Buffer.from(Uint8Array.from(w)).toString("latin1"));
    expect(() => calibrationWindows({ source: jsonl, samples: 2, seqlen: 500 }, tokenizer)).toThrow(DataError);
    expect(() => calibrationWindows({ source: text, samples: 2, seqlen: 500 }, tokenizer)).toThrow(/too short/);
  });
});
