/**
 * evosparse as a library: the commands as functions taking the command line's settings
 * (same names, same defaults; flags in camelCase) and returning their typed results, and
 * the evolutionary engine for searches over anything.
 *
 *   import { search } from "evosparse";
 *   const summary = await search({ method: "msp", sparsity: 0.5, generations: 4 });
 *
 * A failure rejects with the error the command would print (UsageError, DataError, ...).
 */
import { Cause, Effect, Exit } from "effect";
import type { BackendChoice } from "../backend/backend.ts";
import type { TextFormat } from "../data/text-source.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import type { GenerationRecord } from "../engine/state.ts";
import { evaluate as evaluateJob, type EvalReport } from "../jobs/eval.ts";
import { PRUNE_FLAGS, pruneJob, type PruneReport, type PruneSettings, type PruneStep } from "../jobs/prune.ts";
import { protocolFromRun, SEARCH_FLAGS, searchJob, type GivenSettings, type SearchSummary } from "../jobs/search.ts";
import { statsJob, type StatsRequest } from "../jobs/stats.ts";
import { STRUCTURED_FLAGS, structuredPruneJob, type StructuredPruneReport, type StructuredSettings, type StructuredStep } from "../jobs/structured-prune.ts";
import type { StructuredImportance } from "../prune/structured.ts";
import { UsageError } from "../errors.ts";
import type { DensePass, LinearStatistics } from "../prune/dense-statistics.ts";
import { patternOf, type Pattern } from "../allocation/pattern.ts";
import { checkSettings, flagDefaults, type FlagTable } from "../settings/flag-table.ts";

export type { SearchSummary, FinalResult, SearchSettings, GivenSettings } from "../jobs/search.ts";
export type { PruneReport, PruneSettings, PruneEvaluation, PruneStep } from "../jobs/prune.ts";
export type { EvalReport } from "../jobs/eval.ts";
export type { LinearStatistics, DensePass } from "../prune/dense-statistics.ts";
export type { GenerationRecord } from "../engine/state.ts";
export type { BackendChoice } from "../backend/backend.ts";
export type { StructuredPruneReport, StructuredSettings, StructuredStep } from "../jobs/structured-prune.ts";
export type { StructuredImportance } from "../prune/structured.ts";
export { UsageError, DataError, CheckpointError, WorkerError, isEvosparseError, type EvosparseError } from "../errors.ts";

// The engine: searches over any genome, with an injected evaluate.
import { evolve, type EvolveOptions, type EvolveResult } from "../engine/evolve.ts";
import type { Fidelity, Fitness } from "../engine/genome.ts";
export { evolve, type EvolveOptions, type EvolveResult, type EngineCheckpoint, type Best } from "../engine/evolve.ts";
export { fitnessOk, fitnessFailed, type Genome, type Fitness, type Fidelity } from "../engine/genome.ts";
export type { Strategy, Proposal, Scored, Told, Leader, StageContext } from "../engine/strategy.ts";
export { staged, type StagedOptions, type Stage } from "../engine/staged.ts";
export { generational, type GenerationalOptions } from "../engine/generational.ts";
export { Rng } from "../rng.ts";

// Architectures: a record for a config.json model_type evosparse does not know.
export { registerArchitecture, loadArchitectures, architectures } from "../checkpoint/architectures/index.ts";
export type { Architecture } from "../checkpoint/architectures/architecture.ts";
export { llama, mistral, qwen2 } from "../checkpoint/architectures/llama.ts";
export { opt } from "../checkpoint/architectures/opt.ts";
export { gpt2 } from "../checkpoint/architectures/gpt2.ts";

/**
 * The engine without effect: `evolve` with an `evaluate` that returns a Promise, resolving
 * to its result (rejecting when the evaluator throws or the options are refused).
 */
export const evolveAsync = <G, P>(
  options: Omit<EvolveOptions<G, P>, "evaluate"> & { readonly evaluate: (batch: readonly P[], fidelity: Fidelity) => Promise<readonly Fitness[]> },
): Promise<EvolveResult<G, P>> =>
  run(evolve<G, P, unknown>({ ...options, evaluate: (batch, fidelity) => Effect.tryPromise({ try: () => options.evaluate(batch, fidelity), catch: (e) => e }) }));

/** How any command runs; none of these changes a result. */
export interface RunOptions {
  /** tfjs backend (default "auto"). */
  readonly backend?: BackendChoice;
  /** MiB the run may use (default: what the machine has available). */
  readonly memory?: number;
  /** Use as little memory as the run allows. */
  readonly streamed?: boolean;
  /** Progress lines the command prints on stderr (default: none). */
  readonly log?: (line: string) => void;
}

/** Runs a job; a failure rejects with the command's typed error. */
const run = async <A, E>(program: Effect.Effect<A, E>): Promise<A> => {
  const exit = await Effect.runPromiseExit(program);
  if (Exit.isSuccess(exit)) return exit.value;
  throw Cause.squash(exit.cause);
};

const runOptions = (o: RunOptions) => ({
  backend: o.backend ?? ("auto" as const),
  ...(o.memory !== undefined ? { memoryMib: o.memory } : {}),
  ...(o.streamed ? { streamed: true } : {}),
  ...(o.log ? { log: o.log } : {}),
});

/** A pattern as the command line writes it ("2:4", "unstructured") or as an object. */
type PatternSetting = string | Pattern;

export type SearchOptions = Partial<Omit<GivenSettings, "pattern">> &
  RunOptions & {
    /** Required unless an N:M pattern implies it or the run resumes. */
    readonly sparsity?: number;
    readonly pattern?: PatternSetting;
    /** Run folder (default: results/<method>-<timestamp> in the working directory). */
    readonly out?: string;
    /** Continue the run in this folder with its saved settings. */
    readonly resume?: string;
    /** Fitness evaluations in parallel (worker threads; default 1). */
    readonly workers?: number;
    /** Score candidates on queue workers through this Redis URL. */
    readonly queue?: string;
    /** Called after every generation is saved. */
    readonly onGeneration?: (record: GenerationRecord, total: number) => void;
    /** Follows the SparseGPT levels' factoring before the search, linear by linear: `(0, total)`, then after each. */
    readonly onLevels?: (done: number, total: number) => void;
    /** Follows the final re-pruning: `done` of `total` measurements (the dense model, then each allocation), `what` is next. */
    readonly onFinal?: (done: number, total: number, what: string) => void;
    /** Inside one final measurement: its blocks re-pruned, then its test windows scored. */
    readonly onFinalStep?: (step: "blocks" | "windows", done: number, total: number) => void;
    /** Follows the baselines' scoring before the search: `done` of `total` (then "start", the warm start's scoring, and "done"), `what` is next. */
    readonly onSetup?: (done: number, total: number, what: string) => void;
    /** Inside the set-up: each pass over the dense model (`statistics`, `scores`, `spectra`, `fisher`), and a baseline candidate's blocks pruned. */
    readonly onSetupStep?: (step: DensePass | "blocks", done: number, total: number) => void;
  };

const RUN_KEYS = ["backend", "memory", "streamed", "log", "out", "resume", "workers", "queue", "onGeneration", "onLevels", "onFinal", "onFinalStep", "onSetup", "onSetupStep", "onProgress", "overwrite", "from", "importance"] as const;

/**
 * The settings among a function's options, checked by the command's flag table as the
 * command line checks its flags: an unknown name or a value a flag would refuse rejects
 * with the same UsageError.
 */
const settingsPart = <T extends object, S>(options: T, table: FlagTable<S>): Record<string, unknown> => checkSettings(table, givenSettings(options)) as Record<string, unknown>;

/** The options that are settings (not how the run goes), as given. */
const givenSettings = <T extends object>(options: T): Record<string, unknown> =>
  Object.fromEntries(Object.entries(options).filter(([k, v]) => v !== undefined && !(RUN_KEYS as readonly string[]).includes(k)));

/** `evosparse search`: a method's search, its best allocation re-pruned and compared on the test text. */
export const search = async (options: SearchOptions): Promise<SearchSummary> => {
  const pattern = patternOf(options.pattern ?? "unstructured");
  const part = settingsPart(options, SEARCH_FLAGS);
  const given = { ...flagDefaults(SEARCH_FLAGS), ...part, pattern } as Record<string, unknown>;
  if (pattern.kind === "nm") given.sparsity = pattern.n / pattern.m;
  return run(
    searchJob({
      ...(options.resume !== undefined
        ? { resume: options.resume, given: part as Partial<GivenSettings> }
        : { settings: given as unknown as GivenSettings, ...(options.out !== undefined ? { out: options.out } : {}) }),
      workers: options.workers ?? 1,
      ...(options.queue !== undefined ? { queue: options.queue } : {}),
      ...(options.onGeneration ? { onGeneration: options.onGeneration } : {}),
      ...(options.onLevels ? { onLevels: options.onLevels } : {}),
      ...(options.onFinal ? { onFinal: options.onFinal } : {}),
      ...(options.onFinalStep ? { onFinalStep: options.onFinalStep } : {}),
      ...(options.onSetup ? { onSetup: options.onSetup } : {}),
      ...(options.onSetupStep ? { onSetupStep: options.onSetupStep } : {}),
      ...runOptions(options),
    }),
  );
};

export type PruneOptions = Partial<Omit<PruneSettings, "pattern">> &
  RunOptions & {
    readonly pattern?: PatternSetting;
    /** Output folder (new or empty). */
    readonly out: string;
    /** Replace an existing output folder evosparse wrote. */
    readonly overwrite?: boolean;
    /** A search's run folder: its best allocation with the search's final protocol (settings given here override). */
    readonly from?: string;
    /** Follows each long step: `(step, done, total)`, each step counted from 0 (blocks, or evaluation windows). */
    readonly onProgress?: (step: PruneStep, done: number, total: number) => void;
  };

/** The prune settings of options: the command's defaults, a run's final protocol (`from`), then the options. */
const pruneSettingsOf = (options: PruneOptions, fromRun: Partial<PruneSettings>): PruneSettings => {
  const pattern = options.pattern !== undefined ? patternOf(options.pattern) : (fromRun.pattern ?? patternOf("unstructured"));
  return { ...flagDefaults(PRUNE_FLAGS), ...fromRun, ...settingsPart(options, PRUNE_FLAGS), pattern } as unknown as PruneSettings;
};

/** `evosparse prune`: a model pruned with an allocation (a method or a CSV), written as a Hugging Face folder. */
export const prune = async (options: PruneOptions): Promise<PruneReport> => {
  const protocol = options.from !== undefined ? protocolFromRun(options.from) : undefined;
  if (protocol?.structured) {
    throw new UsageError({ problem: `from ${options.from}: a structured search; re-prune its best with pruneStructured({ from })` });
  }
  const settings = pruneSettingsOf(options, protocol?.prune ?? {});
  return run(
    pruneJob({ ...settings, out: options.out, ...(options.overwrite ? { overwrite: true } : {}), ...(options.onProgress ? { onProgress: options.onProgress } : {}), ...runOptions(options) }),
  );
};

export type PruneStructuredOptions = Omit<PruneOptions, "pattern" | "onProgress"> &
  Partial<StructuredSettings> & {
    /** Required unless `from` names a structured search, whose importance it takes. */
    readonly importance?: StructuredImportance;
    /** Continue the LoRA recovery from OUT.recovery. */
    readonly resume?: boolean;
    /** Follows each long step: `(step, done, total)`, each step counted from 0 (blocks, steps, candidates or evaluation windows). */
    readonly onProgress?: (step: StructuredStep, done: number, total: number) => void;
  };

/** `evosparse prune --structured`: whole key/value head groups and MLP channels removed; the smaller model written. */
export const pruneStructured = async (options: PruneStructuredOptions): Promise<StructuredPruneReport> => {
  const protocol = options.from !== undefined ? protocolFromRun(options.from) : undefined;
  const importance = options.importance ?? (protocol?.structured ? protocol.importance : undefined);
  if (importance === undefined) throw new UsageError({ problem: "pruneStructured needs an importance (or `from` a structured search)" });
  const { importance: _i, resume, ...rest } = options;
  const structuredPart = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([k]) => k in STRUCTURED_FLAGS));
  const pruneOnly = Object.fromEntries(Object.entries(rest).filter(([k]) => !(k in STRUCTURED_FLAGS))) as unknown as PruneOptions;
  const structured = { ...(protocol?.structured ? protocol.settings : {}), ...checkSettings(STRUCTURED_FLAGS, structuredPart(rest)) };
  return run(
    structuredPruneJob({
      ...structured,
      importance,
      settings: pruneSettingsOf(pruneOnly, protocol?.prune ?? {}),
      out: options.out,
      ...(options.overwrite ? { overwrite: true } : {}),
      ...(resume ? { resume: true } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...runOptions(options),
    }),
  );
};

export interface EvaluateOptions extends RunOptions {
  readonly model?: string;
  readonly tokenizer?: string;
  /** Evaluation text (default: the Brown test part). */
  readonly eval?: string;
  readonly evalFormat?: TextFormat;
  readonly field?: string;
  readonly seqlen?: number;
  readonly bos?: boolean;
  /** Score at most this many windows (default: all). */
  readonly evalWindows?: number;
  readonly batch?: number;
}

/** `evosparse eval`: a model's perplexity on a text. */
export const evaluate = (options: EvaluateOptions = {}): Promise<EvalReport> =>
  run(
    evaluateJob({
      model: options.model ?? defaultModel(),
      ...(options.tokenizer ? { tokenizer: options.tokenizer } : {}),
      data: options.eval ?? defaultData("test"),
      format: options.evalFormat ?? "text",
      field: options.field ?? "text",
      bos: options.bos ?? false,
      batch: options.batch ?? 1,
      ...(options.seqlen !== undefined ? { seqlen: options.seqlen } : {}),
      ...(options.evalWindows !== undefined ? { maxWindows: options.evalWindows } : {}),
      ...runOptions(options),
    }),
  );

export type StatsOptions = Partial<Omit<StatsRequest, "backend" | "memoryMib" | "streamed" | "log" | "onPass">> & RunOptions;

/** `evosparse stats`: per-block and per-linear statistics of the dense model. */
export const stats = (options: StatsOptions = {}): Promise<readonly LinearStatistics[]> =>
  run(
    statsJob({
      model: defaultModel(),
      calib: defaultData("calibration"),
      field: "text",
      nsamples: 128,
      seed: 0,
      metric: "wanda",
      // Of stats's own settings, `out` and `overwrite` name its CSV file.
      ...givenSettings(options),
      ...(options.out !== undefined ? { out: options.out } : {}),
      ...(options.overwrite ? { overwrite: true } : {}),
      ...runOptions(options),
    } as StatsRequest),
  );
