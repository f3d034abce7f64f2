import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { HessianAccumulator, InputNormAccumulator } from "../src/prune/stats.ts";

/** A [tokens, in] activation batch and cut points that split its rows into batches. */
const activations = fc
  .record({ inFeatures: fc.integer({ min: 1, max: 12 }), tokens: fc.integer({ min: 1, max: 40 }) })
  .chain(({ inFeatures, tokens }) =>
    fc.record({
      inFeatures: fc.constant(inFeatures),
      tokens: fc.constant(tokens),
      x: fc.float32Array({ minLength: inFeatures * tokens, maxLength: inFeatures * tokens, min: -100, max: 100, noNaN: true }),
      cuts: fc.uniqueArray(fc.integer({ min: 1, max: Math.max(1, tokens - 1) }), { maxLength: 5 }),
    }),
  );

const batches = (x: Float32Array, inFeatures: number, tokens: number, cuts: number[]): Float32Array[] => {
  const bounds = [0, ...cuts.filter((c) => c < tokens).sort((a, b) => a - b), tokens];
  return bounds.slice(1).map((end, b) => x.subarray(bounds[b] * inFeatures, end * inFeatures));
};

const maxAbs = (a: ArrayLike<number>): number => {
  let m = 0;
  for (let e = 0; e < a.length; e++) m = Math.max(m, Math.abs(a[e]));
  return m;
};

describe("HessianAccumulator", () => {
  it("equals (2/n) X^T X computed in one go, however the rows are batched", () => {
    fc.assert(
      fc.property(activations, ({ inFeatures, tokens, x, cuts }) => {
        const direct = new Float64Array(inFeatures * inFeatures);
        for (let a = 0; a < inFeatures; a++) {
          for (let b = 0; b < inFeatures; b++) {
            let s = 0;
            for (let t = 0; t < tokens; t++) s += x[t * inFeatures + a] * x[t * inFeatures + b];
            direct[a * inFeatures + b] = (2 / tokens) * s;
          }
        }
        const acc = new HessianAccumulator(inFeatures);
        for (const batch of batches(x, inFeatures, tokens, cuts)) acc.add(batch);
        expect(acc.tokens).toBe(tokens);
        const h = acc.hessian();
        const tolerance = 1e-12 * Math.max(1, maxAbs(direct));
        for (let e = 0; e < h.length; e++) expect(Math.abs(h[e] - direct[e])).toBeLessThanOrEqual(tolerance);
      }),
      { numRuns: 60 },
    );
  });

  it("accepts Gram matrices computed elsewhere with the same running average", () => {
    fc.assert(
      fc.property(activations, ({ inFeatures, tokens, x, cuts }) => {
        const byRows = new HessianAccumulator(inFeatures);
        const byGram = new HessianAccumulator(inFeatures);
        for (const batch of batches(x, inFeatures, tokens, cuts)) {
          byRows.add(batch);
          const rows = batch.length / inFeatures;
          const gram = new Float64Array(inFeatures * inFeatures);
          for (let t = 0; t < rows; t++)
            for (let a = 0; a < inFeatures; a++)
              for (let b = 0; b < inFeatures; b++) gram[a * inFeatures + b] += batch[t * inFeatures + a] * batch[t * inFeatures + b];
          byGram.addGram(gram, rows);
        }
        const h1 = byRows.hessian();
        const h2 = byGram.hessian();
        const tolerance = 1e-12 * Math.max(1, maxAbs(h1));
        for (let e = 0; e < h1.length; e++) expect(Math.abs(h1[e] - h2[e])).toBeLessThanOrEqual(tolerance);
      }),
      { numRuns: 40 },
    );
  });

  it("hands out a copy, and rejects batches that are not whole rows", () => {
    const acc = new HessianAccumulator(2);
    acc.add(new Float32Array([1, 2]));
    const h = acc.hessian();
    h[0] = 99;
    expect(acc.hessian()[0]).toBe(2);
    expect(() => acc.add(new Float32Array(3))).toThrow(RangeError);
    expect(() => acc.addGram(new Float64Array(3), 1)).toThrow(RangeError);
    expect(() => new HessianAccumulator(0)).toThrow(RangeError);
  });
});

describe("InputNormAccumulator", () => {
  it("gives every input feature's L2 norm over all tokens, however the rows are batched", () => {
    fc.assert(
      fc.property(activations, ({ inFeatures, tokens, x, cuts }) => {
        const acc = new InputNormAccumulator(inFeatures);
        for (const batch of batches(x, inFeatures, tokens, cuts)) acc.add(batch);
        expect(acc.tokens).toBe(tokens);
        const norms = acc.norms();
        for (let j = 0; j < inFeatures; j++) {
          let s = 0;
          for (let t = 0; t < tokens; t++) s += x[t * inFeatures + j] ** 2;
          expect(Math.abs(norms[j] - Math.sqrt(s))).toBeLessThanOrEqual(1e-6 * Math.sqrt(s) + 1e-30);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("adds sums of squares computed elsewhere", () => {
    const acc = new InputNormAccumulator(2);
    acc.add(new Float32Array([3, 0, 0, 1]));
    acc.addSumSquares([0, 3], 5);
    expect(acc.tokens).toBe(7);
    expect(Array.from(acc.norms())).toEqual([3, 2]);
    expect(() => acc.addSumSquares([1], 1)).toThrow(RangeError);
  });
});
