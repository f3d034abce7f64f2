/** Every block at the target sparsity: the reference every other method is compared with. */
import { Schema } from "effect";
import { uniform } from "../../src/allocation/baselines.ts";
import { BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { MethodPlugin } from "../../src/search/plugin.ts";

export const UniformSpaceSchema = Schema.Struct({ bounds: Schema.optional(BoundsSchema) });

export type UniformSpace = typeof UniformSpaceSchema.Type;

export const plugin: MethodPlugin<UniformSpace> = {
  name: "uniform",
  describe: "uniform: every block pruned at the target sparsity",
  spaceSchema: UniformSpaceSchema,
  defaultSpace: "uniform.json",
  // Under N:M every block simply takes the requested pattern.
  patterns: ["unstructured", "nm"],
  method: {
    kind: "direct",
    allocate: (context, space) =>
      uniform(context.blocks, context.target, {
        weights: context.blockParams,
        bounds: effectiveBounds(context.bounds, space.bounds, context.target),
      }),
  },
};
