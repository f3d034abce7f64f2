/**
 * MRP (maximum redundancy pruning): starting dense, repeatedly raise by Δ the sparsity of
 * the block whose surviving weights are the most redundant, i.e. have the highest
 * non-outlier ratio NOR under the run's metric, until the global sparsity reaches the
 * target. No randomness: the same statistics give the same allocation, bit for bit.
 */
import { Schema } from "effect";
import { projectToTarget } from "../../src/allocation/project.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../../src/search/plugin.ts";

/** The M at which the host measures BlockStatistics.nonOutlierRatio(). */
const hostOutlierM = 5;

export const MrpSpaceSchema = Schema.Struct({
  /** Sparsity added to the chosen block per step. */
  delta: BetweenSchema(0, 0.5).check(Schema.makeFilter((v: number) => v > 0 || "must be positive")),
  /**
   * Outlier threshold, a multiple of the mean surviving score. Ratios after re-pruning
   * need the metric's masks, which only the host has, so only the host's M is accepted.
   */
  m: Schema.Finite.check(
    Schema.makeFilter((m: number) => m === hostOutlierM || `${m} is not supported: the host measures non-outlier ratios at M = ${hostOutlierM}`),
  ),
  /**
   * How pruned weights count in the ratio (docs/methods.md, "MRP"): "zero", the rule as the
   * paper means it (pruned weights count with score 0, so the ratio falls as a block is
   * pruned), or "excluded", over the surviving weights only (the ratio then rises as a
   * block is pruned, so the rule tends to drive one block to the bound).
   */
  pruned: Schema.optional(Schema.Literals(["excluded", "zero"])),
  bounds: Schema.optional(BoundsSchema),
});

export type MrpSpace = typeof MrpSpaceSchema.Type;

const allocate = (context: MethodContext, space: MrpSpace): BlockAllocation => {
  const { blocks, blockParams: weights, target } = context;
  const bounds = effectiveBounds(context.bounds, space.bounds, target);
  // "Start from the dense model": every block at the lower bound, which is 0 by default.
  const sparsity = new Array<number>(blocks).fill(bounds.lo);
  // A non-finite ratio says nothing about redundancy, so such a block is raised last.
  const ratio = (block: number): number => {
    const nor = context.statistics.nonOutlierRatio(block, sparsity[block], space.pruned ?? "zero");
    return Number.isNaN(nor) ? -Infinity : nor;
  };
  // Only the raised block's ratio changes, so each step asks the host for one ratio.
  const nor = sparsity.map((_, block) => ratio(block));
  let total = 0;
  for (const w of weights) total += w;
  const goal = target * total;
  const prunedWeights = (): number => {
    let sum = 0;
    for (let b = 0; b < blocks; b++) sum += weights[b] * sparsity[b];
    return sum;
  };
  for (let pruned = prunedWeights(); goal - pruned > 1e-12 * total; pruned = prunedWeights()) {
    // Highest NOR among blocks that can still rise; ties go to the lowest index.
    let best = -1;
    for (let b = 0; b < blocks; b++) {
      if (sparsity[b] < bounds.hi && weights[b] > 0 && (best < 0 || nor[b] > nor[best])) best = b;
    }
    if (best < 0) break;
    const headroom = bounds.hi - sparsity[best];
    // The last step is only as large as the gap to the target, so the mean lands on it.
    const step = Math.min(space.delta, headroom, (goal - pruned) / weights[best]);
    sparsity[best] = step === headroom ? bounds.hi : sparsity[best] + step;
    nor[best] = ratio(best);
  }
  // Removes the last ulps of rounding; a no-op when the loop already landed on the target.
  return projectToTarget(sparsity, weights, target, bounds);
};

export const plugin: MethodPlugin<MrpSpace> = {
  name: "mrp",
  describe: "MRP: repeatedly prune the block with the highest non-outlier ratio by a small step",
  spaceSchema: MrpSpaceSchema,
  defaultSpace: "mrp.json",
  patterns: ["unstructured"],
  needs: ["scores"],
  method: { kind: "direct", allocate },
};
