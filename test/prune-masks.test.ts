import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  applyMask,
  countPruned,
  maskAtSparsity,
  nmMask,
  sortedOrder,
  unstructuredMask,
  type MaskGroup,
  type Shape2,
} from "../src/prune/masks.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "../src/prune/scores.ts";

/** A weight [in, out]; values come from a small set now and then so that ties are common. */
const layer = fc
  .record({
    inFeatures: fc.integer({ min: 4, max: 48 }),
    outFeatures: fc.integer({ min: 4, max: 48 }),
    tied: fc.boolean(),
  })
  .chain(({ inFeatures, outFeatures, tied }) =>
    fc.record({
      shape: fc.constant([inFeatures, outFeatures] as Shape2),
      weight: tied
        ? fc
            .array(fc.integer({ min: -3, max: 3 }), { minLength: inFeatures * outFeatures, maxLength: inFeatures * outFeatures })
            .map((v) => Float32Array.from(v))
        : fc.float32Array({ minLength: inFeatures * outFeatures, maxLength: inFeatures * outFeatures, min: -4, max: 4, noNaN: true }),
      norms: fc.float32Array({ minLength: inFeatures, maxLength: inFeatures, min: 0, max: 10, noNaN: true }),
    }),
  );

/** Flat indices of each group, in index order: the whole matrix, or each column of [in, out]. */
const groupsOf = ([inFeatures, outFeatures]: Shape2, group: MaskGroup): number[][] =>
  group === "matrix"
    ? [Array.from({ length: inFeatures * outFeatures }, (_, e) => e)]
    : Array.from({ length: outFeatures }, (_, o) => Array.from({ length: inFeatures }, (_, i) => i * outFeatures + o));

const firstDifference = (a: Uint8Array, b: Uint8Array): number => {
  if (a.length !== b.length) return 0;
  for (let e = 0; e < a.length; e++) if (a[e] !== b[e]) return e;
  return -1;
};

/** Every pruned element precedes every kept one in the (score, index) order of its group. */
const expectLowestPruned = (scores: Float32Array, keep: Uint8Array, members: number[]): void => {
  const pruned = members.filter((e) => !keep[e]);
  const kept = members.filter((e) => keep[e]);
  if (pruned.length === 0 || kept.length === 0) return;
  const last = pruned.reduce((a, b) => (scores[b] > scores[a] || (scores[b] === scores[a] && b > a) ? b : a));
  const first = kept.reduce((a, b) => (scores[b] < scores[a] || (scores[b] === scores[a] && b < a) ? b : a));
  expect(scores[last] < scores[first] || (scores[last] === scores[first] && last < first)).toBe(true);
};

describe("unstructured masks", () => {
  it("magnitude prunes exactly floor(size * s) of the whole matrix, the lowest ones", () => {
    fc.assert(
      fc.property(layer, fc.double({ min: 0, max: 1, noNaN: true }), ({ shape, weight }, s) => {
        const scores = magnitudeScores(weight);
        const keep = unstructuredMask(scores, shape, comparisonGroup("magnitude"), s);
        expect(countPruned(keep)).toBe(Math.floor(weight.length * s));
        expectLowestPruned(scores, keep, groupsOf(shape, "matrix")[0]);
      }),
      { numRuns: 60 },
    );
  });

  it("wanda prunes exactly floor(in * s) of every output neuron (column of [in, out]), the lowest ones", () => {
    fc.assert(
      fc.property(layer, fc.double({ min: 0, max: 1, noNaN: true }), ({ shape, weight, norms }, s) => {
        const scores = wandaScores(weight, shape, norms);
        const keep = unstructuredMask(scores, shape, comparisonGroup("wanda"), s);
        for (const members of groupsOf(shape, "output")) {
          expect(members.filter((e) => !keep[e]).length).toBe(Math.floor(shape[0] * s));
          expectLowestPruned(scores, keep, members);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("wanda gives magnitude's per-output mask when all input norms are equal", () => {
    // Powers of two >= 1: scaling a float32 by any other constant can round two different
    // magnitudes to one score (a tie, then broken by index), which is not what is tested here.
    const norm = fc.integer({ min: 0, max: 10 }).map((k) => 2 ** k);
    fc.assert(
      fc.property(layer, fc.double({ min: 0, max: 1, noNaN: true }), norm, ({ shape, weight }, s, norm) => {
        const wanda = wandaScores(weight, shape, new Float32Array(shape[0]).fill(norm));
        const magnitude = magnitudeScores(weight);
        expect(unstructuredMask(wanda, shape, "output", s)).toEqual(unstructuredMask(magnitude, shape, "output", s));
      }),
      { numRuns: 40 },
    );
  });

  it("wanda weighs input feature i (row i of [in, out]) by its norm", () => {
    // Input 0 has the smaller weights but a large norm, so within each output it survives.
    const weight = Float32Array.from([1, -1, 2, 2]);
    const keep = unstructuredMask(wandaScores(weight, [2, 2], [10, 1]), [2, 2], "output", 0.5);
    expect(Array.from(keep)).toEqual([1, 1, 0, 0]);
    expect(Array.from(unstructuredMask(magnitudeScores(weight), [2, 2], "output", 0.5))).toEqual([0, 0, 1, 1]);
  });

  it("the threshold lookup on a precomputed order equals the direct mask at every sparsity", () => {
    fc.assert(
      fc.property(layer, fc.constantFrom<MaskGroup>("matrix", "output"), fc.double({ min: 0, max: 1, noNaN: true }), ({ shape, weight, norms }, group, s) => {
        const scores = group === "matrix" ? magnitudeScores(weight) : wandaScores(weight, shape, norms);
        const order = sortedOrder(scores, shape, group);
        const groupSize = group === "matrix" ? weight.length : shape[0];
        // Every pruned count of a column; for the whole matrix the edges and a spread of counts.
        const step = Math.max(1, Math.floor(groupSize / 24));
        const counts = [...Array.from({ length: Math.floor(groupSize / step) + 1 }, (_, c) => c * step), 1, groupSize - 1, groupSize];
        for (const r of [s, ...counts.map((k) => k / groupSize)]) {
          expect(firstDifference(maskAtSparsity(order, r), unstructuredMask(scores, shape, group, r))).toBe(-1);
        }
      }),
      { numRuns: 25 },
    );
  });

  it("orders signed scores, and -0 like +0", () => {
    const scores = Float32Array.from([0, -0, -2, 3, -Infinity, 1]);
    const order = sortedOrder(scores, [6, 1], "matrix");
    expect(Array.from(order.order)).toEqual([4, 2, 0, 1, 5, 3]);
    expect(maskAtSparsity(order, 0.5)).toEqual(unstructuredMask(scores, [6, 1], "matrix", 0.5));
  });

  it("applyMask zeroes exactly the pruned weights", () => {
    fc.assert(
      fc.property(layer, fc.double({ min: 0, max: 1, noNaN: true }), ({ shape, weight }, s) => {
        const keep = unstructuredMask(magnitudeScores(weight), shape, "matrix", s);
        const masked = applyMask(weight, keep);
        for (let e = 0; e < weight.length; e++) expect(masked[e]).toBe(keep[e] ? weight[e] : 0);
      }),
      { numRuns: 20 },
    );
  });

  it("rejects bad input with RangeError", () => {
    const scores = new Float32Array(6);
    expect(() => unstructuredMask(scores, [2, 2], "matrix", 0.5)).toThrow(RangeError);
    expect(() => unstructuredMask(scores, [2, 3], "matrix", 1.5)).toThrow(RangeError);
    expect(() => unstructuredMask(Float32Array.from([0, NaN]), [1, 2], "matrix", 0.5)).toThrow(/NaN/);
    expect(() => maskAtSparsity(sortedOrder(scores, [2, 3], "output"), -0.1)).toThrow(RangeError);
    expect(() => applyMask(scores, new Uint8Array(5))).toThrow(RangeError);
    expect(() => wandaScores(scores, [2, 3], [1])).toThrow(RangeError);
  });
});

describe("N:M masks", () => {
  const nmCase = fc
    .record({ m: fc.integer({ min: 2, max: 8 }), groups: fc.integer({ min: 1, max: 6 }), outFeatures: fc.integer({ min: 1, max: 24 }) })
    .chain(({ m, groups, outFeatures }) =>
      fc.record({
        m: fc.constant(m),
        n: fc.integer({ min: 0, max: m - 1 }),
        shape: fc.constant([m * groups, outFeatures] as Shape2),
        scores: fc.float32Array({ minLength: m * groups * outFeatures, maxLength: m * groups * outFeatures, min: 0, max: 4, noNaN: true }),
      }),
    );

  it("prunes the n lowest of every m consecutive inputs of every output neuron", () => {
    fc.assert(
      fc.property(nmCase, ({ n, m, shape, scores }) => {
        const keep = nmMask(scores, shape, n, m);
        const [inFeatures, outFeatures] = shape;
        for (let o = 0; o < outFeatures; o++) {
          for (let start = 0; start < inFeatures; start += m) {
            const members = Array.from({ length: m }, (_, r) => (start + r) * outFeatures + o);
            expect(members.filter((e) => !keep[e]).length).toBe(n);
            expectLowestPruned(scores, keep, members);
          }
        }
      }),
      { numRuns: 60 },
    );
  });

  it("2:4 on a hand-made layer", () => {
    // in = 4, out = 2: output 0 sees scores 4,1,3,2 and output 1 sees 1,1,1,1 (ties: lower input first).
    const scores = Float32Array.from([4, 1, 1, 1, 3, 1, 2, 1]);
    expect(Array.from(nmMask(scores, [4, 2], 2, 4))).toEqual([1, 0, 0, 0, 1, 1, 0, 1]);
  });

  it("rejects input counts that are not whole groups, and N >= M, with RangeError", () => {
    expect(() => nmMask(new Float32Array(6), [6, 1], 2, 4)).toThrow(/not divisible/);
    expect(() => nmMask(new Float32Array(8), [8, 1], 4, 4)).toThrow(RangeError);
    expect(() => nmMask(new Float32Array(8), [8, 1], 1.5, 4)).toThrow(RangeError);
  });
});
