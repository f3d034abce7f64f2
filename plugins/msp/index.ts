/**
 * MSP (mixed sparsity, Fisher-initialised): the genome is the per-block sparsity vector
 * itself. The first individuals follow the blocks' Fisher sensitivity (more sensitive,
 * less pruned) at several strengths λ; mutation moves sparsity between two blocks without
 * changing the global sparsity; crossover mixes parents block by block.
 */
import { Schema } from "effect";
import { fisherSeed, normaliseTraces } from "../../src/allocation/normalise.ts";
import { projectToTarget } from "../../src/allocation/project.ts";
import type { Bounds } from "../../src/allocation/project.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { Genome } from "../../src/engine/genome.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../../src/search/plugin.ts";

/** A start allocation per unit: per block (a per-linear one as each block's weighted mean) or per linear (a per-block one spread over its linears). */
const startOf = (context: MethodContext, sparsities: BlockAllocation, perLinear: boolean): number[] => {
  if (perLinear) return sparsities.length === context.linears.length ? [...sparsities] : context.linears.map((l) => sparsities[l.block]!);
  if (sparsities.length === context.blocks) return [...sparsities];
  const pruned = new Array<number>(context.blocks).fill(0);
  const weights = new Array<number>(context.blocks).fill(0);
  context.linears.forEach((l, j) => {
    pruned[l.block]! += sparsities[j]! * l.params;
    weights[l.block]! += l.params;
  });
  return pruned.map((p, b) => (weights[b]! > 0 ? p / weights[b]! : 0));
};

export const MspSpaceSchema = Schema.Struct({
  /** One seeded individual per λ; later individuals cycle through them with jitter. */
  lambdas: Schema.Array(BetweenSchema(0, 1)).check(
    Schema.makeFilter((values: readonly number[]) => values.length > 0 || "empty: list at least one λ"),
  ),
  /** Standard deviation of the Gaussian noise added to individuals beyond the seeded ones. */
  jitter: BetweenSchema(0, 0.5),
  /** Sparsity moved from one block to another by one mutation. */
  delta: BetweenSchema(0, 0.5).check(Schema.makeFilter((v: number) => v > 0 || "must be positive")),
  normalisation: Schema.Literals(["log", "minmax"]),
  bounds: Schema.optional(BoundsSchema),
  /**
   * One sparsity per block (the paper's, the default) or per prunable linear, each linear
   * seeded from its block's Fisher trace (the host measures traces per block).
   */
  granularity: Schema.optional(Schema.Literals(["block", "linear"])),
});

export type MspSpace = typeof MspSpaceSchema.Type;

/** Keys round to 1e-6: closer vectors prune the same weights in any real model. */
const keyOf = (sparsities: readonly number[]): string => sparsities.map((v) => v.toFixed(6)).join(",");

const checkVector = (json: unknown, units: number, { lo, hi }: Bounds): number[] => {
  if (!Array.isArray(json) || json.length !== units) {
    throw new RangeError(`invalid MSP genome: expected a list of ${units} sparsities`);
  }
  for (const v of json) {
    if (typeof v !== "number" || !(v >= lo && v <= hi)) {
      throw new RangeError(`invalid MSP genome: ${JSON.stringify(v)} is not a sparsity in [${lo}, ${hi}]`);
    }
  }
  return [...(json as number[])];
};

const mspGenome = (context: MethodContext, space: MspSpace): Genome<readonly number[], BlockAllocation> => {
  const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
  const perLinear = space.granularity === "linear";
  // The units a genome holds one sparsity for, and their weights.
  const weights = perLinear ? context.linears.map((l) => l.params) : context.blockParams;
  const units = weights.length;
  const project = (x: readonly number[]): number[] => projectToTarget(x, weights, context.target, bounds);
  // The traces are a host statistic; ask for them only once a population is made.
  let sensitivity: number[] | undefined;
  const normalised = (): number[] => {
    if (sensitivity) return sensitivity;
    const blocks = normaliseTraces(context.statistics.fisherTraces(), space.normalisation);
    return (sensitivity = perLinear ? context.linears.map((l) => blocks[l.block]!) : blocks);
  };

  return {
    create: (rng, index) => {
      // A start allocation (`--start`) is the first individual; the Fisher seeds follow.
      const start = context.start ? startOf(context, context.start.sparsities, perLinear) : undefined;
      if (start) {
        if (index === 0) return project([...start]);
        index -= 1;
      }
      const seed = fisherSeed(normalised(), context.target, space.lambdas[index % space.lambdas.length]);
      if (index < space.lambdas.length) return project(seed);
      return project(seed.map((v) => v + space.jitter * rng.normal()));
    },

    // Raises unit j (a block, or a linear) by `delta` and lowers unit i by as many pruned weights, so the
    // pruned weight count, hence the global sparsity, is unchanged whatever the sizes.
    // The amount shrinks where a bound would be crossed; a few random pairs are tried.
    mutate: (s, rng) => {
      const next = [...s];
      if (units < 2) return next;
      for (let attempt = 0; attempt < 8; attempt++) {
        const i = rng.int(units);
        let j = rng.int(units - 1);
        if (j >= i) j++;
        if (!(weights[i] > 0 && weights[j] > 0)) continue;
        const amount = Math.min(space.delta, bounds.hi - next[j], ((next[i] - bounds.lo) * weights[i]) / weights[j]);
        if (amount > 0) {
          next[j] = Math.min(bounds.hi, next[j] + amount);
          next[i] = Math.max(bounds.lo, next[i] - (amount * weights[j]) / weights[i]);
          break;
        }
      }
      // Rounding can leave the mean a few ulps off; the projection puts it back exactly.
      return project(next);
    },

    crossover: (a, b, rng) => project(a.map((v, l) => (rng.next() < 0.5 ? v : b[l]))),

    key: keyOf,
    decode: (s) => s,
    describe: (s) => `[${s.map((v) => v.toFixed(3)).join(" ")}]`,
    encode: (s) => [...s],
    restore: (json) => checkVector(json, units, bounds),
  };
};

export const plugin: MethodPlugin<MspSpace> = {
  name: "msp",
  startable: true,
  describe: "MSP: evolved per-block sparsity vectors, seeded from Fisher sensitivity",
  spaceSchema: MspSpaceSchema,
  defaultSpace: "msp.json",
  patterns: ["unstructured"],
  needs: ["fisher"],
  method: { kind: "evolve", genome: mspGenome },
};
