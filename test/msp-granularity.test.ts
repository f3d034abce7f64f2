/** MSP per linear (`"granularity": "linear"`): one sparsity per prunable linear, the pruned count exact. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { plugin as msp, type MspSpace } from "../plugins/msp/index.ts";
import type { MethodContext } from "../src/search/plugin.ts";
import { Rng } from "../src/rng.ts";

const contextOf = (params: number[], blocks: number, target: number, traces: number[]): MethodContext => {
  const linears = params.map((p, j) => ({ block: j % blocks, linear: `l${j}`, params: p }));
  const blockParams = Array.from({ length: blocks }, (_, b) => linears.filter((l) => l.block === b).reduce((n, l) => n + l.params, 0));
  return {
    blocks,
    blockParams,
    linears,
    target,
    bounds: { lo: 0, hi: 0.95 },
    pattern: { kind: "unstructured" },
    statistics: { fisherTraces: () => traces, outlierShares: () => [], elementScores: () => new Float32Array(), nonOutlierRatio: () => 0 },
  };
};

describe("msp per linear", () => {
  it("decodes to one sparsity per linear whose weighted mean is the target, through creation, mutation and crossover (property)", () => {
    const space: MspSpace = { lambdas: [0.1, 0.3], jitter: 0.05, delta: 0.02, normalisation: "log", granularity: "linear" };
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 100, max: 4000 }), { minLength: 4, maxLength: 14 }),
        fc.double({ min: 0.3, max: 0.8, noNaN: true }),
        fc.nat(1000),
        (params, target, seed) => {
          const context = contextOf(params, 2, target, [1.5, 0.5]);
          if (msp.method.kind !== "evolve") throw new Error("msp evolves");
          const genome = msp.method.genome(context, space);
          const rng = new Rng(seed);
          let g = genome.create(rng, 3);
          for (let k = 0; k < 5; k++) g = genome.mutate(g, rng.split(k));
          g = genome.crossover(g, genome.create(rng.split("b"), 0), rng.split("c"));
          const s = genome.decode(g);
          expect(s).toHaveLength(params.length);
          const total = params.reduce((a, b) => a + b, 0);
          expect(s.reduce((n, v, j) => n + v * params[j]!, 0) / total).toBeCloseTo(target, 9);
          expect(genome.restore(genome.encode(g))).toEqual(g);
        },
      ),
    );
  });

  it("seeds each linear from its block's trace: the more sensitive block is pruned less", () => {
    const context = contextOf([1000, 1000, 1000, 1000], 2, 0.5, [10, 1]);
    if (msp.method.kind !== "evolve") throw new Error("msp evolves");
    const genome = msp.method.genome(context, { lambdas: [0.2], jitter: 0, delta: 0.02, normalisation: "minmax", granularity: "linear" });
    const s = genome.decode(genome.create(new Rng(0), 0));
    // Linears 0 and 2 sit in block 0 (trace 10), 1 and 3 in block 1.
    expect(s[0]).toBe(s[2]);
    expect(s[0]!).toBeLessThan(s[1]!);
  });
});
