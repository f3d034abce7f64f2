/**
 * AlphaPruning: blocks whose weight spectra have lighter heavy tails (a larger power-law
 * exponent α, by Heavy-Tailed Self-Regularisation theory less well trained) are pruned
 * more. The host fits α to every linear's spectrum (src/prune/spectra.ts); the block's
 * metric is the mean over its linears (AlphaPruning's block-wise mapping), turned into
 * sparsities by `alphaPruning` in src/allocation/baselines.ts.
 */
import { Schema } from "effect";
import { alphaPruning } from "../../src/allocation/baselines.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import { UsageError } from "../../src/errors.ts";
import type { MethodPlugin } from "../../src/search/plugin.ts";

const Epsilon = BetweenSchema(0, 0.99);

export const AlphaPruningSpaceSchema = Schema.Struct({
  /** The spread ε of the sparsity ratios, per pruning metric (AlphaPruning's published value for each). */
  epsilon: Schema.Struct({ wanda: Epsilon, magnitude: Epsilon, sparsegpt: Epsilon }),
  bounds: Schema.optional(BoundsSchema),
});

export type AlphaPruningSpace = typeof AlphaPruningSpaceSchema.Type;

export const plugin: MethodPlugin<AlphaPruningSpace> = {
  name: "alphapruning",
  describe: "AlphaPruning: blocks with lighter-tailed weight spectra (larger power-law α) are pruned more",
  spaceSchema: AlphaPruningSpaceSchema,
  defaultSpace: "alphapruning.json",
  patterns: ["unstructured", "nm"],
  method: {
    kind: "direct",
    allocate: (context, space) => {
      const alphas = context.statistics.spectralAlphas?.();
      if (!alphas) throw new UsageError({ problem: "alphapruning needs the linears' spectral exponents, which this host does not measure" });
      const sums = new Array<number>(context.blocks).fill(0);
      const counts = new Array<number>(context.blocks).fill(0);
      context.linears.forEach((linear, j) => {
        sums[linear.block]! += alphas[j]!;
        counts[linear.block]! += 1;
      });
      const blockAlphas = sums.map((s, b) => (counts[b]! > 0 ? s / counts[b]! : 0));
      return alphaPruning(blockAlphas, context.target, {
        epsilon: space.epsilon[context.metric ?? "wanda"],
        weights: context.blockParams,
        bounds: effectiveBounds(context.bounds, space.bounds, context.target),
      });
    },
  },
};
