/**
 * The search command's pipeline: model and calibration -> statistics -> method (plugin,
 * engine) with fitness on validation windows -> the best allocation re-pruned in the final
 * mode and measured on the test text, beside uniform and OWL from the same run -> files.
 *
 * The run folder holds settings.json (written first) and engine-state.json (after every
 * generation), so `--resume DIR` continues a killed run with its own settings.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { fileDigest, readBoundedUtf8 } from "../reads.ts";
import { checkStamp, stamp, type Provenance } from "../output/provenance.ts";
import { basename, join, resolve } from "node:path";
import { Effect, Schema } from "effect";
import { blockSparsities, globalSparsity, layoutOf } from "../allocation/allocation.ts";
import { readAllocationCsv, writeAllocationCsv } from "../allocation/csv.ts";
import { nmMismatch } from "../allocation/nm.ts";
import { patternText, targetOf, toAllocation } from "../allocation/pattern.ts";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { openCheckpointSync } from "../checkpoint/open.ts";
import type { TextFormat } from "../data/text-source.ts";
import { defaultBaselines, defaultData, resultsDir } from "../defaults.ts";
import { checkEngineLimits, type EngineCheckpoint } from "../engine/evolve.ts";
import { generationalProblems, parseScreening, type ScreeningStage } from "../engine/generational.ts";
import type { Fidelity } from "../engine/genome.ts";
import { decodeEngineState, type GenerationRecord, type StopReason } from "../engine/state.ts";
import { attempt, attemptPromise, DataError, UsageError, WorkerError, type EvosparseError } from "../errors.ts";
import { checkFiniteLoss, evaluationWindows } from "../eval/inputs.ts";
import { crashPoint } from "../crash-point.ts";
import { writeFileAtomically } from "../files.ts";
import { MODULE_EXTENSIONS } from "../user-module.ts";
import { claimNewRunFolder, claimRunFolderToResume, releaseRunFolder } from "../output/run-folder.ts";
import { CALIBRATION_MODES, type CalibrationMode } from "../prune/pipeline.ts";
import type { PruneMetric } from "../prune/prune-linear.ts";
import type { Pruner } from "../prune/pruner.ts";
import type { DensePass } from "../prune/dense-statistics.ts";
import { parseQueueAddress, type QueueAddress } from "../queue/address.ts";
import { queueEvaluator } from "../queue/queue-evaluator.ts";
import { openRedis } from "../queue/redis.ts";
import { modelIdentity, setupRecordOf } from "../queue/records.ts";
import { inProcessEvaluator, workerPoolEvaluator, type FitnessEvaluator } from "../search/evaluators.ts";
import { methodContext, sizeContext } from "../search/fitness.ts";
import { fitnessSpec, isBuiltInFitness, loadFitnessMeasure } from "../search/fitness-measure.ts";
import { openFitnessModel, planFitness, referenceBytesOf, runningOf, type FitnessModel, type FitnessSetup } from "../search/fitness-setup.ts";
import { describePlan, formatBytes, memoryReport, type MemoryReport } from "../memory/plan.ts";
import type { BlockAllocation, MethodPlugin, Pattern } from "../search/plugin.ts";
import { availablePlugins, loadPlugin, methodSpec, methodsThat } from "../search/registry.ts";
import { allocationChart, fitnessChart, writeSearchFiles } from "../search/report.ts";
import { checkMethod, runFixedMethod, runMethod, startAsSearched } from "../search/run-method.ts";
import { SearchSettings } from "../search/settings.ts";
import { loadSearchSpace, resolveSpaceFile, searchSpacesDir } from "../search/space.ts";
import { defaultStagedPlan, describeStagedPlan, MIN_GENERATIONS, plannedGenerations, screenedPlaces, screenEvaluations, screenPlanFor, screenText, screenTokensPerGeneration, stagedEvaluations, stagedPlanFor, stagedTokens, type DerivedPlan, type GenerationCost, type StagedPlan } from "../search/plan.ts";
import { flagText, flagWords, type FlagTable } from "../settings/flag-table.ts";
import { SEED, WHOLE_POSITIVE } from "../settings/number-rule.ts";
import { availableParallelism } from "node:os";
import { STRUCTURED_IMPORTANCES, type StructuredImportance } from "../prune/structured.ts";
import { PRUNE_FLAGS, type PruneSettings } from "./prune.ts";
import { STRUCTURED_FLAGS, type StructuredSettings } from "./structured-prune.ts";

/** What one individual of a generation holds besides its genes (its record, cache entry and key), measured high. */
const INDIVIDUAL_BYTES = 4096;
/** What one gene (a linear's or block's value) of an individual holds across its copies. */
const GENE_BYTES = 64;

/** Everything that decides a run's result; saved so a resumed run is the same run. */
export { SearchSettings };

/** Generations of a run given no budget and no --generations. */
export const DEFAULT_GENERATIONS = 10;

/** The settings a flag sets; the others the run records itself (its derived plan). */
export type FlaggedSettings = Omit<SearchSettings, (typeof DERIVED_SETTINGS)[number]>;

/** The flag of every search setting (those it shares with prune are prune's): the command's options and messages derive from it. */
export const SEARCH_FLAGS: FlagTable<FlaggedSettings> = {
  method: { flag: "method", kind: "text", default: "dsa", describe: `allocation method: a built-in (${availablePlugins().join(", ")}), a .ts/.mts/.mjs file exporting \`plugin\`, or an installed package's name` },
  space: { flag: "space", kind: "path", describe: "search-space file (default: the method's file in search-spaces/)" },
  sparsity: PRUNE_FLAGS.sparsity,
  metric: PRUNE_FLAGS.metric,
  pattern: { flag: "pattern", kind: "pattern", default: "unstructured", describe: "unstructured, or N:M" },
  model: PRUNE_FLAGS.model,
  tokenizer: PRUNE_FLAGS.tokenizer,
  calib: PRUNE_FLAGS.calib,
  field: PRUNE_FLAGS.field,
  nsamples: PRUNE_FLAGS.nsamples,
  calibSeed: { flag: "calib-seed", kind: "number", rule: SEED, default: 0, describe: "seed of the calibration windows (the prune command's --seed)" },
  seqlen: { ...PRUNE_FLAGS.seqlen, describe: "window length of calibration, fitness and test (default: the model's context)" },
  fitnessData: { flag: "fitness-data", kind: "path", default: defaultData("validation"), describe: "validation text the fitness perplexity is measured on" },
  fitnessWindows: { flag: "fitness-windows", kind: "number", rule: WHOLE_POSITIVE, default: 8, describe: "validation windows per fitness evaluation" },
  eval: { flag: "eval", kind: "path", default: defaultData("test"), describe: "test text for the final report" },
  evalFormat: PRUNE_FLAGS.evalFormat,
  evalWindows: PRUNE_FLAGS.evalWindows,
  population: { flag: "population", kind: "number", rule: WHOLE_POSITIVE, default: 16, describe: "individuals per generation" },
  generations: {
    flag: "generations",
    kind: "number",
    rule: WHOLE_POSITIVE,
    describe: `generations at most (default: as many as --budget-tokens, --budget-evals or --time-budget pay for; ${DEFAULT_GENERATIONS} without a budget)`,
  },
  budgetEvals: { flag: "budget-evals", kind: "number", rule: WHOLE_POSITIVE, describe: "stop after this many fitness evaluations" },
  budgetTokens: { flag: "budget-tokens", kind: "number", rule: WHOLE_POSITIVE, describe: "stop before the fitness tokens spent (every stage's) would pass this many" },
  timeBudgetSeconds: { flag: "time-budget", kind: "number", rule: { min: 0, minExclusive: true }, describe: "stop after the generation that passes this many seconds" },
  patience: { flag: "patience", kind: "number", rule: WHOLE_POSITIVE, describe: "stop after this many generations without improvement" },
  seed: { flag: "seed", kind: "number", rule: SEED, default: 0, describe: "seed of the search" },
  mode: { flag: "mode", kind: "choice", choices: CALIBRATION_MODES, default: "dense", describe: "calibration mode of fitness evaluations" },
  finalMode: { flag: "final-mode", kind: "choice", choices: CALIBRATION_MODES, default: "sequential", describe: "calibration mode of the final re-pruning" },
  batch: { flag: "batch", kind: "number", rule: WHOLE_POSITIVE, default: 4, describe: PRUNE_FLAGS.batch.describe },
  structured: {
    flag: "structured",
    kind: "choice",
    choices: STRUCTURED_IMPORTANCES,
    describe: "search per-block ratios of whole key/value head groups and MLP channels removed, scored by this importance (--sparsity: the fraction of prunable weights)",
  },
  fusionSteps: STRUCTURED_FLAGS.fusionSteps,
  start: {
    flag: "start",
    kind: "path",
    describe:
      "the allocation the search starts from (evopress: the first parent; msp: the first individual): a direct method (uniform, owl, ...), an allocation CSV, or best (the default: the baseline that scores best on the fitness windows, as the search would begin from it)",
  },
  screen: {
    flag: "screen",
    kind: "text",
    describe:
      "multi-stage selection for methods the generational engine runs: CANDIDATES@TOKENS,... (e.g. 64@1024,16@4096): breed that many children, score them on a minibatch of that many fitness tokens, keep the best for the next screen; the best of the last go to the fitness windows with the elites",
  },
  fitness: {
    flag: "fitness",
    kind: "text",
    describe: `fitness: perplexity of the pruned model (ppl, the default), its KL divergence per token from the dense model (kl), or your own measure: a .ts/.mts/.mjs file exporting \`fitness\` or an installed package's name`,
  },
  exactCalibration: {
    flag: "exact-calibration",
    kind: "number",
    rule: WHOLE_POSITIVE,
    describe: "calibration windows (the first of --nsamples) with which a stage scored by the final protocol prunes each candidate; they count in the token budget (default: all of them, the final protocol itself)",
  },
  baselines: {
    flag: "baselines",
    kind: "text",
    describe: `training-free allocations scored beside the search and re-pruned at the end, comma-separated (default: ${defaultBaselines.join(",")})`,
  },
};

/** Settings of a new run as given; seqlen may be left for the model's context. */
export type GivenSettings = Omit<SearchSettings, "seqlen" | "space"> & { readonly seqlen?: number; readonly space?: string };

/**
 * Settings a resumed run may change: when it stops. Every other setting decides the run's
 * result and must equal the saved one; the worker count and the backend are not settings.
 */
export const RESUMABLE_SETTINGS = ["generations", "budgetEvals", "budgetTokens", "timeBudgetSeconds", "patience"] as const;

/**
 * Settings the run records but no flag gives: the stage plan, derived from the budget and
 * the space, and the rate a time budget is turned into tokens at.
 */
export const DERIVED_SETTINGS = ["plan", "tokensPerSecond"] as const;

/** The command-line flag of a setting, for messages. */
export const settingFlag = (key: keyof FlaggedSettings): string => `--${SEARCH_FLAGS[key].flag}`;

export interface SearchRequest {
  /** Settings of a new run. */
  readonly settings?: GivenSettings;
  readonly out?: string;
  /** A run folder to continue; its settings.json replaces `settings`. */
  readonly resume?: string;
  /** With `resume`: the settings given explicitly on the command line, checked against the saved ones. */
  readonly given?: Partial<GivenSettings>;
  readonly workers: number;
  /** A Redis URL: fitness jobs go to queue workers there instead of this process. */
  readonly queue?: string;
  /** Seconds Redis may be away during the search before it stops (default QUEUE_TIMEOUT_SECONDS). */
  readonly queueTimeout?: number;
  readonly backend: BackendChoice;
  /** MiB the run may use, and whether to stream where the model would fit (never change results). */
  readonly memoryMib?: number;
  readonly streamed?: boolean;
  readonly log?: (line: string) => void;
  readonly onGeneration?: (record: GenerationRecord, total: number) => void;
  /** The SparseGPT levels' factoring before the search (minutes at 1B): `done` of `total` linears, from `(0, total)`. */
  readonly onLevels?: (done: number, total: number) => void;
  /** The final re-pruning's progress: `done` of `total` measurements (dense, then each allocation), `what` is next. */
  readonly onFinal?: (done: number, total: number, what: string) => void;
  /**
   * Inside a final measurement (minutes each at 1B): blocks re-pruned, then test windows
   * scored, `done` of `total` of each.
   */
  readonly onFinalStep?: (step: "blocks" | "windows", done: number, total: number) => void;
  /**
   * Before the search: the baselines scored on the validation windows (a grid's candidates
   * included), `done` of `total` methods, `what` next; then "start" (the warm start's
   * scoring) and "done".
   */
  readonly onSetup?: (done: number, total: number, what: string) => void;
  /**
   * Inside the set-up: each pass over the dense model the methods need (from `(pass, 0,
   * blocks)`), and the blocks pruned for a baseline's candidate, `done` of `total`.
   */
  readonly onSetupStep?: (step: DensePass | "blocks", done: number, total: number) => void;
}

/**
 * How long a search waits for Redis to come back before it stops (it resumes with
 * --resume). Long enough for a restart or a failover; a search's saved state loses at most
 * the generation in flight, whose finished jobs the resumed run reads back.
 */
export const QUEUE_TIMEOUT_SECONDS = 300;

export interface FinalResult {
  readonly method: string;
  /** Fitness on the search's validation windows, in its calibration mode (null: failed). */
  readonly validation: number | null;
  /** Test perplexity after the final re-pruning. */
  readonly test: number;
  readonly sparsities: readonly number[];
  /** Global sparsity of the re-pruned weights (zero weights / prunable weights); absent for structured runs and older runs. */
  readonly achieved?: number;
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
  /** How the run used memory: the plan, its estimated peak and the measured one (absent in runs of earlier versions). */
  readonly memory?: MemoryReport;
  /** Set when `--resume` found the run finished and did nothing. */
  readonly alreadyFinished?: true;
  /** The allocation of the final table with the best validation fitness (the search's or a baseline's). */
  readonly winner?: string;
  /** The warm start: the baseline the search started from, and every candidate's score on the fitness windows. */
  readonly start?: WarmStart;
}

export interface WarmStart {
  readonly method: string;
  /** Tokens of the fitness windows the candidates were scored on. */
  readonly tokens: number;
  /** Scored with the final protocol, as the plan's exact stage scores. */
  readonly exact?: true;
  readonly scores: Readonly<Record<string, number>>;
}

/** A training-free allocation scored beside the search. */
interface BaselineRow {
  readonly name: string;
  /** A grid method's chosen candidate. */
  readonly label?: string;
  readonly allocation: BlockAllocation;
  readonly validation: number | null;
  /** In the final table (uniform may be scored only as a start candidate). */
  readonly compared: boolean;
}

/** The final row with the lowest validation fitness; the search's row wins ties (it comes first). */
export const winnerOf = (results: readonly FinalResult[]): string | undefined => {
  let best: FinalResult | undefined;
  for (const r of results) if (r.validation !== null && (best === undefined || r.validation < best.validation!)) best = r;
  return best?.method;
};

/** The one line a run prints when a baseline beats its search on validation. */
export const beatenLine = (method: string, winner: string, results: readonly FinalResult[], fitness: string): string => {
  const of = (name: string) => results.find((r) => r.method === name)?.validation;
  return `${winner} beats the ${method} search on validation ${fitness} (${of(winner)?.toFixed(4)} against ${of(method)?.toFixed(4) ?? "failed"}): best-allocation.csv holds the search's best, ${winner}-allocation.csv ${winner}'s`;
};

const timestamp = (d = new Date()): string => d.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);

const readSettings = (dir: string): SearchSettings => {
  const file = join(dir, "settings.json");
  if (!existsSync(file)) throw new DataError({ file, problem: "no settings.json: not a search folder, or the run never started" });
  let json: unknown;
  try {
    json = JSON.parse(readBoundedUtf8(file, "state"));
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
  try {
    return Schema.decodeUnknownSync(SearchSettings)(json, { onExcessProperty: "error" });
  } catch (e) {
    throw new DataError({ file, problem: `invalid settings: ${(e as Error).message.replace(/\n\s*/g, " ")}` });
  }
};

/**
 * What made a search's saved state: every setting that decides its result (not those a
 * resumed run may change), and the bytes of the model and of every file the settings name.
 */
export const searchProvenance = (settings: SearchSettings): Provenance => {
  // The stage plan is not among them: it is derived from the budget (which a resumed run may
  // change) and the space (whose bytes are recorded), a time budget's only once the rate is
  // measured, and a resumed run keeps the one settings.json recorded.
  const decisive = Object.fromEntries(
    (Object.keys(settings) as (keyof SearchSettings)[])
      .filter((key): key is keyof FlaggedSettings => !(DERIVED_SETTINGS as readonly string[]).includes(key))
      .filter((key) => !(RESUMABLE_SETTINGS as readonly string[]).includes(key) && settings[key] !== undefined)
      .map((key) => [settingFlag(key), settings[key]]),
  );
  const files: Record<string, string> = {};
  for (const f of modelIdentity(settings.model).files) files[`model ${f.name}`] = f.sha256;
  const named: readonly (keyof FlaggedSettings)[] = ["tokenizer", "space", "calib", "fitnessData", "eval", "start"];
  for (const key of named) {
    const path = settings[key];
    if (typeof path === "string" && !path.startsWith("brown:") && existsSync(path) && statSync(path).isFile()) files[`${settingFlag(key)} ${path}`] = fileDigest(path);
  }
  return { settings: decisive, files };
};

/**
 * When a state was saved with a shipped space whose bytes have changed since (a default
 * that a later version replaced), the shipped space that holds those bytes now, as the
 * refusal's remedy names it: the saved state cannot continue, but the user can search it
 * again by name.
 */
export const shippedSpaceNow = (saved: unknown, made: Provenance): string | undefined => {
  const files = (saved as { made?: { files?: unknown } } | null)?.made?.files;
  if (files === null || typeof files !== "object") return undefined;
  const flag = `${settingFlag("space")} `;
  for (const [label, digest] of Object.entries(files as Record<string, unknown>)) {
    if (!label.startsWith(flag) || typeof digest !== "string" || made.files[label] === digest) continue;
    if (resolve(label.slice(flag.length), "..") !== resolve(searchSpacesDir)) continue;
    const names = existsSync(searchSpacesDir) ? readdirSync(searchSpacesDir).filter((n) => n.endsWith(".json")).sort() : [];
    return names.find((name) => fileDigest(join(searchSpacesDir, name)) === digest);
  }
  return undefined;
};

/** What a refused resume tells the user to do instead. */
export const resumeRemedy = (saved: unknown, made: Provenance): string => {
  const moved = shippedSpaceNow(saved, made);
  return moved === undefined ? "start a new search" : `start a new search (the space it was saved with is search-spaces/${moved} now: --space ${moved})`;
};

const engineCheckpoint = (dir: string, made: Provenance): EngineCheckpoint => {
  const file = join(dir, "engine-state.json");
  return {
    load: () => {
      if (!existsSync(file)) return undefined;
      let json: unknown;
      try {
        json = JSON.parse(readBoundedUtf8(file, "state"));
      } catch (e) {
        if (e instanceof DataError) throw e;
        throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
      }
      return decodeEngineState(checkStamp(json, made, file, resumeRemedy(json, made)), file);
    },
    save: (state) => writeFileAtomically(file, JSON.stringify(stamp(state, made))),
  };
};

/**
 * The prune settings of the run's final protocol for an allocation file: what `prune --from
 * RUN` starts from, so one command reproduces the reported test number.
 */
export const finalPruneSettings = (s: SearchSettings, allocationFile: string): Partial<PruneSettings> => ({
  ...finalProtocol(s, allocationFile),
  metric: s.metric as PruneMetric,
  pattern: s.pattern as Pattern,
  ...(s.pattern.kind === "nm" ? {} : { sparsity: s.sparsity }),
  mode: s.finalMode,
});

/** What every final re-pruning of the run shares, structured or not: the model, calibration and test windows. */
const finalProtocol = (s: SearchSettings, allocationFile: string): Partial<PruneSettings> => ({
  model: s.model,
  ...(s.tokenizer ? { tokenizer: s.tokenizer } : {}),
  allocation: allocationFile,
  calib: s.calib,
  field: s.field,
  nsamples: s.nsamples,
  seed: s.calibSeed,
  seqlen: s.seqlen,
  batch: s.batch,
  eval: s.eval,
  evalFormat: s.evalFormat as TextFormat,
  ...(s.evalWindows !== undefined ? { evalWindows: s.evalWindows } : {}),
});

/** What a structured run's final re-pruning adds to the prune settings. */
export interface StructuredProtocol {
  readonly prune: Partial<PruneSettings>;
  readonly importance: StructuredImportance;
  readonly settings: Partial<StructuredSettings>;
}

/** The final protocol of a run: prune settings, and for a structured run its importance and settings. */
export type RunProtocol = { readonly prune: Partial<PruneSettings>; readonly structured?: undefined } | (StructuredProtocol & { readonly structured: true });

/**
 * `prune --from RUN`: the final protocol of the search in RUN, its best allocation included,
 * so one command reproduces the reported test number, structured or not.
 */
export const protocolFromRun = (dir: string): RunProtocol => {
  const settings = readSettings(dir);
  const best = join(dir, "best-allocation.csv");
  if (!existsSync(best)) throw new DataError({ file: best, problem: "missing: the search has not finished (continue it with search --resume)" });
  if (settings.structured) return { structured: true, ...structuredFinal({ ...settings, structured: settings.structured }, best) };
  return { prune: finalPruneSettings(settings, best) };
};

/** A structured run's final protocol: the shared one, its target, and the structured settings. */
const structuredFinal = (s: SearchSettings & { structured: StructuredImportance }, allocationFile: string): StructuredProtocol => ({
  // HyWIA checks its fusion on validation windows: the search's fitness windows.
  prune: { ...finalProtocol(s, allocationFile), sparsity: s.sparsity, valid: s.fitnessData, validWindows: s.fitnessWindows },
  importance: s.structured,
  settings: s.fusionSteps !== undefined ? { fusionSteps: s.fusionSteps } : {},
});

/** The prune command that re-prunes an allocation of the run as the final report did. */
const reproduceCommand = (s: SearchSettings, allocationFile: string): string => {
  // npx finds the bin of the installed package, so the command runs as printed.
  const structured = s.structured ? structuredFinal({ ...s, structured: s.structured }, allocationFile) : undefined;
  const words = structured
    ? [`npx evosparse prune --structured ${structured.importance}`, ...flagWords(PRUNE_FLAGS, structured.prune), ...flagWords(STRUCTURED_FLAGS, structured.settings)]
    : [
        "npx evosparse prune",
        ...flagWords(PRUNE_FLAGS, { ...finalPruneSettings(s, allocationFile), ...(s.pattern.kind === "nm" ? {} : { pattern: undefined }) }),
      ];
  return [...words, "--out DIR"].join(" ");
};

/** The same model pruned in the final mode, measured on the test windows, with the sparsity its weights reached. */
const finalPerplexity = (
  pruner: Pruner,
  windows: ReturnType<typeof evaluationWindows>,
  pattern: Pattern,
  sparsities: BlockAllocation,
  onWindows?: (done: number, total: number) => void,
) =>
  attemptPromise(async () => {
    const allocation = toAllocation(sparsities, pruner.layout, pattern);
    await pruner.apply(allocation);
    let zeros = 0;
    let total = 0;
    for (const o of pruner.outcomes(allocation)) {
      zeros += o.achieved * o.params;
      total += o.params;
    }
    return { test: (await pruner.perplexity(windows, onWindows ? { onProgress: onWindows } : {})).ppl, achieved: zeros / total };
  });

const samePath = (a: string | undefined, b: string | undefined): boolean =>
  a === b || (a !== undefined && b !== undefined && !a.startsWith("brown:") && resolve(a) === resolve(b));

const sameSetting = (key: keyof FlaggedSettings, a: unknown, b: unknown): boolean =>
  SEARCH_FLAGS[key].kind === "path" ? samePath(a as string | undefined, b as string | undefined) : JSON.stringify(a) === JSON.stringify(b);


const shown = (key: keyof FlaggedSettings, value: unknown): string => flagText(SEARCH_FLAGS[key], value);

/**
 * The saved settings with the allowed changes applied; a flag that would change anything
 * else is refused, naming the flag, both values and what may change.
 */
export const resumedSettings = (saved: SearchSettings, given: Partial<GivenSettings>, file: string): SearchSettings => {
  const changed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(given)) {
    const key = name as keyof FlaggedSettings;
    if (value === undefined || sameSetting(key, value, saved[key])) continue;
    if ((RESUMABLE_SETTINGS as readonly string[]).includes(key)) {
      changed[key] = value;
      continue;
    }
    const before = (saved as Record<string, unknown>)[key];
    throw new UsageError({
      problem:
        `${settingFlag(key)} ${shown(key, value)} differs from the resumed run's ${before === undefined ? "default" : shown(key, before)} (${file}): ` +
        `a resumed run keeps its settings; only ${RESUMABLE_SETTINGS.map(settingFlag).join(", ")}, --workers, --queue and --backend may change`,
    });
  }
  return { ...saved, ...changed };
};

/** The run's summary.json when the run has finished, else undefined. */
const finishedSummary = (dir: string): SearchSummary | undefined => {
  const file = join(dir, "summary.json");
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readBoundedUtf8(file, "state")) as SearchSummary;
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
};

/** `--start best`: the baseline that scores best on the fitness windows. */
export const BEST_START = "best";

/** A plan the run derives only once it has measured its rate (a time budget). */
type DeferredPlan = "staged" | "screen";

/** The budget in tokens a time budget stands for, at the measured rate; a tenth is left for the rest of a generation's work. */
const tokensOfTime = (seconds: number, tokensPerSecond: number): number => Math.max(1, Math.floor(0.9 * seconds * tokensPerSecond));

type RecordedPlan = NonNullable<SearchSettings["plan"]>;

const recordPlan = (derived: DerivedPlan<StagedPlan>, from: string): RecordedPlan => ({
  offspring: derived.plan.offspring,
  stages: derived.plan.stages.map((st) => ({ survivors: st.survivors, tokens: st.tokens, ...(st.exact ? { exact: true } : {}) })),
  tokensPerGeneration: derived.tokensPerGeneration,
  generations: derived.generations,
  from,
});

/**
 * The exact stage's calibration windows: the setting, all of them by default (and in runs of
 * earlier versions). Fewer are cheaper but not the protocol: on stories260K at 70% Wanda
 * (800k tokens, four seeds), the first 16 of 128 ended at held-out 189 on average where all
 * 128 ended at 161, though one prune with 16 or 128 windows measures alike.
 */
const exactWindowsOf = (s: SearchSettings): number => Math.min(s.exactCalibration ?? s.nsamples, s.nsamples);

/** Tokens one exact evaluation forwards besides its fitness windows: its calibration windows. */
const exactTokensOf = (s: SearchSettings): number => exactWindowsOf(s) * s.seqlen;

/**
 * Whether a derived plan's last stage scores with the final protocol unless the space says
 * otherwise: where that protocol and the search's dense-mode fitness prune differently and
 * the difference costs only a forward pass of the calibration windows. That is Wanda pruned
 * sequentially: block i's scores come from activations of the already pruned blocks, which
 * dense mode cannot see (on stories260K at 70% the two rank allocations with Spearman 0.49).
 * Magnitude prunes alike in both modes; SparseGPT's exact stage would run its solves for
 * every candidate, minutes a candidate from 1B parameters up.
 */
const exactByDefault = (s: SearchSettings): boolean => !s.structured && s.mode === "dense" && s.finalMode === "sequential" && s.metric === "wanda";

/**
 * Whether the last stage of a plan the run derives is exact: the space's choice, else
 * "auto" (exactByDefault). The space is asked through the plugin with a probe plan.
 */
const exactLastStage = (plugin: MethodPlugin<unknown>, space: unknown, settings: SearchSettings): boolean | "auto" => {
  const probe = (exact: boolean): boolean => plugin.stagedPlan!(plugin.withStagedPlan!(space, { offspring: 1, stages: [{ survivors: 1, tokens: 1, ...(exact ? { exact: true } : {}) }] }))!.stages[0]!.exact === true;
  const [off, on] = [probe(false), probe(true)];
  if (off === on) return off;
  return exactByDefault(settings) ? "auto" : false;
};

/**
 * The staged plan for a budget, its last stage exact as exactLastStage says. "auto" takes
 * the exact plan only where the budget pays for MIN_GENERATIONS of it, as for any plan;
 * otherwise the plain plan.
 */
const budgetPlan = (plugin: MethodPlugin<unknown>, space: unknown, settings: SearchSettings, budget: number, windowTokens: number, maxStageWindows = Infinity): DerivedPlan<StagedPlan> => {
  const exact = exactLastStage(plugin, space, settings);
  if (exact === false) return stagedPlanFor(budget, windowTokens, maxStageWindows);
  const withExact = stagedPlanFor(budget, windowTokens, maxStageWindows, exactTokensOf(settings));
  if (exact === true || withExact.generations >= MIN_GENERATIONS) return withExact;
  return stagedPlanFor(budget, windowTokens, maxStageWindows);
};

/**
 * The plan of a run without a token budget, its last stage exact when `exactTokens` is
 * given, for as many generations as `--generations` and `--budget-evals` allow (without
 * either, DEFAULT_GENERATIONS).
 */
const unbudgetedPlan = (windowTokens: number, limits: { generations?: number; budgetEvals?: number }, exactTokens: number | undefined): DerivedPlan<StagedPlan> => {
  const plain = defaultStagedPlan(windowTokens);
  const plan: StagedPlan = exactTokens === undefined ? plain : { ...plain, stages: plain.stages.map((st, i) => (i === plain.stages.length - 1 ? { ...st, exact: true } : st)) };
  const tokensPerGeneration = stagedTokens(plan, windowTokens, exactTokens ?? 0);
  return { plan, tokensPerGeneration, generations: Math.max(1, plannedGenerations({ tokens: tokensPerGeneration, evaluations: stagedEvaluations(plan) }, limits) ?? DEFAULT_GENERATIONS) };
};

/**
 * The run's stage plan: the one its space fixes, the one it recorded, or one derived from
 * its budget (src/search/plan.ts) and recorded in its settings; for generational methods a
 * screening plan (`--screen`) when none was given. A time budget's plan is deferred until
 * the run has measured its rate.
 */
const planOf = (plugin: MethodPlugin<unknown>, space: unknown, settings: SearchSettings, windowTokens: number, resumed: boolean): { settings: SearchSettings; space: unknown; deferred?: DeferredPlan } => {
  const budget = settings.budgetTokens;
  if (plugin.stagedPlan && plugin.withStagedPlan) {
    if (plugin.stagedPlan(space) !== undefined) return { settings, space };
    if (settings.plan) return { settings, space: plugin.withStagedPlan(space, settings.plan) };
    if (resumed) {
      // A run of an earlier version recorded no plan: its default space then held the published one.
      const published = plugin.stagedPlan(loadSearchSpace(plugin, `${plugin.name}-published.json`))!;
      return { settings, space: plugin.withStagedPlan(space, published) };
    }
    if (budget === undefined && settings.timeBudgetSeconds !== undefined) return { settings, space, deferred: "staged" };
    const plan =
      budget !== undefined
        ? recordPlan(budgetPlan(plugin, space, settings, budget, windowTokens), `--budget-tokens ${budget}`)
        : recordPlan(
            // Without a token budget nothing bounds what the exact stage costs: only the space turns it on.
            unbudgetedPlan(windowTokens, settings, exactLastStage(plugin, space, settings) === true ? exactTokensOf(settings) : undefined),
            settings.budgetEvals === undefined ? "no budget: the default plan" : `--budget-evals ${settings.budgetEvals}: the default plan`,
          );
    const planned = plugin.withStagedPlan(space, plan);
    // Recorded as the space turned it: stages it scores with the final protocol say so.
    return { settings: { ...settings, plan: { ...plan, stages: plugin.stagedPlan(planned)!.stages.map((st) => ({ ...st })) } }, space: planned };
  }
  const generational = plugin.method.kind === "evolve" && plugin.method.strategy === undefined;
  if (generational && settings.screen === undefined && !settings.structured && !resumed) {
    if (budget !== undefined) {
      const derived = screenPlanFor(budget, windowTokens, settings.population, settings.fitnessWindows * windowTokens);
      return { settings: { ...settings, screen: screenText(derived.plan) }, space };
    }
    if (settings.timeBudgetSeconds !== undefined) return { settings, space, deferred: "screen" };
  }
  return { settings, space };
};

/** The baselines of a run: its setting, or uniform and OWL for runs of earlier versions; the method itself is left out. */
const baselineNamesOf = (text: string | undefined, method: string): string[] => {
  const names = (text ?? "uniform,owl").split(",").map((n) => n.trim()).filter((n) => n.length > 0);
  const known = availablePlugins();
  for (const name of names) if (!known.includes(name)) throw new UsageError({ problem: `--baselines: unknown method "${name}"; known: ${known.join(", ")}` });
  return [...new Set(names)].filter((n) => n !== method);
};

/** A run has a budget to end on (tokens, evaluations or seconds). */
const hasBudget = (s: GivenSettings): boolean => s.budgetTokens !== undefined || s.budgetEvals !== undefined || s.timeBudgetSeconds !== undefined;

/** The settings as the engine runs them: without a budget and without --generations, DEFAULT_GENERATIONS. */
const engineLimitsOf = <S extends GivenSettings>(s: S): S => (s.generations === undefined && !hasBudget(s) ? { ...s, generations: DEFAULT_GENERATIONS } : s);

/** The largest stage a time budget's plan may take, in windows: what the memory plan allowed for. */
const timePlanStageWindows = (s: SearchSettings): number => Math.max(s.fitnessWindows, 16);

/** Whether two allocations are the same sparsities, entry for entry. */
const sameAllocation = (a: BlockAllocation, b: BlockAllocation): boolean => a.length === b.length && a.every((x, k) => x === b[k]);

/** `--screen` as screening stages, checked against the population. */
const screeningOf = (text: string, population: number): ScreeningStage[] => {
  let stages: ScreeningStage[];
  try {
    stages = parseScreening(text);
  } catch (e) {
    throw new UsageError({ problem: `--screen ${text}: ${(e as Error).message}` });
  }
  const problems = generationalProblems({ population, screening: stages });
  if (problems.length > 0) throw new UsageError({ problem: `--screen ${text}: ${problems.join("; ")} (each screen keeps at least --population ${population} and no more than the one before)` });
  return stages;
};

/**
 * The queue as the run's evaluator: the run's setup record (model digests, settings,
 * windows as tokens) is published under its fingerprint and every candidate becomes a job.
 */
const queueEvaluatorFor = (address: QueueAddress, setup: FitnessSetup, model: FitnessModel, settings: SearchSettings, request: SearchRequest, dir: string, log: (line: string) => void) =>
  Effect.gen(function* () {
    const record = yield* attempt(() => setupRecordOf(setup, model, modelIdentity(settings.model)));
    const timeoutSeconds = request.queueTimeout ?? QUEUE_TIMEOUT_SECONDS;
    const workerHint = `start one with: npx evosparse worker --queue ${address.shown} --model ${settings.model} --backend ${setup.backend}`;
    log(`queue: run ${record.fingerprint.slice(0, 12)} on ${address.shown}; ${workerHint}`);
    return yield* queueEvaluator({ address, record, timeoutSeconds, log, after: `the search stopped; every finished generation is saved: continue it with --resume ${dir}`, workerHint });
  });

export const searchJob = (request: SearchRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = request.log ?? (() => {});
      if (!Number.isInteger(request.workers) || request.workers < 1) return yield* new UsageError({ problem: `--workers ${request.workers} must be a positive integer` });
      if (request.queue !== undefined && request.workers > 1) return yield* new UsageError({ problem: "--queue and --workers: fitness goes either to queue workers or to worker threads here" });
      const queueAddress = request.queue === undefined ? undefined : yield* attempt(() => parseQueueAddress(request.queue!));
      // An unreachable queue is found before the run folder is made.
      if (queueAddress) yield* attemptPromise(() => openRedis(queueAddress, "evosparse-probe").then((r) => r.quit()));

      // 1. Everything that can be checked without the model, before anything is written.
      if (!request.resume && !request.settings) return yield* new UsageError({ problem: "a search needs settings or --resume" });
      if (request.settings) {
        const given = request.settings;
        yield* checkEngineLimits(engineLimitsOf(given));
        if (!(given.sparsity >= 0 && given.sparsity < 1)) return yield* new UsageError({ problem: `--sparsity ${given.sparsity} is outside [0, 1)` });
      }

      // The method of a new run, found before its folder is named after it.
      const newPlugin = request.settings ? yield* attemptPromise(() => loadPlugin(request.settings!.method)) : undefined;

      // 2. The run folder, created (or reopened) and locked: one writer at a time.
      let used = false;
      const folder = yield* Effect.acquireRelease(
        attempt(() =>
            request.resume
              ? claimRunFolderToResume(request.resume, "settings.json")
              : claimNewRunFolder({
                  ...(request.out !== undefined ? { dir: request.out } : {}),
                  base: join(resultsDir(), `${newPlugin!.name}-${timestamp()}`),
                  marker: "settings.json",
                })),
        (f) => Effect.sync(() => releaseRunFolder(f, used)),
      );
      const dir = folder.dir;

      // Settings: from the run folder when resuming, else from the request.
      let settings: SearchSettings;
      let settingsChanged = false;
      if (request.resume) {
        const saved = yield* attempt(() => readSettings(dir));
        settings = yield* attempt(() => resumedSettings(saved, request.given ?? {}, join(dir, "settings.json")));
        settingsChanged = JSON.stringify(settings) !== JSON.stringify(saved);
        yield* checkEngineLimits(engineLimitsOf(settings));
        const finished = finishedSummary(dir);
        if (finished && !settingsChanged) {
          // A finished run is not run again: its files stay as they are.
          used = true;
          log(`${dir}: this search has finished (summary.json); nothing to do. Give a larger --generations or budget to continue it.`);
          return { ...finished, alreadyFinished: true } satisfies SearchSummary;
        }
        log(`resuming ${dir}${settingsChanged ? ` with ${RESUMABLE_SETTINGS.filter((k) => settings[k] !== saved[k]).map((k) => `${settingFlag(k)} ${settings[k]}`).join(", ")}` : ""}`);
      } else {
        const given = request.settings!;
        const space = yield* attempt(() => resolveSpaceFile(newPlugin!, given.space));
        // A method file is saved as its absolute path, so the run resumes from anywhere.
        settings = {
          ...given,
          method: yield* attempt(() => methodSpec(given.method)),
          ...(given.fitness !== undefined ? { fitness: yield* attempt(() => fitnessSpec(given.fitness!)) } : {}),
          space,
          seqlen: given.seqlen ?? 0,
          // The defaults a new run records, so that a resumed run keeps them.
          baselines: given.baselines ?? defaultBaselines.join(","),
          exactCalibration: given.exactCalibration ?? given.nsamples,
          ...(given.start === undefined && newPlugin!.startable ? { start: BEST_START } : {}),
        };
      }
      const plugin = yield* attemptPromise(() => loadPlugin(settings.method));
      const pattern = settings.pattern as Pattern;
      if (!plugin.patterns.includes(pattern.kind)) {
        return yield* new UsageError({ problem: `method ${plugin.name} does not support pattern ${patternText(pattern)}` });
      }
      if (settings.exactCalibration !== undefined && settings.exactCalibration > settings.nsamples) {
        return yield* new UsageError({ problem: `--exact-calibration ${settings.exactCalibration} is above --nsamples ${settings.nsamples}: the exact stage prunes with the first of the run's calibration windows` });
      }
      if (settings.fusionSteps !== undefined && settings.structured !== "hywia") {
        return yield* new UsageError({ problem: "--fusion-steps applies to --structured hywia" });
      }
      if (settings.structured && settings.fitness !== undefined && settings.fitness !== "ppl") {
        return yield* new UsageError({ problem: `--fitness ${settings.fitness} is for unstructured pruning: a structured search scores perplexity` });
      }
      // A user's measure is loaded here first, so a bad one is refused before any work.
      const measure = isBuiltInFitness(settings.fitness) ? undefined : yield* attemptPromise(() => loadFitnessMeasure(settings.fitness!));
      if (measure && queueAddress) return yield* new UsageError({ problem: `--fitness ${settings.fitness}: queue workers compute ppl and kl; a measure of your own runs with --workers` });
      if (settings.structured && plugin.method.kind === "evolve" && plugin.method.strategy) {
        const perBlock = yield* attemptPromise(() => methodsThat((p) => p.method.kind === "evolve" && p.method.strategy === undefined));
        return yield* new UsageError({ problem: `method ${plugin.name} searches with its own strategy; a structured search takes a method the generational engine runs (${perBlock}, ...)` });
      }
      if (settings.structured && pattern.kind !== "unstructured") {
        return yield* new UsageError({ problem: "--structured removes whole groups: it takes no --pattern" });
      }
      let space = yield* attempt(() => loadSearchSpace(plugin, settings.space));

      // 3. The model: its context and shapes decide whether the settings can run at all.
      const probe = yield* attempt(() => openCheckpointSync(settings.model, settings.tokenizer ? { tokenizer: settings.tokenizer } : {}));
      const context = probe.spec.maxPositions;
      const mismatch = pattern.kind === "nm" ? nmMismatch(probe.spec, pattern.m) : undefined;
      probe.close();
      if (settings.seqlen === 0) settings = { ...settings, seqlen: context };
      if (settings.seqlen > context) return yield* new UsageError({ problem: `--seqlen ${settings.seqlen} exceeds the context of ${settings.model} (${context})` });

      // The stage plan: the space's, the one the run recorded, or one derived from the budget
      // (a time budget's waits for the measured rate, below). Scored tokens of a fitness window.
      const windowTokens = Math.max(1, settings.seqlen - 1);
      const planned_ = yield* attempt(() => planOf(plugin, space, settings, windowTokens, request.resume !== undefined));
      settings = planned_.settings;
      space = planned_.space;
      const deferredPlan = planned_.deferred;
      if (mismatch) return yield* new UsageError({ problem: `--pattern ${patternText(pattern)} does not fit ${settings.model}: ${mismatch}` });

      // What makes this run, checked now against a saved state's record (before any work),
      // and written with every state it saves.
      const made = yield* attempt(() => searchProvenance(settings));
      let savedState = engineCheckpoint(dir, made);
      if (request.resume) yield* attempt(() => savedState.load());

      const backend = yield* initBackendEffect(request.backend);
      log(`backend: ${describeBackend(backend)}`);

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
        // The backend the main thread got, so that workers never resolve "auto" differently.
        backend: backend.name as BackendChoice,
        fitness: s.fitness ?? "ppl",
        searchSeed: s.seed,
        ...(s.structured ? { structured: { importance: s.structured as StructuredImportance, target: targetOf(pattern, s.sparsity), ...(s.fusionSteps !== undefined ? { fusionSteps: s.fusionSteps } : {}) } } : {}),
      });
      // The memory plan: how the fitness copies (this thread's, and each worker's) and the final
      // re-pruning run, from the checkpoint's headers and the settings, before any work. More
      // workers than memory allows are capped (the history does not depend on their count).
      let given = setupOf(settings);
      const largestStage = Math.max(
        0,
        ...((space as { stages?: readonly { tokens?: number }[] }).stages ?? []).map((st) => st.tokens ?? 0),
        ...(settings.screen === undefined ? [] : parseScreening(settings.screen).map((st) => st.tokens)),
        ...(deferredPlan !== undefined ? [timePlanStageWindows(settings) * windowTokens] : []),
      );
      const probed = yield* attempt(() => openCheckpointSync(settings.model, settings.tokenizer ? { tokenizer: settings.tokenizer } : {}));
      const probedSpec = probed.spec;
      // EvoPress with SparseGPT: every linear pruned at each of its levels as the search first
      // reaches it, from factors in the run folder (kept for --resume), instead of every
      // Hessian held for the run.
      const levelSparsities =
        settings.metric === "sparsegpt" && settings.mode === "dense" && !settings.structured && plugin.levels
          ? yield* attempt(() => plugin.levels!(sizeContext(layoutOf(probedSpec), probedSpec.numLayers, targetOf(pattern, settings.sparsity), pattern), space))
          : undefined;
      const levels = levelSparsities ? { dir: join(dir, "levels"), sparsities: levelSparsities, ...(plugin.fewerLevels ? { fewer: plugin.fewerLevels } : {}) } : undefined;
      if (levels) given = { ...given, running: { levels } };
      const memoryOptions = { largestStage, ...(request.memoryMib !== undefined ? { memoryMib: request.memoryMib } : {}), ...(request.streamed ? { streamed: true } : {}) };
      let workers = queueAddress ? 1 : Math.max(1, Math.min(request.workers, availableParallelism()));
      // With workers, the main thread keeps a copy of its own (statistics, the final numbers).
      const planFor = (n: number) => planFitness(probed, given, backend.name, n > 1 ? n + 1 : 1, { ...memoryOptions, ...(n > 1 ? { threads: n } : {}) });
      let planned = planFor(workers);
      while ("refused" in planned && workers > 1) planned = planFor(--workers);
      probed.close();
      if ("refused" in planned) return yield* new UsageError({ problem: `${settings.model}: this search ${planned.refused}; try fewer --nsamples, a shorter --seqlen${memoryOptions.memoryMib !== undefined ? " or a larger --memory" : ""}` });
      const memoryPlan = planned;
      // The engine's own memory: every individual of a generation (and the children screened
      // for it) with its genome, history record and cache entry, planned with the rest.
      const screened = settings.screen === undefined ? 0 : Math.max(0, ...parseScreening(settings.screen).map((st) => st.candidates));
      const individuals = Math.max(settings.population, screened) * 2;
      const engineBytes = individuals * (INDIVIDUAL_BYTES + GENE_BYTES * probedSpec.numLayers * probedSpec.linears.length);
      if (memoryPlan.peakBytes + engineBytes > memoryPlan.budget.bytes) {
        return yield* new UsageError({
          problem: `--population ${settings.population}${screened > 0 ? ` (--screen ${settings.screen})` : ""}: the search would hold about ${formatBytes(engineBytes)} of individuals beside the model's ${formatBytes(memoryPlan.peakBytes)}, more than the ${formatBytes(memoryPlan.budget.bytes)} ${memoryPlan.budget.source === "--memory" ? "given by --memory" : "available"}; use a smaller --population`,
        });
      }
      if (!queueAddress && workers < request.workers) {
        log(`--workers ${request.workers} capped at ${workers}: ${workers < availableParallelism() ? `${workers} fit in the memory available` : `this machine has ${availableParallelism()} cores`} (the history does not depend on the worker count)`);
      }
      log(describePlan(memoryPlan));
      const running = { ...runningOf(memoryPlan, join(dir, "cache")), ...(levels ? { levels } : {}) };
      const referenceBytes = referenceBytesOf(memoryPlan, workers > 1 ? workers + 1 : 1);
      const setup: FitnessSetup = { ...given, running, ...(referenceBytes ? { referenceBytes } : {}) };
      // This thread's model reports its passes over the dense model, and the blocks it prunes
      // while the baselines are scored (worker threads and queue workers are not followed).
      const onSetupStep = request.onSetupStep;
      let settingUp = true;
      const model = yield* Effect.acquireRelease(
        attempt(() =>
          openFitnessModel(
            onSetupStep
              ? {
                  ...setup,
                  running: {
                    ...running,
                    onPass: onSetupStep,
                    onBlock: (block: number) => void (settingUp && onSetupStep("blocks", block + 1, probedSpec.numLayers)),
                  },
                }
              : setup,
          ),
        ),
        (m) => Effect.sync(() => m.dispose()),
      );
      const target = targetOf(pattern, settings.sparsity);
      // The baselines scored beside the search and re-pruned at the end see the same statistics as the method.
      const baselineNames = yield* attempt(() => baselineNamesOf(settings.baselines, plugin.name));
      const baselines = (yield* Effect.forEach(baselineNames, (name) => attemptPromise(() => loadPlugin(name)))).filter(
        (other) => other.patterns.includes(pattern.kind),
      );
      for (const other of baselines) {
        if (other.method.kind === "evolve") return yield* new UsageError({ problem: `--baselines: ${other.name} is a search, not a training-free allocation` });
      }
      // A start allocation: the best baseline's (chosen below), a direct method's (its statistics measured with the others') or a file's.
      const bestStart = settings.start === BEST_START;
      const startFile =
        settings.start !== undefined &&
        !bestStart &&
        (settings.start.endsWith(".csv") || ((settings.start.includes("/") || existsSync(settings.start)) && !MODULE_EXTENSIONS.some((e) => settings.start!.endsWith(e))));
      const startPlugin = settings.start !== undefined && !bestStart && !startFile ? yield* attemptPromise(() => loadPlugin(settings.start!)) : undefined;
      // Uniform is a start candidate even when it is not a baseline.
      const uniformPlugin = bestStart && !baselines.some((b) => b.name === "uniform") ? yield* attemptPromise(() => loadPlugin("uniform")) : undefined;
      let screening = settings.screen === undefined ? undefined : yield* attempt(() => screeningOf(settings.screen!, settings.population));
      if ((screening || deferredPlan === "screen") && (plugin.method.kind !== "evolve" || plugin.method.strategy !== undefined)) {
        const screened = yield* attemptPromise(() => methodsThat((p) => p.method.kind === "evolve" && p.method.strategy === undefined));
        return yield* new UsageError({ problem: `--screen: method ${plugin.name} ${plugin.method.kind === "evolve" ? "runs its own strategy (its search space)" : "does not evolve"}; ${screened} screen` });
      }
      if (screening && settings.structured) return yield* new UsageError({ problem: "--screen: structured fitness has no minibatches" });
      if (settings.start !== undefined && !plugin.startable) {
        const startable = yield* attemptPromise(() => methodsThat((p) => p.startable === true));
        return yield* new UsageError({ problem: `--start: method ${plugin.name} does not start from an allocation (${startable} do)` });
      }
      if (startPlugin && startPlugin.method.kind !== "direct") {
        return yield* new UsageError({
          problem: `--start ${settings.start}: a start is a direct method (${yield* attemptPromise(() => methodsThat((p) => p.method.kind === "direct"))}), an allocation CSV or ${BEST_START}; for ${startPlugin.name}, prune with it and start from its allocation.csv`,
        });
      }
      const measured = yield* attemptPromise(() =>
        // Candidates scored in this process (one worker, no queue) are masked from this
        // pruner's ranks; a structured search cuts groups instead and never reads them.
        methodContext(model.pruner, target, pattern, [plugin, ...baselines, ...(startPlugin ? [startPlugin] : []), ...(uniformPlugin ? [uniformPlugin] : [])], {
          ranks: !queueAddress && workers <= 1 && !settings.structured,
        }),
      );
      let context_ = measured;
      if (startPlugin && startPlugin.method.kind === "direct") {
        const method = startPlugin.method;
        const startSpace = yield* attempt(() => loadSearchSpace(startPlugin));
        context_ = { ...measured, start: { label: startPlugin.name, sparsities: yield* attempt(() => method.allocate(measured, startSpace)) } };
      } else if (startFile) {
        const allocation = yield* attempt(() => readAllocationCsv(settings.start!, model.pruner.layout, { target }));
        context_ = { ...measured, start: { label: settings.start!, sparsities: allocation.map((e) => e.sparsity) } };
      }
      yield* attempt(() => checkMethod(plugin, context_, space)).pipe(
        // Bounds and ranges come from the space file: name it.
        Effect.mapError((e) => (e._tag === "UsageError" ? new DataError({ file: settings.space, problem: e.problem }) : e)),
      );

      // 4. Everything checked: the run's first file.
      const writeSettings = () => writeFileAtomically(join(dir, "settings.json"), JSON.stringify(settings, null, 2) + "\n");
      if (!request.resume || settingsChanged) writeSettings();
      used = true;

      log(
        `${plugin.name}: target ${target}, ${settings.structured ? `structured by ${settings.structured} importance` : `${settings.metric} ${pattern.kind === "nm" ? `${pattern.n}:${pattern.m}` : "unstructured"}`}, fitness ${measure?.name ?? settings.fitness ?? "ppl"} ${settings.structured ? "" : `(${settings.mode}) `}on ${model.windows.length} windows of ${settings.fitnessData}; ` +
          `${model.calibration.length} calibration windows of ${settings.seqlen}; ${queueAddress ? `queue ${queueAddress.shown}` : `${workers} worker${workers > 1 ? "s" : ""}`}; folder ${dir}`,
      );

      // SparseGPT's levels: their factors made here once (resumed where a stopped run left
      // them), before any worker reads them; each level is pruned when first asked for.
      if (levels) yield* attemptPromise(() => model.pruner.prepareLevels(log, request.onLevels));

      // The baselines, the warm start and the search, in a scope of their own: worker
      // threads (each with its model) end with it, before the final re-pruning takes memory.
      let evaluationSeconds = 0;
      const { outcome, baselineRows, bestValidation, warmStart } = yield* Effect.scoped(
        Effect.gen(function* () {
          const pooled: FitnessEvaluator = queueAddress
            ? yield* queueEvaluatorFor(queueAddress, setup, model, settings, request, dir, log)
            : workers > 1
              ? yield* workerPoolEvaluator(setup, workers)
              : inProcessEvaluator(model);
          // Stages scored with the final protocol: a model of their own, in the final mode, on this thread.
          let exactModel: FitnessModel | undefined;
          yield* Effect.addFinalizer(() => Effect.sync(() => exactModel?.dispose()));
          const pool: FitnessEvaluator = {
            workers: pooled.workers,
            evaluate: (batch, fidelity) => {
              if (!fidelity?.exact) return pooled.evaluate(batch, fidelity);
              // Pruned with the first of the run's calibration windows (exactWindowsOf).
              const windows = exactWindowsOf(settings);
              exactModel ??= openFitnessModel({ ...setup, nsamples: windows, calibrationTokens: model.calibration.slice(0, windows), running: { ...running, materialise: true } }, settings.finalMode);
              // Its calibration windows are spent too, and counted (the plan counted them).
              const calibration = exactTokensOf(settings);
              return inProcessEvaluator(exactModel).evaluate(batch, fidelity).pipe(Effect.map((results) => results.map((r) => (r.tokens === undefined ? r : { ...r, tokens: r.tokens + calibration }))));
            },
          };
          const evaluator: FitnessEvaluator & { tokensOf(fidelity?: Fidelity): number } = {
            workers: pool.workers,
            // The main thread's copy draws the same windows as every worker.
            // An exact evaluation also forwards its calibration windows.
            tokensOf: (fidelity) => model.tokensOf(fidelity) + (fidelity?.exact ? exactTokensOf(settings) : 0),
            evaluate: (batch, fidelity) =>
              Effect.suspend(() => {
                const start = performance.now();
                return pool.evaluate(batch, fidelity).pipe(Effect.ensuring(Effect.sync(() => (evaluationSeconds += (performance.now() - start) / 1000))));
              }),
          };
          const phenotypeKey = (s: BlockAllocation) => model.pruner.allocationKey(toAllocation(s, model.pruner.layout, pattern));

          // The baselines' validation fitness (a grid's candidates included), which also
          // measures how many fitness tokens a second this run scores.
          let baselineStart = performance.now();
          let firstDone = false;
          let timedEvaluations = 0;
          const baselineRows: BaselineRow[] = [];
          const scoredFirst = [...baselines, ...(uniformPlugin ? [uniformPlugin] : [])];
          const setupTotal = scoredFirst.length + (bestStart ? 1 : 0);
          for (const [k, other] of scoredFirst.entries()) {
            request.onSetup?.(k, setupTotal, other.name);
            // The first evaluation also builds what every later one reuses (the dense references): the rate is timed after it.
            const counted = (batch: readonly BlockAllocation[]) =>
              evaluator.evaluate(batch).pipe(
                Effect.tap(() =>
                  Effect.sync(() => {
                    if (firstDone) timedEvaluations += batch.length;
                    else baselineStart = performance.now();
                    firstDone = true;
                  }),
                ),
              );
            const fixed = yield* runFixedMethod(other, context_, loadSearchSpace(other), counted);
            const [validation] = fixed.trials.length > 0 ? [fixed.trials.find((t) => t.allocation === fixed.allocation)!.fitness] : yield* counted([fixed.allocation]);
            baselineRows.push({ name: other.name, ...(fixed.label !== undefined ? { label: fixed.label } : {}), allocation: fixed.allocation, validation: validation!.ok ? validation!.value : null, compared: other !== uniformPlugin });
          }
          const timedTokens = Math.max(1, timedEvaluations) * model.tokensOf();
          const tokensPerSecond = timedTokens / Math.max(1e-3, (performance.now() - baselineStart) / 1000);

          // A time budget stands for tokens at the rate just measured. The rate is recorded, so
          // a resumed run (its budget perhaps changed) counts the tokens at the same rate.
          const rateToRecord = settings.timeBudgetSeconds !== undefined && settings.tokensPerSecond === undefined;
          if (rateToRecord) settings = { ...settings, tokensPerSecond };
          const timedBudget = settings.timeBudgetSeconds !== undefined && settings.tokensPerSecond !== undefined ? tokensOfTime(settings.timeBudgetSeconds, settings.tokensPerSecond) : undefined;
          // A time budget's plan, from those tokens.
          if (deferredPlan !== undefined && timedBudget !== undefined) {
            const from = `--time-budget ${settings.timeBudgetSeconds} at ${settings.tokensPerSecond!.toFixed(0)} fitness tokens a second`;
            if (deferredPlan === "staged") {
              const plan = recordPlan(budgetPlan(plugin, space, settings, timedBudget, windowTokens, timePlanStageWindows(settings)), from);
              space = plugin.withStagedPlan!(space, plan);
              settings = { ...settings, plan: { ...plan, stages: plugin.stagedPlan!(space)!.stages.map((st) => ({ ...st })) } };
            } else {
              const derived = screenPlanFor(timedBudget, windowTokens, settings.population, settings.fitnessWindows * windowTokens);
              settings = { ...settings, screen: screenText(derived.plan) };
              screening = yield* attempt(() => screeningOf(settings.screen!, settings.population));
              // The screen decides the result, so the states this run saves record it: a resumed
              // run reads it from settings.json, and its states must say the same.
              savedState = engineCheckpoint(dir, yield* attempt(() => searchProvenance(settings)));
            }
          }
          // One write for the rate and the plan derived from it.
          if (rateToRecord || deferredPlan !== undefined) writeSettings();
          // What a generation of the plan costs, and the generations the run's limits pay for
          // at that cost: the plan line's estimate and the progress bar's total.
          const staged = plugin.stagedPlan?.(space);
          const places = screenedPlaces(settings.population);
          const screenPlan = { screen: screening ?? [] };
          const cost: GenerationCost = staged
            ? { tokens: stagedTokens(staged, windowTokens, exactTokensOf(settings)), evaluations: stagedEvaluations(staged) }
            : { tokens: screenTokensPerGeneration(screenPlan, windowTokens, places, model.tokensOf()), evaluations: screenEvaluations(screenPlan, places) };
          const budgetTokens = settings.budgetTokens ?? timedBudget;
          const plannedTotal = plannedGenerations(cost, { ...engineLimitsOf(settings), budgetTokens });
          const generationsOf = (n: number) => `${n} generation${n === 1 ? "" : "s"}`;
          const inTheBudget =
            plannedTotal === undefined ? ""
            : !hasBudget(settings) ? `${generationsOf(plannedTotal)} (no budget)`
            : settings.generations !== undefined && plannedTotal === settings.generations ? `at most ${generationsOf(settings.generations)}`
            : `about ${generationsOf(plannedTotal)} in the budget`;
          // Fewer than MIN_GENERATIONS because the token budget is small for the plan (not because the user capped them).
          const short = budgetTokens !== undefined && plannedTotal !== undefined && plannedTotal < MIN_GENERATIONS && plannedTotal === plannedGenerations(cost, { budgetTokens }) && settings.generations === undefined;
          if (staged) {
            const why =
              settings.plan === undefined ? `the plan of ${basename(settings.space)} costs that much; without --space the run derives one from the budget`
              : `the budget is small for windows of ${windowTokens} tokens${staged.stages.some((st) => st.exact) ? ` and an exact stage's ${exactTokensOf(settings)} calibration tokens a candidate` : ""}`;
            log(
              `plan (${settings.plan?.from ?? `the space ${basename(settings.space)}`}): ${describeStagedPlan(staged, windowTokens, exactWindowsOf(settings))}; ${cost.tokens} tokens a generation` +
                (inTheBudget === "" ? "" : `, ${inTheBudget}`) +
                (short ? ` (fewer than ${MIN_GENERATIONS}: ${why})` : ""),
            );
          } else if (screening && settings.screen !== undefined) {
            log(
              `plan: --screen ${settings.screen}, then ${places} places on the fitness windows; at most ${cost.tokens} tokens a generation` +
                (inTheBudget === "" ? "" : `, ${inTheBudget}`) +
                (short ? ` (fewer than ${MIN_GENERATIONS}: the places on the fitness windows alone cost ${places * model.tokensOf()} tokens a generation)` : ""),
            );
          }

          // The warm start: the baseline that scores best on the fitness windows. Those are the
          // most tokens the run scores every candidate on alike (the baselines' validation
          // scores are on them already); the first stage's minibatch can be a window or two, too
          // few to rank baselines by: at 200k tokens on stories260K its two windows ranked
          // AlphaPruning first, the worst baseline on the fitness windows.
          let warmStart: WarmStart | undefined;
          if (bestStart) {
            request.onSetup?.(scoredFirst.length, setupTotal, "start");
            // A plan that judges its parent with the final protocol judges the start so too.
            const exactPlan = plugin.stagedPlan?.(space)?.stages.some((st) => st.exact) === true;
            const first: Fidelity | undefined = exactPlan ? { generation: 0, stage: 0, exact: true } : undefined;
            // Each baseline as the search would begin from it (rounded to the method's levels,
            // projected into its bounds): that is what the start's score has to judge.
            const candidates = baselineRows;
            const starts = candidates.map((row) => startAsSearched(plugin, context_, space, { label: row.name, sparsities: row.allocation }));
            const asGiven = (k: number) => candidates[k]!.validation !== null && sameAllocation(starts[k]!, candidates[k]!.allocation);
            // On the fitness windows a start that is the baseline itself keeps its validation score.
            const scored = starts.flatMap((_, k) => (first === undefined && asGiven(k) ? [] : [k]));
            const fresh = scored.length === 0 ? [] : yield* evaluator.evaluate(scored.map((k) => starts[k]!), first);
            const scores = candidates.map((row, k) => {
              const j = scored.indexOf(k);
              if (j < 0) return row.validation!;
              const f = fresh[j]!;
              return f.ok ? f.value : Infinity;
            });
            let pick = -1;
            scores.forEach((v, k) => {
              if (Number.isFinite(v) && (pick < 0 || v < scores[pick]!)) pick = k;
            });
            if (pick >= 0) {
              const chosen = candidates[pick]!;
              context_ = { ...context_, start: { label: chosen.name, sparsities: chosen.allocation } };
              warmStart = { method: chosen.name, tokens: model.tokensOf(), ...(first?.exact ? { exact: true as const } : {}), scores: Object.fromEntries(candidates.map((row, k) => [row.name, scores[k]!])) };
              log(
                `start: ${chosen.name}, the best of ${candidates.map((row, k) => `${row.name} ${scores[k]!.toFixed(4)}`).join(", ")} on the fitness windows${first?.exact ? ", pruned sequentially" : ""}`,
              );
            }
          }

          request.onSetup?.(setupTotal, setupTotal, "done");
          settingUp = false;
          const totalGenerations = plugin.method.kind === "evolve" ? Math.max(1, plannedTotal ?? DEFAULT_GENERATIONS) : 1;
          const engineRun = { ...engineLimitsOf(settings), ...(screening ? { screening } : {}) };
          const outcome = yield* runMethod(plugin, space, context_, engineRun, evaluator, phenotypeKey, savedState, (record) => {
            request.onGeneration?.(record, totalGenerations);
            // After the generation's state is saved (tests of resuming crash here).
            crashPoint("generation", record.generation + 1);
          },
          ).pipe(
            Effect.mapError((e) =>
              e instanceof WorkerError ? new WorkerError({ problem: `${e.problem}; the search stopped, and every finished generation is saved: continue it with --resume ${dir}` }) : e,
            ),
          );
          // The search's best on the fitness windows the baselines were scored on (a staged
          // search's own score is from its last minibatch).
          const [best] = yield* evaluator.evaluate([outcome.best.sparsities]);
          return { outcome, baselineRows: baselineRows.filter((row) => row.compared), bestValidation: best!.ok ? best!.value : null, warmStart };
        }),
      );
      const searchSeconds = outcome.seconds;
      const searchEvaluationSeconds = evaluationSeconds;
      const bestAllocation = toAllocation(outcome.best.sparsities, model.pruner.layout, pattern);
      writeAllocationCsv(join(dir, "best-allocation.csv"), bestAllocation);

      // Final numbers: the best allocation and the baselines, re-pruned in the final mode
      // (structured runs: cut as the prune command cuts them).
      const structured = model.structured;
      const separateFinal = !structured && settings.finalMode !== settings.mode;
      // The fitness copy is done with: a final model of another mode takes its memory.
      if (separateFinal) model.dispose();
      const onFinalStep = request.onFinalStep;
      const finalBlocks = onFinalStep ? (block: number) => onFinalStep("blocks", block + 1, probedSpec.numLayers) : undefined;
      const finalWindows = onFinalStep ? (done: number, total: number) => onFinalStep("windows", done, total) : undefined;
      const finalModel: FitnessModel = !separateFinal
        ? model
        : yield* Effect.acquireRelease(
            attempt(() => openFitnessModel({ ...setup, running: { ...running, materialise: true, ...(finalBlocks ? { onBlock: finalBlocks } : {}) } }, settings.finalMode)),
            (m) => Effect.sync(() => m.dispose()),
          );
      const testWindows = yield* attempt(() =>
        evaluationWindows({ data: settings.eval, format: settings.evalFormat as TextFormat, ...(settings.evalWindows ? { maxWindows: settings.evalWindows } : {}) }, model.tokenizer, settings.seqlen),
      );
      log(`final: ${structured ? `cutting structurally by ${settings.structured}` : `re-pruning in ${settings.finalMode} mode`}, perplexity on ${testWindows.length} windows of ${settings.eval}`);
      const measureFinal = (sparsities: BlockAllocation): Effect.Effect<{ readonly test: number; readonly achieved?: number }, EvosparseError> =>
        structured ? attemptPromise(() => structured.final(sparsities, testWindows)).pipe(Effect.map((test) => ({ test }))) : finalPerplexity(finalModel.pruner, testWindows, pattern, sparsities, finalWindows);
      const finalTotal = 2 + baselineRows.length;
      let finalDone = 0;
      const testPerplexity = (name: string, sparsities: BlockAllocation) =>
        Effect.sync(() => request.onFinal?.(finalDone, finalTotal, name)).pipe(
          Effect.andThen(measureFinal(sparsities)),
          Effect.tap(() => Effect.sync(() => request.onFinal?.(++finalDone, finalTotal, "done"))),
        );
      request.onFinal?.(finalDone, finalTotal, "dense");
      let dense: number;
      if (structured) {
        dense = yield* attemptPromise(() => structured.dense(testWindows));
      } else {
        finalModel.pruner.restoreDense();
        const denseResult = yield* attemptPromise(() => finalModel.pruner.perplexity(testWindows, finalWindows ? { onProgress: finalWindows } : {}));
        yield* checkFiniteLoss(denseResult, settings.model, settings.eval);
        dense = denseResult.ppl;
      }
      request.onFinal?.(++finalDone, finalTotal, plugin.name);
      const results: FinalResult[] = [
        {
          method: plugin.name,
          validation: bestValidation,
          ...(yield* testPerplexity(plugin.name, outcome.best.sparsities)),
          sparsities: blockSparsities(bestAllocation),
        },
      ];
      for (const row of baselineRows) {
        const allocation = toAllocation(row.allocation, finalModel.pruner.layout, pattern);
        // Each baseline's allocation beside the search's best, so the winner can be pruned whichever it is.
        writeAllocationCsv(join(dir, `${row.name}-allocation.csv`), allocation);
        results.push({
          method: row.name,
          validation: row.validation,
          ...(yield* testPerplexity(row.name, row.allocation)),
          sparsities: blockSparsities(allocation),
        });
      }
      const winner = winnerOf(results);
      if (winner !== undefined && winner !== plugin.name) log(beatenLine(plugin.name, winner, results, settings.fitness ?? "ppl"));

      const summary: SearchSummary = {
        settings,
        seed: settings.seed,
        workers,
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
        memory: memoryReport(memoryPlan),
        ...(winner !== undefined ? { winner } : {}),
        ...(warmStart ? { start: warmStart } : {}),
      };
      const title = `${plugin.name}, ${settings.structured ? `structured (${settings.structured})` : settings.metric} at ${(globalSparsity(bestAllocation) * 100).toFixed(1)}%`;
      writeSearchFiles(dir, {
        history: outcome.history,
        summary,
        // Uniform's fitness on the same windows is the line the search must get under.
        fitnessSvg: fitnessChart(outcome.history, `${title}: fitness per generation`, {
          yLabel: `validation ${settings.fitness === "kl" ? "KL per token" : measure ? measure.name : "perplexity"} (${settings.fitnessWindows} windows)`,
          references: baselineRows.flatMap((row) => (row.name === "uniform" && row.validation !== null ? [{ label: "uniform", y: row.validation }] : [])),
        }),
        allocationSvg: allocationChart(results.map((r) => ({ label: r.method, sparsities: r.sparsities })), `${title}: sparsity per block`, target),
      });
      return summary;
    }),
  );
