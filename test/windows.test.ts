import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { contiguousWindows, documentWindows, scoredTokens } from "../src/data/windows.ts";

describe("evaluation windows", () => {
  it("cuts floor(N / seqlen) windows and scores all positions but the first", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 300 }), fc.integer({ min: 2, max: 40 }), (tokens, seqlen) => {
        const windows = contiguousWindows(tokens, seqlen);
        expect(windows).toHaveLength(Math.floor(tokens.length / seqlen));
        expect(scoredTokens(windows)).toBe(windows.length * (seqlen - 1));
        windows.forEach((w, k) => {
          expect(Array.from(w.ids)).toEqual(tokens.slice(k * seqlen, (k + 1) * seqlen));
          for (let t = 0; t < seqlen - 1; t++) expect(w.targets[t]).toBe(w.ids[t + 1]);
          expect(w.targets[seqlen - 1]).toBe(-1);
        });
      }),
    );
  });

  it("with BOS, scores every text token of each window, its first included", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 3, max: 50 }), { maxLength: 300 }), fc.integer({ min: 2, max: 40 }), (tokens, seqlen) => {
        const windows = contiguousWindows(tokens, seqlen, { bos: 1 });
        expect(windows).toHaveLength(Math.floor(tokens.length / (seqlen - 1)));
        const scored = windows.flatMap((w) => Array.from(w.targets).filter((t) => t >= 0));
        expect(scored).toEqual(tokens.slice(0, windows.length * (seqlen - 1)));
        for (const w of windows) expect(w.ids[0]).toBe(1);
      }),
    );
  });

  it("maxWindows caps the count", () => {
    expect(contiguousWindows(Array.from({ length: 100 }, (_, i) => i), 10, { maxWindows: 3 })).toHaveLength(3);
  });

  it("document windows put BOS first and truncate to seqlen", () => {
    const windows = documentWindows([[5, 6, 7], [8, 9, 10, 11, 12]], 4, 1);
    expect(windows.map((w) => Array.from(w.ids))).toEqual([[1, 5, 6, 7], [1, 8, 9, 10]]);
    expect(windows.map((w) => Array.from(w.targets))).toEqual([[5, 6, 7, -1], [8, 9, 10, -1]]);
  });
});
