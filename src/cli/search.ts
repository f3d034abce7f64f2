import { resolve } from "node:path";
import type { Argv } from "yargs";
import { hideBin } from "yargs/helpers";
import type { BackendChoice } from "../backend/backend.ts";
import { TEXT_FORMATS, type TextFormat } from "../data/text-source.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import { PRUNE_METRICS, type PruneMetric } from "../prune/prune-linear.ts";
import { availablePlugins } from "../search/registry.ts";
import { RESUMABLE_SETTINGS, searchJob, settingFlag, type GivenSettings, type SearchSummary } from "../jobs/search.ts";
import type { Pattern } from "../search/plugin.ts";
import { UsageError } from "../errors.ts";
import { parsePattern } from "./options.ts";
import { startProgress, type Progress } from "./progress.ts";
import { reportFailure, runCommand } from "./run.ts";
import { givenFlags, numberOption, SEED, SEQLEN, SPARSITY, WHOLE_POSITIVE } from "./flags.ts";

export interface SearchArgs {
  method: string;
  space?: string;
  sparsity?: number;
  metric: PruneMetric;
  pattern: string;
  model: string;
  tokenizer?: string;
  calib: string;
  field: string;
  nsamples: number;
  calibSeed: number;
  seqlen?: number;
  fitnessData: string;
  fitnessWindows: number;
  eval: string;
  evalFormat: TextFormat;
  evalWindows?: number;
  population: number;
  generations: number;
  budgetEvals?: number;
  timeBudget?: number;
  patience?: number;
  seed: number;
  workers: number;
  mode: CalibrationMode;
  finalMode: CalibrationMode;
  batch: number;
  out?: string;
  resume?: string;
  json: boolean;
  backend: BackendChoice;
}

/** The comparison table printed at the end of a search. */
export const comparisonTable = (s: SearchSummary): string => {
  const rows = s.final.results.map((r) => `| ${r.method} | ${r.validation === null ? "failed" : r.validation.toFixed(3)} | ${r.test.toFixed(3)} |`);
  return [
    `best ${s.settings.method}: ${s.best.genome} (validation perplexity ${s.best.fitness.toFixed(4)}; ${s.evaluations} evaluations in ${s.generations} generations, ${s.searchSeconds.toFixed(0)} s, stopped by ${s.stoppedBy})`,
    "",
    `${s.settings.metric}, target sparsity ${s.settings.pattern.kind === "nm" ? `${s.settings.pattern.n}:${s.settings.pattern.m}` : s.settings.sparsity}, final pruning ${s.final.mode}; test perplexity on ${s.final.windows} windows of ${s.final.seqlen} from ${s.final.data} (dense ${s.final.dense.toFixed(3)})`,
    "",
    "| allocation | validation ppl | test ppl |",
    "| --- | ---: | ---: |",
    ...rows,
    "",
    `wrote ${s.out}: best-allocation.csv, history.csv, summary.json, fitness.svg, allocation.svg`,
    `reproduce the ${s.settings.method} row: ${s.final.reproduce}`,
  ].join("\n") + "\n";
};

/** The settings of a new run, from the flags. */
const settingsFromFlags = (argv: SearchArgs, pattern: Pattern): GivenSettings => ({
  method: argv.method,
  ...(argv.space ? { space: argv.space } : {}),
  sparsity: pattern.kind === "nm" ? pattern.n / pattern.m : (argv.sparsity ?? NaN),
  metric: argv.metric,
  pattern,
  model: argv.model,
  ...(argv.tokenizer ? { tokenizer: argv.tokenizer } : {}),
  calib: argv.calib,
  field: argv.field,
  nsamples: argv.nsamples,
  calibSeed: argv.calibSeed,
  ...(argv.seqlen !== undefined ? { seqlen: argv.seqlen } : {}),
  fitnessData: argv.fitnessData,
  fitnessWindows: argv.fitnessWindows,
  eval: argv.eval,
  evalFormat: argv.evalFormat,
  ...(argv.evalWindows !== undefined ? { evalWindows: argv.evalWindows } : {}),
  population: argv.population,
  generations: argv.generations,
  ...(argv.budgetEvals !== undefined ? { budgetEvals: argv.budgetEvals } : {}),
  ...(argv.timeBudget !== undefined ? { timeBudgetSeconds: argv.timeBudget } : {}),
  ...(argv.patience !== undefined ? { patience: argv.patience } : {}),
  seed: argv.seed,
  mode: argv.mode,
  finalMode: argv.finalMode,
  batch: argv.batch,
});

/** Flags given with --resume, as settings (a flag's name is its setting's, but for --time-budget). */
const givenSettings = (flags: GivenSettings, given: ReadonlySet<string>): Partial<GivenSettings> => {
  const picked: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(flags)) {
    const flag = key === "timeBudgetSeconds" ? "timeBudget" : key;
    if (given.has(flag)) picked[key] = value;
  }
  return picked as Partial<GivenSettings>;
};

export const runSearch = async (argv: SearchArgs, given: ReadonlySet<string> = new Set()): Promise<SearchSummary | undefined> => {
  let pattern;
  try {
    pattern = parsePattern(argv.pattern);
    if (argv.resume && argv.out && resolve(argv.out) !== resolve(argv.resume)) {
      throw new UsageError({ problem: `--out ${argv.out} and --resume ${argv.resume} name two folders: a resumed run stays in its own folder` });
    }
  } catch (error) {
    reportFailure(error);
    return undefined;
  }
  const log = argv.json ? undefined : (line: string) => process.stderr.write(line + "\n");
  let progress: Progress | undefined;
  const flags = settingsFromFlags(argv, pattern);
  const summary = await runCommand(
    searchJob({
      ...(argv.resume
        ? { resume: argv.resume, given: givenSettings(flags, given) }
        : { settings: flags, ...(argv.out ? { out: argv.out } : {}) }),
      workers: argv.workers,
      backend: argv.backend,
      ...(log ? { log } : {}),
      onGeneration: (record, total) => {
        progress ??= startProgress("generations", total, { quiet: argv.json });
        progress.update(record.generation + 1, {
          evals: String(record.evaluations),
          best: record.best ?? NaN,
          ...(record.median !== undefined ? { median: record.median } : {}),
        });
      },
    }),
  );
  progress?.stop();
  return summary;
};

/** What may change on --resume, for the help text. */
const RESUME_CHANGES = `${RESUMABLE_SETTINGS.map(settingFlag).join(", ")}, --workers and --backend`;

export const searchCommand = {
  command: "search",
  describe: "Search a per-block allocation with a method plugin, scored by validation perplexity",
  builder: (y: Argv) =>
    y
      .option("method", { type: "string", default: "dsa", describe: `allocation method: ${availablePlugins().join(", ")}` })
      .option("space", { type: "string", describe: "search-space file (default: the method's file in search-spaces/)" })
      .option("sparsity", numberOption("sparsity", { ...SPARSITY, describe: "target global sparsity (implied by an N:M pattern)" }))
      .option("metric", { choices: PRUNE_METRICS, default: "wanda" as PruneMetric })
      .option("pattern", { type: "string", default: "unstructured", describe: "unstructured, or N:M" })
      .option("model", { type: "string", default: defaultModel() })
      .option("tokenizer", { type: "string", describe: "tokenizer file (overrides the one beside the checkpoint)" })
      .option("calib", { type: "string", default: defaultData("calibration"), describe: "calibration text (.jsonl: documents from --field)" })
      .option("field", { type: "string", default: "text" })
      .option("nsamples", numberOption("nsamples", { ...WHOLE_POSITIVE, default: 128, describe: "calibration windows" }))
      .option("calib-seed", numberOption("calib-seed", { ...SEED, default: 0, describe: "seed of the calibration windows (the prune command's --seed)" }))
      .option("seqlen", numberOption("seqlen", { ...SEQLEN, describe: "window length of calibration, fitness and test (default: the model's context)" }))
      .option("fitness-data", { type: "string", default: defaultData("validation"), describe: "validation text the fitness perplexity is measured on" })
      .option("fitness-windows", numberOption("fitness-windows", { ...WHOLE_POSITIVE, default: 8, describe: "validation windows per fitness evaluation" }))
      .option("eval", { type: "string", default: defaultData("test"), describe: "test text for the final report" })
      .option("eval-format", { choices: TEXT_FORMATS, default: "text" as TextFormat })
      .option("eval-windows", numberOption("eval-windows", { ...WHOLE_POSITIVE, describe: "at most this many test windows (default: all)" }))
      .option("population", numberOption("population", { ...WHOLE_POSITIVE, default: 16, describe: "individuals per generation" }))
      .option("generations", numberOption("generations", { ...WHOLE_POSITIVE, default: 10, describe: "generations at most" }))
      .option("budget-evals", numberOption("budget-evals", { ...WHOLE_POSITIVE, describe: "stop after this many fitness evaluations" }))
      .option("time-budget", numberOption("time-budget", { min: 0, minExclusive: true, describe: "stop after the generation that passes this many seconds" }))
      .option("patience", numberOption("patience", { ...WHOLE_POSITIVE, describe: "stop after this many generations without improvement" }))
      .option("seed", numberOption("seed", { ...SEED, default: 0, describe: "seed of the search" }))
      .option("workers", numberOption("workers", { ...WHOLE_POSITIVE, default: 1, describe: "fitness evaluations in parallel (worker threads, each with its own model; capped at the cores and memory)" }))
      .option("mode", { choices: ["dense", "sequential"] as const, default: "dense" as CalibrationMode, describe: "calibration mode of fitness evaluations" })
      .option("final-mode", { choices: ["dense", "sequential"] as const, default: "sequential" as CalibrationMode, describe: "calibration mode of the final re-pruning" })
      .option("batch", numberOption("batch", { ...WHOLE_POSITIVE, default: 4, describe: "calibration windows per forward pass" }))
      .option("out", { type: "string", describe: "run folder (default: results/<method>-<timestamp>)" })
      .option("resume", { type: "string", describe: `continue the run in this folder with its saved settings; of the settings only ${RESUME_CHANGES} may change` })
      .option("json", { type: "boolean", default: false, describe: "print summary.json" })
      .check((argv) => {
        if (!argv.resume && argv.sparsity === undefined && !/^\d+:\d+$/.test(String(argv.pattern))) throw new Error("--sparsity is required for unstructured pruning");
        return true;
      }),
  handler: async (argv: SearchArgs) => {
    const summary = await runSearch(argv, givenFlags(hideBin(process.argv)));
    if (!summary) return;
    process.stdout.write(argv.json ? JSON.stringify(summary) + "\n" : comparisonTable(summary));
  },
};
