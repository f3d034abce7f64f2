/**
 * The search command's pipeline: model and calibration -> statistics -> method (plugin,
 * engine) with fitness on validation windows -> the best allocation re-pruned in the final
 * mode and measured on the test text, beside uniform and OWL from the same run -> files.
 *
 * The run folder holds settings.json (written first) and engine-state.json (after every
 * generation), so `--resume DIR` continues a killed run with its own settings.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Effect, Schema } from "effect";
import { blockSparsities, globalSparsity } from "../allocation/allocation.ts";
import { writeAllocationCsv } from "../allocation/csv.ts";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { openCheckpointSync } from "../checkpoint/open.ts";
import type { TextFormat } from "../data/text-source.ts";
import { evolve, type EngineCheckpoint } from "../engine/evolve.ts";
import { decodeEngineState, type GenerationRecord, type HistoryRecord, type StopReason } from "../engine/state.ts";
import { DataError, UsageError } from "../errors.ts";
import { evaluationWindows } from "../eval/evaluate.ts";
import { writeFileAtomically } from "../files.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import type { PruneMetric } from "../prune/prune-linear.ts";
import { Pruner } from "../prune/pruner.ts";
import { inProcessEvaluator, workerPoolEvaluator, type FitnessEvaluator } from "./evaluators.ts";
import { methodContext, targetOf, toAllocation } from "./fitness.ts";
import { openFitnessModel, type FitnessModel, type FitnessSetup } from "./fitness-setup.ts";
import type { BlockAllocation, MethodContext, MethodPlugin, Pattern } from "./plugin.ts";
import { loadPlugin } from "./registry.ts";
import { allocationChart, fitnessChart, writeSearchFiles } from "./report.ts";
import { runFixedMethod } from "./run-method.ts";
import { loadSearchSpace, resolveSpaceFile } from "./space.ts";

const PatternSchema = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("unstructured") }),
  Schema.Struct({ kind: Schema.Literal("nm"), n: Schema.Int, m: Schema.Int }),
]);

/** Everything that decides a run's result; saved so a resumed run is the same run. */
export const SearchSettings = Schema.Struct({
  method: Schema.String,
  space: Schema.String,
  sparsity: Schema.Number,
  metric: Schema.Literals(["magnitude", "wanda", "sparsegpt"]),
  pattern: PatternSchema,
  model: Schema.String,
  tokenizer: Schema.optional(Schema.String),
  calib: Schema.String,
  field: Schema.String,
  nsamples: Schema.Int,
  /** Seed of the calibration windows: 0 like the prune command, whatever the search seed. */
  calibSeed: Schema.Int,
  seqlen: Schema.Int,
  fitnessData: Schema.String,
  fitnessWindows: Schema.Int,
  eval: Schema.String,
  evalFormat: Schema.Literals(["text", "jsonl", "stories"]),
  evalWindows: Schema.optional(Schema.Int),
  population: Schema.Int,
  generations: Schema.Int,
  budgetEvals: Schema.optional(Schema.Int),
  timeBudgetSeconds: Schema.optional(Schema.Number),
  patience: Schema.optional(Schema.Int),
  seed: Schema.Int,
  mode: Schema.Literals(["dense", "sequential"]),
  finalMode: Schema.Literals(["dense", "sequential"]),
  batch: Schema.Int,
});
export type SearchSettings = typeof SearchSettings.Type;

export interface SearchRequest {
  /** Settings of a new run; seqlen may be left for the model's context. */
  readonly settings?: Omit<SearchSettings, "seqlen" | "space"> & { readonly seqlen?: number; readonly space?: string };
  readonly out?: string;
  /** A run folder to continue; its settings.json replaces `settings`. */
  readonly resume?: string;
  readonly workers: number;
  readonly backend: BackendChoice;
  readonly log?: (line: string) => void;
  readonly onGeneration?: (record: GenerationRecord, total: number) => void;
}

export interface FinalResult {
  readonly method: string;
  readonly validation: number | null;
  readonly test: number;
  readonly sparsities: readonly number[];
}

export interface SearchSummary {
  readonly settings: SearchSettings;
  readonly seed: number;
  readonly workers: number;
  readonly backend: string;
  readonly best: { readonly genome: string; readonly encoded?: unknown; readonly fitness: number; readonly sparsities: readonly number[] };
  readonly evaluations: number;
  readonly generations: number;
  readonly stoppedBy: StopReason | "done";
  readonly searchSeconds: number;
  /** Wall time spent waiting for fitness evaluations (the part that workers parallelise). */
  readonly evaluationSeconds: number;
  readonly evaluationsPerMinute: number;
  readonly final: {
    readonly mode: CalibrationMode;
    readonly data: string;
    readonly seqlen: number;
    readonly windows: number;
    readonly dense: number;
    readonly results: readonly FinalResult[];
    /** The prune command that reproduces the best allocation's test perplexity. */
    readonly reproduce: string;
  };
  readonly out: string;
}

const timestamp = (d = new Date()): string => d.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);

const readSettings = (dir: string): SearchSettings => {
  const file = join(dir, "settings.json");
  if (!existsSync(file)) throw new DataError({ file, problem: "no settings.json: not a search folder, or the run never started" });
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
  try {
    return Schema.decodeUnknownSync(SearchSettings)(json);
  } catch (e) {
    throw new DataError({ file, problem: `invalid settings: ${(e as Error).message.replace(/\n\s*/g, " ")}` });
  }
};

const engineCheckpoint = (dir: string): EngineCheckpoint => {
  const file = join(dir, "engine-state.json");
  return {
    load: () => {
      if (!existsSync(file)) return undefined;
      let json: unknown;
      try {
        json = JSON.parse(readFileSync(file, "utf8"));
      } catch (e) {
        throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
      }
      return decodeEngineState(json, file);
    },
    save: (state) => writeFileAtomically(file, JSON.stringify(state)),
  };
};

interface MethodOutcome {
  readonly best: { genome: string; encoded?: unknown; fitness: number; sparsities: BlockAllocation };
  readonly history: readonly HistoryRecord[];
  readonly evaluations: number;
  readonly generations: number;
  readonly stoppedBy: StopReason | "done";
}

/** Runs any kind of method and returns its best allocation with a history in one format. */
const runMethod = <Space>(
  plugin: MethodPlugin<Space>,
  space: Space,
  context: MethodContext,
  settings: SearchSettings,
  evaluator: FitnessEvaluator,
  phenotypeKey: (s: BlockAllocation) => string,
  checkpoint: EngineCheckpoint,
  onGeneration: (record: GenerationRecord) => void,
) =>
  Effect.gen(function* () {
    const method = plugin.method;
    if (method.kind === "evolve") {
      const result = yield* evolve({
        genome: method.genome(context, space),
        phenotypeKey,
        evaluate: evaluator.evaluate,
        seed: settings.seed,
        population: settings.population,
        generations: settings.generations,
        ...(settings.budgetEvals !== undefined ? { budgetEvals: settings.budgetEvals } : {}),
        ...(settings.timeBudgetSeconds !== undefined ? { timeBudgetSeconds: settings.timeBudgetSeconds } : {}),
        ...(settings.patience !== undefined ? { patience: settings.patience } : {}),
        checkpoint,
        onGeneration,
      });
      if (!result.best) return yield* Effect.fail(new Error(`every evaluation of the search failed; see the history (first error: ${result.history.find((r) => r.error)?.error})`));
      const genome = method.genome(context, space);
      return {
        best: { genome: genome.describe(result.best.genome), encoded: genome.encode(result.best.genome), fitness: result.best.fitness, sparsities: result.best.phenotype },
        history: result.history,
        evaluations: result.evaluations,
        generations: result.generations,
        stoppedBy: result.stoppedBy,
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
    } satisfies MethodOutcome;
  });

const reproduceCommand = (s: SearchSettings, allocationFile: string): string =>
  [
    "evosparse prune",
    `--model ${s.model}`,
    ...(s.tokenizer ? [`--tokenizer ${s.tokenizer}`] : []),
    `--metric ${s.metric}`,
    s.pattern.kind === "nm" ? `--pattern ${s.pattern.n}:${s.pattern.m}` : `--sparsity ${s.sparsity}`,
    `--allocation ${allocationFile}`,
    `--calib ${s.calib}`,
    `--nsamples ${s.nsamples}`,
    `--seed ${s.calibSeed}`,
    `--seqlen ${s.seqlen}`,
    `--mode ${s.finalMode}`,
    `--eval ${s.eval}`,
    `--eval-format ${s.evalFormat}`,
    ...(s.evalWindows ? [`--eval-windows ${s.evalWindows}`] : []),
    "--out DIR",
  ].join(" ");

/** The same model pruned in the final mode, measured on the test windows. */
const finalPerplexity = (pruner: Pruner, windows: ReturnType<typeof evaluationWindows>, pattern: Pattern, sparsities: BlockAllocation): number => {
  pruner.apply(toAllocation(sparsities, pruner.layout, pattern));
  return pruner.perplexity(windows).ppl;
};

export const searchJob = (request: SearchRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = request.log ?? (() => {});
      if (!Number.isInteger(request.workers) || request.workers < 1) return yield* new UsageError({ problem: `--workers ${request.workers} must be a positive integer` });
      const backend = yield* initBackendEffect(request.backend);
      log(`backend: ${describeBackend(backend)}`);

      // Settings: from the run folder when resuming, else from the request.
      let settings: SearchSettings;
      let dir: string;
      if (request.resume) {
        dir = resolve(request.resume);
        settings = yield* Effect.try({ try: () => readSettings(dir), catch: (e) => e as DataError });
        log(`resuming ${dir}`);
      } else {
        const given = request.settings;
        if (!given) return yield* new UsageError({ problem: "a search needs settings or --resume" });
        dir = resolve(request.out ?? join("results", `${given.method}-${timestamp()}`));
        if (existsSync(join(dir, "settings.json"))) {
          return yield* new UsageError({ problem: `${dir} already holds a search: continue it with --resume ${dir}, or choose another --out` });
        }
        const plugin = yield* Effect.tryPromise({ try: () => loadPlugin(given.method), catch: (e) => e as UsageError });
        settings = { ...given, space: resolveSpaceFile(plugin, given.space), seqlen: given.seqlen ?? 0 };
      }
      const plugin = yield* Effect.tryPromise({ try: () => loadPlugin(settings.method), catch: (e) => e as UsageError });
      const pattern = settings.pattern as Pattern;
      if (!plugin.patterns.includes(pattern.kind)) {
        return yield* new UsageError({ problem: `method ${plugin.name} does not support pattern ${pattern.kind === "nm" ? `${pattern.n}:${pattern.m}` : "unstructured"}` });
      }
      const space = yield* Effect.try({ try: () => loadSearchSpace(plugin, settings.space), catch: (e) => e as DataError });

      // The main thread's copy of the model: statistics for the plugin, and fitness when alone.
      const setupOf = (s: SearchSettings): FitnessSetup => ({
        model: s.model,
        ...(s.tokenizer ? { tokenizer: s.tokenizer } : {}),
        metric: s.metric as PruneMetric,
        mode: s.mode,
        pattern,
        calib: s.calib,
        field: s.field,
        nsamples: s.nsamples,
        seqlen: s.seqlen,
        seed: s.calibSeed,
        fitnessData: s.fitnessData,
        fitnessWindows: s.fitnessWindows,
        batch: s.batch,
        backend: request.backend,
      });
      if (settings.seqlen === 0) {
        // The model's context, known once it is open; settled before anything is saved.
        const probe = yield* Effect.try({ try: () => openCheckpointSync(settings.model, settings.tokenizer ? { tokenizer: settings.tokenizer } : {}), catch: (e) => e as DataError });
        settings = { ...settings, seqlen: probe.spec.maxPositions };
        probe.close();
      }
      const setup = setupOf(settings);
      const model = yield* Effect.acquireRelease(
        Effect.try({ try: () => openFitnessModel(setup), catch: (e) => e as DataError }),
        (m) => Effect.sync(() => m.dispose()),
      );
      if (!request.resume) {
        mkdirSync(dir, { recursive: true });
        writeFileAtomically(join(dir, "settings.json"), JSON.stringify(settings, null, 2) + "\n");
      }
      const target = targetOf(pattern, settings.sparsity);
      const context = methodContext(model.checkpoint, model.pruner, model.calibration, target, pattern);
      log(
        `${plugin.name}: target ${target}, ${settings.metric} ${pattern.kind === "nm" ? `${pattern.n}:${pattern.m}` : "unstructured"}, fitness ${settings.mode} on ${model.windows.length} windows of ${settings.fitnessData}; ` +
          `${model.calibration.length} calibration windows of ${settings.seqlen}; ${request.workers} worker${request.workers > 1 ? "s" : ""}; folder ${dir}`,
      );

      const pool: FitnessEvaluator =
        request.workers > 1 ? yield* workerPoolEvaluator(setup, request.workers) : inProcessEvaluator(model, setup);
      let evaluationSeconds = 0;
      const evaluator: FitnessEvaluator = {
        workers: pool.workers,
        evaluate: (batch) =>
          Effect.suspend(() => {
            const start = performance.now();
            return pool.evaluate(batch).pipe(Effect.ensuring(Effect.sync(() => (evaluationSeconds += (performance.now() - start) / 1000))));
          }),
      };
      const phenotypeKey = (s: BlockAllocation) => model.pruner.allocationKey(toAllocation(s, model.pruner.layout, pattern));
      const totalGenerations = plugin.method.kind === "evolve" ? settings.generations : 1;
      const searchStart = performance.now();
      const outcome = yield* runMethod(plugin, space, context, settings, evaluator, phenotypeKey, engineCheckpoint(dir), (record) =>
        request.onGeneration?.(record, totalGenerations),
      );
      const searchSeconds = (performance.now() - searchStart) / 1000;
      const searchEvaluationSeconds = evaluationSeconds;
      const bestAllocation = toAllocation(outcome.best.sparsities, model.pruner.layout, pattern);
      writeAllocationCsv(join(dir, "best-allocation.csv"), bestAllocation);

      // Final numbers: the best allocation and the baselines, re-pruned in the final mode.
      const finalModel: FitnessModel =
        settings.finalMode === settings.mode ? model : yield* Effect.acquireRelease(Effect.sync(() => openFitnessModel(setup, settings.finalMode)), (m) => Effect.sync(() => m.dispose()));
      const testWindows = yield* Effect.try({
        try: () => evaluationWindows({ data: settings.eval, format: settings.evalFormat as TextFormat, ...(settings.evalWindows ? { maxWindows: settings.evalWindows } : {}) }, model.tokenizer, settings.seqlen),
        catch: (e) => e as DataError,
      });
      log(`final: re-pruning in ${settings.finalMode} mode, perplexity on ${testWindows.length} windows of ${settings.eval}`);
      finalModel.pruner.restoreDense();
      const dense = finalModel.pruner.perplexity(testWindows).ppl;
      const results: FinalResult[] = [
        {
          method: plugin.name,
          validation: outcome.best.fitness,
          test: finalPerplexity(finalModel.pruner, testWindows, pattern, outcome.best.sparsities),
          sparsities: blockSparsities(bestAllocation),
        },
      ];
      for (const baseline of ["uniform", "owl"]) {
        if (baseline === plugin.name) continue;
        const other = yield* Effect.tryPromise({ try: () => loadPlugin(baseline), catch: (e) => e as UsageError });
        if (!other.patterns.includes(pattern.kind) || other.method.kind !== "direct") continue;
        const allocation = other.method.allocate(context, loadSearchSpace(other));
        const [validation] = yield* evaluator.evaluate([allocation]);
        results.push({
          method: baseline,
          validation: validation!.ok ? validation!.value : null,
          test: finalPerplexity(finalModel.pruner, testWindows, pattern, allocation),
          sparsities: blockSparsities(toAllocation(allocation, model.pruner.layout, pattern)),
        });
      }

      const summary: SearchSummary = {
        settings,
        seed: settings.seed,
        workers: request.workers,
        backend: backend.name,
        best: { genome: outcome.best.genome, ...(outcome.best.encoded !== undefined ? { encoded: outcome.best.encoded } : {}), fitness: outcome.best.fitness, sparsities: blockSparsities(bestAllocation) },
        evaluations: outcome.evaluations,
        generations: outcome.generations,
        stoppedBy: outcome.stoppedBy,
        searchSeconds,
        evaluationSeconds: searchEvaluationSeconds,
        evaluationsPerMinute: outcome.evaluations / (searchSeconds / 60),
        final: { mode: settings.finalMode, data: settings.eval, seqlen: settings.seqlen, windows: testWindows.length, dense, results, reproduce: reproduceCommand(settings, join(dir, "best-allocation.csv")) },
        out: dir,
      };
      const title = `${plugin.name}, ${settings.metric} at ${(globalSparsity(bestAllocation) * 100).toFixed(1)}%`;
      writeSearchFiles(dir, {
        history: outcome.history,
        summary,
        fitnessSvg: fitnessChart(outcome.history, `${title}: fitness per generation`),
        allocationSvg: allocationChart(results.map((r) => ({ label: r.method, sparsities: r.sparsities })), `${title}: sparsity per block`),
      });
      return summary;
    }),
  );
