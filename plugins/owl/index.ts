/**
 * OWL (outlier-weighted layerwise sparsity): blocks with a larger share of outlier scores
 * keep more weights. The formula is `owl` in src/allocation/baselines.ts.
 */
import { Schema } from "effect";
import { owl } from "../../src/allocation/baselines.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { MethodContext, MethodPlugin } from "../../src/search/plugin.ts";

/** The M at which the host measures BlockStatistics.outlierShares(). */
const hostOutlierM = 5;

export const OwlSpaceSchema = Schema.Struct({
  /** A score is an outlier above m times the mean score of its block. */
  m: BetweenSchema(0, 1000).check(Schema.makeFilter((m: number) => m > 0 || "must be positive")),
  /** Half the spread of block densities. */
  lambda: BetweenSchema(0, 0.5),
  bounds: Schema.optional(BoundsSchema),
});

export type OwlSpace = typeof OwlSpaceSchema.Type;

/** D_l = fraction of block l's scores above m times their mean (docs/methods.md). */
const outlierShare = (scores: Float32Array, m: number): number => {
  if (scores.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < scores.length; i++) sum += scores[i];
  const threshold = (m * sum) / scores.length;
  let above = 0;
  for (let i = 0; i < scores.length; i++) if (scores[i] > threshold) above++;
  return above / scores.length;
};

/** The host's shares at its M; any other M is measured here from the element scores. */
const outlierShares = (context: MethodContext, m: number): readonly number[] =>
  m === hostOutlierM
    ? context.statistics.outlierShares()
    : Array.from({ length: context.blocks }, (_, block) => outlierShare(context.statistics.elementScores(block), m));

export const plugin: MethodPlugin<OwlSpace> = {
  name: "owl",
  describe: "OWL: blocks with more outlier scores are pruned less",
  spaceSchema: OwlSpaceSchema,
  defaultSpace: "owl.json",
  patterns: ["unstructured", "nm"],
  needs: ["scores"],
  method: {
    kind: "direct",
    allocate: (context, space) =>
      owl(outlierShares(context, space.m), context.target, {
        lambda: space.lambda,
        weights: context.blockParams,
        bounds: effectiveBounds(context.bounds, space.bounds, context.target),
      }),
  },
};
