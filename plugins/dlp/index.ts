/**
 * DLP (dynamic layerwise pruning): a block whose weights score higher under Wanda on
 * average is pruned more. The formula is `dlp` in src/allocation/baselines.ts; the host
 * measures each block's mean Wanda score with the other dense statistics.
 */
import { Schema } from "effect";
import { dlp } from "../../src/allocation/baselines.ts";
import { BetweenSchema, BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import { UsageError } from "../../src/errors.ts";
import type { MethodPlugin } from "../../src/search/plugin.ts";

export const DlpSpaceSchema = Schema.Struct({
  /** Half the spread of block densities (DLP's --alpha). */
  alpha: BetweenSchema(0, 0.5),
  bounds: Schema.optional(BoundsSchema),
});

export type DlpSpace = typeof DlpSpaceSchema.Type;

export const plugin: MethodPlugin<DlpSpace> = {
  name: "dlp",
  describe: "DLP: blocks with a higher mean Wanda score are pruned more",
  spaceSchema: DlpSpaceSchema,
  defaultSpace: "dlp.json",
  patterns: ["unstructured", "nm"],
  needs: ["scores"],
  method: {
    kind: "direct",
    allocate: (context, space) => {
      const scores = context.statistics.meanWandaScores?.();
      if (!scores) throw new UsageError({ problem: "dlp needs the blocks' mean Wanda scores, which this host does not measure" });
      return dlp(scores, context.target, { alpha: space.alpha, weights: context.blockParams, bounds: effectiveBounds(context.bounds, space.bounds, context.target) });
    },
  },
};
