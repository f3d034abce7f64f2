/**
 * Runs the non-evolutionary kinds of method: a direct method computes its allocation from
 * statistics; a grid method's candidates are all evaluated and the best by fitness wins.
 * Evolutionary methods go through the engine (see search.ts).
 */
import { Effect } from "effect";
import type { Bounds } from "../allocation/project.ts";
import { effectiveBounds } from "../allocation/space-schema.ts";
import { Rng } from "../rng.ts";
import type { Fitness } from "../engine/genome.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "./plugin.ts";

/** Fitness of a batch of candidates, in order; lower is better. */
export type EvaluateBatch<E> = (batch: readonly BlockAllocation[]) => Effect.Effect<readonly Fitness[], E>;

export interface Trial {
  readonly label: string;
  readonly allocation: BlockAllocation;
  readonly fitness: Fitness;
}

export interface FixedMethodResult {
  readonly allocation: BlockAllocation;
  /** The grid's candidates and their fitness (empty for direct methods). */
  readonly trials: readonly Trial[];
  readonly label?: string;
}

export const runFixedMethod = <Space, E>(
  plugin: MethodPlugin<Space>,
  context: MethodContext,
  space: Space,
  evaluate: EvaluateBatch<E>,
): Effect.Effect<FixedMethodResult, E | Error> =>
  Effect.gen(function* () {
    const method = plugin.method;
    if (method.kind === "direct") return { allocation: method.allocate(context, space), trials: [] };
    if (method.kind === "evolve") return yield* Effect.fail(new Error(`method ${plugin.name} is evolutionary: run it with evosparse search`));
    const candidates = method.candidates(context, space);
    const fitness = yield* evaluate(candidates.map((c) => c.allocation));
    const trials = candidates.map((c, k) => ({ label: c.label, allocation: c.allocation, fitness: fitness[k]! }));
    let best: Trial | undefined;
    for (const t of trials) if (t.fitness.ok && (!best || !best.fitness.ok || t.fitness.value < best.fitness.value)) best = t;
    if (!best) return yield* Effect.fail(new Error(`every candidate of ${plugin.name} failed: ${trials.map((t) => (t.fitness.ok ? "" : t.fitness.error)).join("; ")}`));
    return { allocation: best.allocation, trials, label: best.label };
  });

/**
 * Throws (a UsageError or DataError naming the setting) when the method cannot run with
 * this context and space, e.g. bounds that exclude the target, without running it: an
 * evolutionary method builds its genome and decodes one individual, a grid lists its
 * candidates, a direct method checks its bounds. Run before a search writes anything.
 */
export const checkMethod = <Space>(plugin: MethodPlugin<Space>, context: MethodContext, space: Space): void => {
  const method = plugin.method;
  if (method.kind === "evolve") {
    const genome = method.genome(context, space);
    genome.decode(genome.create(new Rng(0), 0));
  } else if (method.kind === "grid") {
    method.candidates(context, space);
  } else {
    effectiveBounds(context.bounds, (space as { readonly bounds?: Bounds } | undefined)?.bounds, context.target);
  }
};
