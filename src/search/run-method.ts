/**
 * The one place the three kinds of method are told apart: `runMethod` runs any of them
 * (an evolutionary method on the engine; a direct method's allocation or a grid's
 * candidates as one generation of the same history), `runFixedMethod` runs the kinds that
 * need no search (the prune command's allocations), and `checkMethod` checks any of them
 * before a run writes anything.
 */
import { Effect } from "effect";
import type { Bounds } from "../allocation/project.ts";
import { effectiveBounds } from "../allocation/space-schema.ts";
import { UsageError } from "../errors.ts";
import { Rng } from "../rng.ts";
import type { ScreeningStage } from "../engine/generational.ts";
import type { Fidelity, Fitness } from "../engine/genome.ts";
import { evolve, type EngineCheckpoint } from "../engine/evolve.ts";
import type { GenerationRecord, HistoryRecord, StopReason } from "../engine/state.ts";
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

/**
 * The allocation an evolutionary method's first individual decodes to when the run starts
 * it from `start`: what the search really begins with. EvoPress rounds a start to its
 * levels and stops each linear at ±maxLevels; MSP projects it into its bounds. A warm
 * start is judged by this, not by the baseline as given, which a SparseGPT run's levels
 * may not even hold. Methods that take no start begin from their own first individual.
 */
export const startAsSearched = <Space>(plugin: MethodPlugin<Space>, context: MethodContext, space: Space, start: NonNullable<MethodContext["start"]>): BlockAllocation => {
  const method = plugin.method;
  if (method.kind !== "evolve" || plugin.startable !== true) return start.sparsities;
  const genome = method.genome({ ...context, start }, space);
  return genome.decode(genome.create(new Rng(0), 0));
};

/** The engine's limits of a run (the search settings hold them). */
export interface EngineRun {
  readonly seed: number;
  readonly population: number;
  /** Absent: no cap, the run ends on its budget. */
  readonly generations?: number;
  readonly budgetEvals?: number;
  readonly budgetTokens?: number;
  readonly timeBudgetSeconds?: number;
  readonly patience?: number;
  /** Screening stages of the generational strategy (multi-stage selection). */
  readonly screening?: readonly ScreeningStage[];
}

export interface MethodOutcome {
  readonly best: { genome: string; encoded?: unknown; fitness: number; sparsities: BlockAllocation };
  readonly history: readonly HistoryRecord[];
  readonly evaluations: number;
  readonly generations: number;
  readonly stoppedBy: StopReason | "done";
  /** Wall-clock seconds of the method, earlier runs of a resumed search included. */
  readonly seconds: number;
}

/** Runs any kind of method and returns its best allocation with a history in one format. */
export const runMethod = <Space>(
  plugin: MethodPlugin<Space>,
  space: Space,
  context: MethodContext,
  settings: EngineRun,
  evaluator: {
    evaluate(batch: readonly BlockAllocation[], fidelity?: Fidelity): Effect.Effect<readonly Fitness[], Error>;
    /** What one evaluation at a fidelity costs in fitness tokens, for the token budget. */
    tokensOf?(fidelity: Fidelity): number;
  },
  phenotypeKey: (s: BlockAllocation) => string,
  checkpoint: EngineCheckpoint,
  onGeneration: (record: GenerationRecord) => void,
) =>
  Effect.gen(function* () {
    const method = plugin.method;
    if (method.kind === "evolve") {
      const result = yield* evolve({
        genome: method.genome(context, space),
        ...(method.strategy !== undefined ? { strategy: method.strategy(context, space) } : {}),
        phenotypeKey,
        // The default fidelity is the host's fixed fitness windows; a stage with tokens, a
        // minibatch the host draws from (seed, generation, stage).
        evaluate: (batch, fidelity) => evaluator.evaluate(batch, fidelity),
        seed: settings.seed,
        population: settings.population,
        ...(settings.generations !== undefined ? { generations: settings.generations } : {}),
        ...(settings.budgetEvals !== undefined ? { budgetEvals: settings.budgetEvals } : {}),
        ...(settings.budgetTokens !== undefined ? { budgetTokens: settings.budgetTokens } : {}),
        ...(evaluator.tokensOf ? { tokensOf: (f: Fidelity) => evaluator.tokensOf!(f) } : {}),
        ...(settings.timeBudgetSeconds !== undefined ? { timeBudgetSeconds: settings.timeBudgetSeconds } : {}),
        ...(settings.patience !== undefined ? { patience: settings.patience } : {}),
        ...(settings.screening !== undefined ? { screening: settings.screening } : {}),
        checkpoint,
        onGeneration,
      });
      if (!result.best) {
        // No evaluation at all: the budget stopped the search before its first.
        if (result.history.length === 0 && settings.budgetTokens !== undefined) {
          return yield* new UsageError({
            problem: `--budget-tokens ${settings.budgetTokens} is less than one fitness evaluation costs, so the search stopped before its first; give a larger budget (an evaluation on the fitness windows costs ${evaluator.tokensOf?.(undefined as unknown as Fidelity) ?? "more"} tokens)`,
          });
        }
        if (result.history.length === 0) return yield* new UsageError({ problem: "the search stopped before its first evaluation: give a larger budget" });
        // Every score fine, yet no best: the budget ran out inside the first generation, before its last stage chose one.
        if (result.stoppedBy === "budget" && !result.history.some((r) => r.error !== undefined)) {
          const budget = settings.budgetTokens !== undefined ? `--budget-tokens ${settings.budgetTokens}` : settings.budgetEvals !== undefined ? `--budget-evals ${settings.budgetEvals}` : "the budget";
          return yield* new UsageError({ problem: `${budget} ran out in the search's first generation, before its last stage chose a best: one generation of its plan costs more (the plan line says how much); give a larger budget or a cheaper plan` });
        }
        const firstError = result.history.find((r) => r.error)?.error;
        return yield* Effect.fail(new Error(`every evaluation of the search failed; see the history${firstError !== undefined ? ` (first error: ${firstError})` : ""}`));
      }
      const genome = method.genome(context, space);
      return {
        best: { genome: genome.describe(result.best.genome), encoded: genome.encode(result.best.genome), fitness: result.best.fitness, sparsities: result.best.phenotype },
        history: result.history,
        evaluations: result.evaluations,
        generations: result.generations,
        stoppedBy: result.stoppedBy,
        seconds: result.seconds,
      } satisfies MethodOutcome;
    }
    // Direct and grid methods: their candidates are one generation of the same history.
    const started = performance.now();
    const fixed = yield* runFixedMethod(plugin, context, space, evaluator.evaluate);
    let trials = fixed.trials;
    if (method.kind === "direct") {
      const [fitness] = yield* evaluator.evaluate([fixed.allocation]);
      trials = [{ label: plugin.name, allocation: fixed.allocation, fitness: fitness! }];
    }
    const history: HistoryRecord[] = trials.map((t, index) => ({
      generation: 0,
      index,
      genome: t.label,
      key: phenotypeKey(t.allocation),
      fitness: t.fitness.ok ? t.fitness.value : null,
      ...(t.fitness.ok ? {} : { error: t.fitness.error }),
      cached: false,
      seconds: t.fitness.seconds ?? 0,
      tokens: t.fitness.tokens ?? 0,
    }));
    const chosen = trials.find((t) => t.allocation === fixed.allocation) ?? trials[0]!;
    if (!chosen.fitness.ok) return yield* Effect.fail(new Error(`${plugin.name}: the allocation failed to evaluate: ${chosen.fitness.error}`));
    const best = history.reduce((b, r) => (r.fitness !== null && r.fitness < (b.fitness ?? Infinity) ? r : b), history[0]!);
    onGeneration({ generation: 0, size: trials.length, evaluations: trials.length, best: best.fitness ?? undefined, median: undefined, failed: 0, seconds: (performance.now() - started) / 1000 });
    return {
      best: { genome: fixed.label ?? plugin.name, fitness: chosen.fitness.value, sparsities: fixed.allocation },
      history,
      evaluations: trials.length,
      generations: 1,
      stoppedBy: "done",
      seconds: (performance.now() - started) / 1000,
    } satisfies MethodOutcome;
  });

