import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { nonOutlierRatio, outlierShare } from "../src/prune/outliers.ts";
import { Rng } from "../src/rng.ts";

const scoresArb = fc.array(fc.array(fc.float({ min: 0, max: 1e3, noNaN: true }), { minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 4 });

describe("outlier statistics", () => {
  it("counts the scores above M times the mean of all linears together", () => {
    // mean = (1 * 19 + 100) / 20 = 5.95; 5 * mean = 29.75: only the 100 is an outlier.
    const a = [new Float32Array(10).fill(1), Float32Array.from([...new Array(9).fill(1), 100])];
    expect(outlierShare(a)).toBeCloseTo(1 / 20, 12);
    expect(outlierShare(a, 100)).toBe(0);
    expect(nonOutlierRatio(a, [new Uint8Array(10).fill(1), new Uint8Array(10).fill(1)])).toBeCloseTo(19 / 20, 12);
    // Once the outlier is pruned, nothing stands out among the survivors.
    const keep = [new Uint8Array(10).fill(1), Uint8Array.from([...new Array(9).fill(1), 0])];
    expect(nonOutlierRatio(a, keep)).toBe(1);
  });

  it("stays in [0, 1], is scale-free, and constant scores have no outliers", () => {
    fc.assert(
      fc.property(scoresArb, fc.float({ min: Math.fround(0.5), max: 4, noNaN: true }), (scores, c) => {
        const d = outlierShare(scores);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(1);
        // Powers of two scale exactly in floating point.
        const scaled = scores.map((s) => s.map((v) => v * 4));
        expect(outlierShare(scaled)).toBe(d);
        const all = scores.map((s) => s.map(() => c));
        expect(outlierShare(all)).toBe(0);
        const keepAll = scores.map((s) => s.map(() => 1));
        expect(nonOutlierRatio(scores, keepAll)).toBeCloseTo(1 - d, 12);
      }),
    );
  });

  it("a block with nothing kept counts as fully redundant", () => {
    expect(nonOutlierRatio([Float32Array.from([1, 2])], [Uint8Array.from([0, 0])])).toBe(1);
  });

  it("pruning the low scores raises the ratio over survivors and lowers it when pruned weights count as zeros", () => {
    const rng = new Rng(7);
    // Heavy-tailed scores, like |W| * ||X||: exponential.
    const scores = [Float32Array.from({ length: 20_000 }, () => -Math.log(1 - rng.next()))];
    const sorted = Float32Array.from(scores[0]!).sort();
    const keepAbove = (q: number) => [Uint8Array.from(scores[0]!, (v) => (v > sorted[Math.floor(q * sorted.length)]! ? 1 : 0))];
    const all = [new Uint8Array(20_000).fill(1)];
    const dense = nonOutlierRatio(scores, all, 5, "excluded");
    expect(nonOutlierRatio(scores, all, 5, "zero")).toBe(dense);
    for (const q of [0.3, 0.5, 0.7]) {
      expect(nonOutlierRatio(scores, keepAbove(q), 5, "excluded")).toBeGreaterThan(dense);
      expect(nonOutlierRatio(scores, keepAbove(q), 5, "zero")).toBeLessThan(dense);
    }
  });
});
