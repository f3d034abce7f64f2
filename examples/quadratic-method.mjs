// An evolve method in plain JavaScript: each block's sparsity is a quadratic in its depth,
// s(x) = target + a·(x - x̄) + b·(x² - x²̄) for x = block / (blocks - 1), and the search
// evolves the two coefficients (a, b). Projection keeps the global sparsity at the target
// and every block inside the bounds.
//
//   npx evosparse search --method ./quadratic-method.mjs --sparsity 0.5
//
// Its default space is quadratic-method.json, beside this file.
import { BoundsSchema, effectiveBounds, projectToTarget, Schema } from "evosparse/plugin";

const SpaceSchema = Schema.Struct({
  /** Largest |a| and |b| a first individual is drawn with. */
  scale: Schema.Finite,
  /** Standard deviation of a mutation's step on each coefficient. */
  step: Schema.Finite,
  bounds: Schema.optional(BoundsSchema),
});

const quadraticGenome = (context, space) => {
  const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
  const depth = Array.from({ length: context.blocks }, (_, l) => (context.blocks > 1 ? l / (context.blocks - 1) : 0));
  const mean = (values) => values.reduce((s, v) => s + v, 0) / values.length;
  const linear = depth.map((x) => x - mean(depth));
  const squares = depth.map((x) => x * x);
  const quadratic = squares.map((x) => x - mean(squares));
  const round = ([a, b]) => [Number(a.toFixed(5)), Number(b.toFixed(5))];
  return {
    // Individual 0 is uniform; the others are drawn around it.
    create: (rng, index) => (index === 0 ? [0, 0] : round([(2 * rng.next() - 1) * space.scale, (2 * rng.next() - 1) * space.scale])),
    mutate: ([a, b], rng) => round([a + rng.normal() * space.step, b + rng.normal() * space.step]),
    crossover: (x, y, rng) => [rng.next() < 0.5 ? x[0] : y[0], rng.next() < 0.5 ? x[1] : y[1]],
    key: ([a, b]) => `${a},${b}`,
    decode: ([a, b]) =>
      projectToTarget(
        depth.map((_, l) => context.target + a * linear[l] + b * quadratic[l]),
        context.blockParams,
        context.target,
        bounds,
      ),
    describe: ([a, b]) => `a=${a.toFixed(4)} b=${b.toFixed(4)}`,
    encode: (genome) => genome,
    restore: (json) => {
      if (!Array.isArray(json) || json.length !== 2 || !json.every((v) => typeof v === "number")) throw new RangeError("a quadratic genome is [a, b]");
      return [json[0], json[1]];
    },
  };
};

export const plugin = {
  name: "quadratic",
  describe: "quadratic: block sparsity a quadratic in depth, its two coefficients evolved",
  spaceSchema: SpaceSchema,
  defaultSpace: "quadratic-method.json",
  patterns: ["unstructured"],
  method: { kind: "evolve", genome: quadraticGenome },
};
