import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  blockParams,
  blockSparsities,
  globalSparsity,
  layoutOf,
  perBlock,
  perBlockNM,
} from "../src/allocation/allocation.ts";
import type { Layout } from "../src/allocation/allocation.ts";
import { atpBetaGrid, atpRamp, owl, uniform } from "../src/allocation/baselines.ts";
import { defaultBounds, projectToTarget, weightedMean } from "../src/allocation/project.ts";
import type { Bounds } from "../src/allocation/project.ts";
import type { ModelSpec } from "../src/model/spec.ts";

const runs = { numRuns: 200 };

/** Any double, including NaN, ±Inf, -0 and magnitudes near Number.MAX_VALUE. */
const anyValue = fc.double();
const moderateValue = fc.double({ min: -10, max: 10, noNaN: true });
const positiveWeight = fc.oneof(
  fc.integer({ min: 1, max: 1_000_000_000 }),
  fc.double({ min: 1e-3, max: 1e12, noNaN: true }),
);

/** Bounds with lo <= hi, and a target inside them. */
const boundsAndTarget = fc
  .record({
    lo: fc.double({ min: -1, max: 0.5, noNaN: true }),
    width: fc.double({ min: 0, max: 2, noNaN: true }),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
  })
  .map(({ lo, width, at }) => {
    const bounds: Bounds = { lo, hi: lo + width };
    return { bounds, target: Math.min(bounds.hi, lo + at * width) };
  });

/** Values and weights of the same length; some weights may be zero, never all. */
const problem = (value: fc.Arbitrary<number>) =>
  fc
    .array(fc.tuple(value, fc.oneof({ weight: 5, arbitrary: positiveWeight }, { weight: 1, arbitrary: fc.constant(0) })), {
      minLength: 1,
      maxLength: 40,
    })
    .map((pairs) => {
      const weights: number[] = pairs.map(([, w]) => w);
      if (!weights.some((w) => w > 0)) weights[0] = 1;
      return { x: pairs.map(([v]) => v), weights };
    });

const scale = ({ lo, hi }: Bounds): number => Math.max(1, Math.abs(lo), Math.abs(hi));

const expectValid = (y: number[], weights: number[], target: number, bounds: Bounds): void => {
  for (const v of y) {
    expect(v).toBeGreaterThanOrEqual(bounds.lo);
    expect(v).toBeLessThanOrEqual(bounds.hi);
  }
  expect(Math.abs(weightedMean(y, weights) - target)).toBeLessThanOrEqual(1e-9 * scale(bounds));
};

describe("projectToTarget", () => {
  it("hits the target mean and stays in bounds for any input", () => {
    fc.assert(
      fc.property(problem(anyValue), boundsAndTarget, ({ x, weights }, { bounds, target }) => {
        expectValid(projectToTarget(x, weights, target, bounds), weights, target, bounds);
      }),
      runs,
    );
  });

  it("returns a valid vector unchanged", () => {
    fc.assert(
      fc.property(problem(anyValue), boundsAndTarget, ({ x, weights }, { bounds, target }) => {
        const y = projectToTarget(x, weights, target, bounds);
        expect(projectToTarget(y, weights, target, bounds)).toEqual(y);
      }),
      runs,
    );
    expect(projectToTarget([0.4, 0.6, 0.5], [1, 1, 1], 0.5)).toEqual([0.4, 0.6, 0.5]);
  });

  it("keeps the order of the entries, whatever the weights", () => {
    const ordered = fc.oneof(moderateValue, fc.constant(Infinity), fc.constant(-Infinity), fc.double({ noNaN: true }));
    fc.assert(
      fc.property(problem(ordered), boundsAndTarget, ({ x, weights }, { bounds, target }) => {
        const y = projectToTarget(x, weights, target, bounds);
        for (let i = 0; i < x.length; i++) {
          for (let j = 0; j < x.length; j++) {
            if (x[i] <= x[j]) expect(y[i]).toBeLessThanOrEqual(y[j]);
          }
        }
      }),
      runs,
    );
  });

  // The minimiser of sum w (y - x)^2 under the constraints is clamp(x + tau) for one tau:
  // check that characterisation directly instead of re-deriving the algorithm.
  it("is the weighted Euclidean projection (one common shift, then clamp)", () => {
    fc.assert(
      fc.property(problem(moderateValue), boundsAndTarget, ({ x, weights }, { bounds, target }) => {
        const y = projectToTarget(x, weights, target, bounds);
        // With lo = hi every entry is forced and any shift explains it.
        if (bounds.lo === bounds.hi) return;
        const eps = 1e-9;
        let tauLow = -Infinity;
        let tauHigh = Infinity;
        for (let i = 0; i < x.length; i++) {
          if (y[i] <= bounds.lo) tauHigh = Math.min(tauHigh, bounds.lo - x[i]);
          if (y[i] >= bounds.hi) tauLow = Math.max(tauLow, bounds.hi - x[i]);
          if (y[i] > bounds.lo && y[i] < bounds.hi) {
            tauLow = Math.max(tauLow, y[i] - x[i]);
            tauHigh = Math.min(tauHigh, y[i] - x[i]);
          }
        }
        expect(tauLow).toBeLessThanOrEqual(tauHigh + eps);
      }),
      runs,
    );
  });

  it("shifts every entry by the same amount when nothing clamps", () => {
    const y = projectToTarget([0.2, 0.4, 0.6], [1, 1, 1], 0.5);
    expect(y[0]).toBeCloseTo(0.3, 12);
    expect(y[1]).toBeCloseTo(0.5, 12);
    expect(y[2]).toBeCloseTo(0.7, 12);
  });

  it("clamps at hi and spreads the rest by weight", () => {
    // 3 clamp(tau) + clamp(1 + tau) = 0.5 * 4 with the second entry at 0.99: tau = 1.01 / 3.
    const y = projectToTarget([0, 1], [3, 1], 0.5);
    expect(y[0]).toBeCloseTo(1.01 / 3, 12);
    expect(y[1]).toBe(0.99);
  });

  it("treats NaN as the target and infinities as the bounds", () => {
    expect(projectToTarget([NaN, 0.5], [1, 1], 0.5)).toEqual([0.5, 0.5]);
    const up = projectToTarget([Infinity, 0, 0, 0], [1, 1, 1, 1], 0.5);
    expect(up[0]).toBe(0.99);
    for (const v of up.slice(1)) expect(v).toBeCloseTo(1.01 / 3, 12);
    const down = projectToTarget([-Infinity, 0.5, 0.5], [1, 1, 1], 0.5);
    expect(down[0]).toBe(0);
    expect(down[1]).toBeCloseTo(0.75, 12);
    // Infinities leave their bound when the target demands it.
    expect(projectToTarget([Infinity, Infinity], [1, 1], 0.3)).toEqual([0.3, 0.3]);
  });

  it("reaches targets on the bounds exactly", () => {
    expect(projectToTarget([0.1, 0.7, 0.3], [1, 2, 3], 0)).toEqual([0, 0, 0]);
    expect(projectToTarget([0.1, 0.7, 0.3], [1, 2, 3], 0.99)).toEqual([0.99, 0.99, 0.99]);
  });

  it("rejects infeasible targets and malformed weights with a RangeError", () => {
    expect(() => projectToTarget([0.5], [1], 0.995)).toThrow(RangeError);
    expect(() => projectToTarget([0.5], [1], -0.1)).toThrow(/outside the bounds/);
    expect(() => projectToTarget([0.5], [1], NaN)).toThrow(RangeError);
    expect(() => projectToTarget([0.5, 0.5], [1], 0.5)).toThrow(/2 values but 1 weights/);
    expect(() => projectToTarget([0.5, 0.5], [0, 0], 0.5)).toThrow(RangeError);
    expect(() => projectToTarget([0.5], [-1], 0.5)).toThrow(RangeError);
    expect(() => projectToTarget([], [], 0.5)).toThrow(RangeError);
    expect(() => projectToTarget([0.5], [1], 0.5, { lo: 0.6, hi: 0.4 })).toThrow(RangeError);
  });
});

const tinyLlama: ModelSpec = {
  family: "llama",
  vocabSize: 32,
  hiddenSize: 8,
  numLayers: 3,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  intermediateSize: 12,
  maxPositions: 16,
  norm: "rms",
  normEps: 1e-5,
  normBefore: true,
  positions: { kind: "rope", theta: 10000 },
  activation: "silu",
  linears: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  roles: { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj", gate: "gate_proj", up: "up_proj", down: "down_proj" },
  tiedEmbeddings: false,
  finalNorm: true,
  embedDim: 8,
};

describe("allocation helpers", () => {
  it("lays out a model block-major in spec order, counting weight matrices only", () => {
    const layout = layoutOf(tinyLlama);
    expect(layout).toHaveLength(21);
    // q 8x8, k 8x4 (one kv head), v 8x4, o 8x8, gate/up 8x12, down 12x8.
    expect(layout.slice(0, 7).map((e) => e.params)).toEqual([64, 32, 32, 64, 96, 96, 96]);
    expect(layout[7]).toEqual({ block: 1, linear: "q_proj", params: 64 });
    expect(blockParams(layout)).toEqual([480, 480, 480]);
  });

  it("computes the parameter-weighted global sparsity", () => {
    const entries = [
      { block: 0, linear: "a", params: 100, sparsity: 0.2 },
      { block: 0, linear: "b", params: 300, sparsity: 0.6 },
    ];
    expect(globalSparsity(entries)).toBeCloseTo(0.5, 15);
    expect(() => globalSparsity([])).toThrow(RangeError);
  });

  it("expands per-block vectors to every linear of the block", () => {
    const layout = layoutOf(tinyLlama);
    const allocation = perBlock([0.1, 0.5, 0.9], layout);
    expect(allocation.filter((e) => e.block === 1).every((e) => e.sparsity === 0.5)).toBe(true);
    expect(allocation.map(({ block, linear, params }) => ({ block, linear, params }))).toEqual(layout);
    blockSparsities(allocation).forEach((s, block) => expect(s).toBeCloseTo([0.1, 0.5, 0.9][block], 15));
    expect(() => perBlock([0.5, 0.5], layout)).toThrow(/2 per-block sparsities for a model of 3 blocks/);
  });

  it("keeps the global sparsity of a projected per-block vector", () => {
    const sized = fc
      .array(fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 6 })
      .map((blocks): Layout => blocks.flatMap((params, block) => params.map((p, i) => ({ block, linear: `l${i}`, params: p }))));
    fc.assert(
      fc.property(sized, fc.array(anyValue, { minLength: 6, maxLength: 6 }), fc.double({ min: 0, max: 0.99, noNaN: true }), (layout, raw, target) => {
        const weights = blockParams(layout);
        const sparsities = projectToTarget(raw.slice(0, weights.length), weights, target);
        expect(globalSparsity(perBlock(sparsities, layout))).toBeCloseTo(target, 9);
      }),
      runs,
    );
  });

  it("expands N:M patterns with sparsity n/m", () => {
    const layout = layoutOf(tinyLlama);
    const allocation = perBlockNM([2, 4, 6], 8, layout);
    expect(allocation[0]).toMatchObject({ sparsity: 0.25, n: 2, m: 8 });
    expect(allocation[20]).toMatchObject({ sparsity: 0.75, n: 6, m: 8 });
    expect(globalSparsity(allocation)).toBeCloseTo(0.5, 15);
    expect(() => perBlockNM([2, 8, 4], 8, layout)).toThrow(RangeError);
    expect(() => perBlockNM([2, 1.5, 4], 8, layout)).toThrow(RangeError);
  });
});

describe("baselines", () => {
  const weightsFor = (blocks: number) => fc.array(positiveWeight, { minLength: blocks, maxLength: blocks });
  const sizedTarget = fc.double({ min: 0, max: 0.99, noNaN: true });

  it("uniform puts every block at the target", () => {
    expect(uniform(4, 0.5)).toEqual([0.5, 0.5, 0.5, 0.5]);
    expect(() => uniform(0, 0.5)).toThrow(RangeError);
    expect(() => uniform(3, 1)).toThrow(RangeError);
  });

  it("OWL matches the paper's formula on a worked example", () => {
    // minmax(D) = [0, 1, 0.5]; densities 2λ·that = [0, 0.16, 0.08], mean 0.08, shifted to
    // mean 0.5: [0.42, 0.58, 0.50]; sparsities are one minus those.
    const s = owl([0.1, 0.3, 0.2], 0.5, { lambda: 0.08 });
    expect(s[0]).toBeCloseTo(0.58, 12);
    expect(s[1]).toBeCloseTo(0.42, 12);
    expect(s[2]).toBeCloseTo(0.5, 12);
    expect(owl([0.2, 0.2, 0.2], 0.6)).toEqual([0.6, 0.6, 0.6]);
    expect(() => owl([0.1, NaN], 0.5)).toThrow(RangeError);
  });

  it("OWL hits the target, stays in bounds, and prunes outlier-rich blocks less", () => {
    const shares = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 40 });
    const lambda = fc.double({ min: 0, max: 0.5, noNaN: true });
    fc.assert(
      fc.property(
        shares.chain((d) => fc.tuple(fc.constant(d), weightsFor(d.length))),
        sizedTarget,
        lambda,
        ([d, weights], target, lam) => {
          const s = owl(d, target, { lambda: lam, weights });
          expectValid(s, weights, target, defaultBounds);
          for (let i = 0; i < d.length; i++) {
            for (let j = 0; j < d.length; j++) {
              if (d[i] > d[j]) expect(s[i]).toBeLessThanOrEqual(s[j]);
            }
          }
        },
      ),
      runs,
    );
  });

  it("ATP is the paper's ramp on a worked example", () => {
    const s = atpRamp(4, 0.5, 0.02);
    [0.47, 0.49, 0.51, 0.53].forEach((v, i) => expect(s[i]).toBeCloseTo(v, 12));
    expect(atpRamp(1, 0.7, 0.05)).toEqual([0.7]);
  });

  it("ATP hits the target, stays in bounds, and never prunes a deeper block less", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }).chain((blocks) => fc.tuple(fc.constant(blocks), weightsFor(blocks))),
        sizedTarget,
        fc.double({ min: 0, max: 1, noNaN: true }),
        ([blocks, weights], target, beta) => {
          const s = atpRamp(blocks, target, beta, { weights });
          expectValid(s, weights, target, defaultBounds);
          for (let i = 1; i < blocks; i++) expect(s[i]).toBeGreaterThanOrEqual(s[i - 1]);
        },
      ),
      runs,
    );
  });

  it("ATP's β grid follows the paper's range and step", () => {
    // The paper's example: 32 layers at S = 0.7 in [0, 1] gives 0 < β <= 0.6/31 ≈ 0.019.
    const grid = atpBetaGrid(0.7, 32, 0, 1);
    const betaMax = 0.6 / 31;
    expect(grid[0]).toBe(0);
    expect(grid.at(-1)).toBeCloseTo(betaMax, 15);
    expect(grid.slice(1, -1).map((b) => Math.round(b * 1000) / 1000)).toEqual([
      0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.018,
    ]);
    expect(atpBetaGrid(0.5, 1)).toEqual([0]);
    expect(atpBetaGrid(0.99, 8)).toEqual([0]);
  });

  it("keeps every grid ramp inside the bounds, so the projection leaves it as the formula gives", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 80 }), sizedTarget, (blocks, target) => {
        const grid = atpBetaGrid(target, blocks);
        expect(grid.length).toBeLessThanOrEqual(11);
        for (let k = 1; k < grid.length; k++) expect(grid[k]).toBeGreaterThan(grid[k - 1]);
        for (const beta of grid) {
          const s = atpRamp(blocks, target, beta);
          s.forEach((v, i) => expect(v).toBeCloseTo(target - (beta * (blocks - 1)) / 2 + beta * i, 9));
        }
      }),
      { numRuns: 100 },
    );
  });
});
