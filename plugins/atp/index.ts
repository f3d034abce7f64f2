/**
 * ATP (monotone ramp): s_i = S - β(L-1)/2 + β i, deeper blocks pruned more, one grid
 * candidate per β; the host keeps the one with the best validation perplexity.
 */
import { Schema } from "effect";
import { atpBetaGrid, atpRamp } from "../../src/allocation/baselines.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { MethodPlugin } from "../../src/search/plugin.ts";

export const AtpSpaceSchema = Schema.Struct({
  /** The ATP paper's β step. */
  step: BetweenSchema(0, 1).check(Schema.makeFilter((v: number) => v > 0 || "must be positive")),
  /** Most positive β values to try; the step widens beyond this many. */
  maxPoints: Schema.Int.check(Schema.makeFilter((v: number) => (v >= 1 && v <= 1000) || `${v} is outside 1..1000`)),
  bounds: Schema.optional(BoundsSchema),
});

export type AtpSpace = typeof AtpSpaceSchema.Type;

/** Six significant digits tell the grid's β apart and read as round numbers. */
const betaLabel = (beta: number): string => `beta=${Number(beta.toPrecision(6))}`;

export const plugin: MethodPlugin<AtpSpace> = {
  name: "atp",
  describe: "ATP: a linear ramp of sparsity over depth, slope chosen on a grid by validation perplexity",
  spaceSchema: AtpSpaceSchema,
  defaultSpace: "atp.json",
  patterns: ["unstructured", "nm"],
  method: {
    kind: "grid",
    candidates: (context, space) => {
      const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
      const grid = atpBetaGrid(context.target, context.blocks, bounds.lo, bounds.hi, {
        step: space.step,
        maxPoints: space.maxPoints,
      });
      return grid.map((beta) => ({
        label: betaLabel(beta),
        allocation: atpRamp(context.blocks, context.target, beta, { weights: context.blockParams, bounds }),
      }));
    },
  },
};
