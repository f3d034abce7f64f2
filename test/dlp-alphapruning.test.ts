/**
 * DLP and AlphaPruning: their allocation rules (src/allocation/baselines.ts) against the
 * properties of their reference code, the spectra AlphaPruning reads (src/prune/spectra.ts),
 * and both plugins run from numbers alone.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { alphaPruning, dlp } from "../src/allocation/baselines.ts";
import { powerLawAlpha, squaredSingularValues, symmetricEigenvalues } from "../src/prune/spectra.ts";
import type { BlockStatistics, MethodContext } from "../src/search/plugin.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { plugin as alphaPlugin } from "../plugins/alphapruning/index.ts";
import { plugin as dlpPlugin } from "../plugins/dlp/index.ts";

const weightedMean = (s: readonly number[], w: readonly number[]) => s.reduce((n, v, i) => n + v * w[i]!, 0) / w.reduce((a, b) => a + b, 0);

describe("the spectra AlphaPruning reads", () => {
  it("are the squared singular values: their sum is ||W||_F^2, their squares sum to ||W W^T||_F^2, the largest is the power iteration's (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 1, max: 12 }), fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 144, maxLength: 144 }), (rows, cols, pool) => {
        const w = pool.slice(0, rows * cols);
        const eigs = squaredSingularValues(w, rows, cols);
        expect(eigs.length).toBe(Math.min(rows, cols));
        for (let i = 1; i < eigs.length; i++) expect(eigs[i]!).toBeGreaterThanOrEqual(eigs[i - 1]!);
        const frob = w.reduce((n, v) => n + v * v, 0);
        expect(eigs.reduce((a, b) => a + b, 0)).toBeCloseTo(frob, 6);
        // ||W^T W||_F^2 = sum of σ^4.
        let gram2 = 0;
        for (let i = 0; i < cols; i++) {
          for (let j = 0; j < cols; j++) {
            let s = 0;
            for (let r = 0; r < rows; r++) s += w[r * cols + i]! * w[r * cols + j]!;
            gram2 += s * s;
          }
        }
        expect(eigs.reduce((a, b) => a + b * b, 0)).toBeCloseTo(gram2, 4);
        expect(eigs[0]!).toBeGreaterThan(-1e-9 * Math.max(1, frob));
      }),
      { numRuns: 60 },
    );
  });

  it("of a symmetric matrix with a known spectrum come back exactly", () => {
    // Q diag(λ) Q^T with Q a Householder reflection.
    const n = 6;
    const lambda = [5, -2, 0.5, 3, 3, 10];
    const v = [1, 2, -1, 0.5, 3, -2];
    const norm2 = v.reduce((a, b) => a + b * b, 0);
    const q = (i: number, j: number) => (i === j ? 1 : 0) - (2 * v[i]! * v[j]!) / norm2;
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let k = 0; k < n; k++) a[i * n + j] += q(i, k) * lambda[k]! * q(j, k);
    const eigs = Array.from(symmetricEigenvalues(a, n));
    expect(eigs.map((e) => Number(e.toFixed(9)))).toEqual([...lambda].sort((x, y) => x - y));
  });

  it("give the power-law exponent of a Pareto tail", () => {
    for (const exponent of [2, 3, 4.5]) {
      const count = 3000;
      // Quantiles of a Pareto law with density ∝ x^-exponent above 1.
      const sample = Array.from({ length: count }, (_, k) => (1 - (k + 0.5) / count) ** (-1 / (exponent - 1)));
      expect(powerLawAlpha(sample.sort((x, y) => x - y))).toBeCloseTo(exponent, 0);
    }
    expect(powerLawAlpha([0, 0, 1])).toBe(0);
  });
});

describe("DLP's rule", () => {
  it("keeps the mean at S, prunes blocks with higher mean scores more, spreads sparsity over 2α where no bound binds (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0.01, max: 10, noNaN: true }), { minLength: 2, maxLength: 24 }), fc.double({ min: 0.3, max: 0.7, noNaN: true }), (scores, target) => {
        const alpha = 0.1;
        const s = dlp(scores, target, { alpha });
        expect(weightedMean(s, scores.map(() => 1))).toBeCloseTo(target, 9);
        for (let i = 0; i < scores.length; i++) for (let j = 0; j < scores.length; j++) if (scores[i]! > scores[j]!) expect(s[i]!).toBeGreaterThanOrEqual(s[j]! - 1e-12);
        if (Math.max(...scores) > Math.min(...scores)) expect(Math.max(...s) - Math.min(...s)).toBeCloseTo(2 * alpha, 9);
      }),
    );
  });
});

describe("AlphaPruning's rule", () => {
  it("keeps the weighted mean at S, prunes larger α more, with ratios spanning (1+ε)/(1-ε) where no bound binds (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.double({ min: 1.5, max: 8, noNaN: true }), fc.integer({ min: 1, max: 5 })), { minLength: 2, maxLength: 24 }), fc.double({ min: 0.3, max: 0.6, noNaN: true }), (blocks, target) => {
        const alphas = blocks.map((b) => b[0]);
        const weights = blocks.map((b) => b[1]);
        const epsilon = 0.3;
        const s = alphaPruning(alphas, target, { epsilon, weights });
        expect(weightedMean(s, weights)).toBeCloseTo(target, 9);
        for (let i = 0; i < alphas.length; i++) for (let j = 0; j < alphas.length; j++) if (alphas[i]! > alphas[j]!) expect(s[i]!).toBeGreaterThanOrEqual(s[j]! - 1e-12);
        if (Math.max(...alphas) > Math.min(...alphas) && Math.max(...s) < 0.99) expect(Math.max(...s) / Math.min(...s)).toBeCloseTo((1 + epsilon) / (1 - epsilon), 9);
      }),
    );
  });
});

describe("the dlp and alphapruning plugins", () => {
  const context = (statistics: Partial<BlockStatistics>, metric?: MethodContext["metric"]): MethodContext => ({
    blocks: 3,
    ...(metric ? { metric } : {}),
    blockParams: [40, 40, 40],
    linears: [0, 1, 2].flatMap((block) => [{ block, linear: "a", params: 10 }, { block, linear: "b", params: 30 }]),
    target: 0.5,
    bounds: { lo: 0, hi: 0.99 },
    pattern: { kind: "unstructured" },
    statistics: { outlierShares: () => [], fisherTraces: () => [], elementScores: () => new Float32Array(), nonOutlierRatio: () => 0, ...statistics },
  });

  it("dlp allocates from the blocks' mean Wanda scores with its published α", () => {
    const space = loadSearchSpace(dlpPlugin);
    expect(space).toEqual({ alpha: 0.15 });
    const allocate = dlpPlugin.method.kind === "direct" ? dlpPlugin.method.allocate : undefined;
    expect(allocate!(context({ meanWandaScores: () => [1, 2, 3] }), space)).toEqual(dlp([1, 2, 3], 0.5, { alpha: 0.15, weights: [40, 40, 40], bounds: { lo: 0, hi: 0.99 } }));
    expect(() => allocate!(context({}), space)).toThrow(/mean Wanda scores/);
  });

  it("alphapruning averages its linears' α per block and takes the metric's published ε", () => {
    const space = loadSearchSpace(alphaPlugin);
    expect(space.epsilon).toEqual({ wanda: 0.3, magnitude: 0.5, sparsegpt: 0.2 });
    const allocate = alphaPlugin.method.kind === "direct" ? alphaPlugin.method.allocate : undefined;
    const alphas = () => [2, 4, 3, 3, 5, 7];
    for (const metric of ["wanda", "magnitude", "sparsegpt"] as const) {
      expect(allocate!(context({ spectralAlphas: alphas }, metric), space)).toEqual(alphaPruning([3, 3, 6], 0.5, { epsilon: space.epsilon[metric], weights: [40, 40, 40], bounds: { lo: 0, hi: 0.99 } }));
    }
  });
});
