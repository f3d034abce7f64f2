// A direct method in TypeScript: sparsity rising (or falling) linearly with depth by a
// fixed tilt, projected back to the target. evosparse loads .ts methods itself.
//
//   npx evosparse prune --allocation ./tilt-method.ts --sparsity 0.5 --out pruned
//   npx evosparse search --method ./tilt-method.ts --sparsity 0.5
import { BoundsSchema, effectiveBounds, projectToTarget, Schema, type MethodPlugin } from "evosparse/plugin";

const SpaceSchema = Schema.Struct({ tilt: Schema.Finite, bounds: Schema.optional(BoundsSchema) });

export const plugin: MethodPlugin<typeof SpaceSchema.Type> = {
  name: "tilt",
  describe: "tilt: sparsity a linear ramp over depth with a fixed slope",
  spaceSchema: SpaceSchema,
  defaultSpace: "tilt-method.json",
  patterns: ["unstructured"],
  method: {
    kind: "direct",
    allocate: (context, space) => {
      const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
      const raw = Array.from({ length: context.blocks }, (_, l) => context.target + space.tilt * (l - (context.blocks - 1) / 2));
      return projectToTarget(raw, context.blockParams, context.target, bounds);
    },
  },
};
