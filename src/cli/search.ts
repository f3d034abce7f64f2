import { basename, resolve } from "node:path";
import type { Argv } from "yargs";
import type { StructuredImportance } from "../prune/structured.ts";
import { hideBin } from "yargs/helpers";
import type { BackendChoice } from "../backend/backend.ts";
import type { TextFormat } from "../data/text-source.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import type { PruneMetric } from "../prune/prune-linear.ts";
import { beatenLine, QUEUE_TIMEOUT_SECONDS, RESUMABLE_SETTINGS, SEARCH_FLAGS, searchJob, settingFlag, type FlaggedSettings, type GivenSettings, type SearchSummary } from "../jobs/search.ts";
import { camelOf, shellWord } from "../settings/flag-table.ts";
import type { Pattern } from "../search/plugin.ts";
import { UsageError } from "../errors.ts";
import { parsePattern } from "./options.ts";
import { PASS_LABELS, startProgress, type Progress } from "./progress.ts";
import { reportFailure, runCommand } from "./run.ts";
import { givenFlags, numberOption, settingsFromArgv, tableOptions, WHOLE_POSITIVE, memoryOptions } from "./flags.ts";

export interface SearchArgs {
  memory?: number;
  streamed?: boolean;
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
  generations?: number;
  budgetEvals?: number;
  budgetTokens?: number;
  timeBudget?: number;
  patience?: number;
  seed: number;
  workers: number;
  queue?: string;
  queueTimeout?: number;
  mode: CalibrationMode;
  finalMode: CalibrationMode;
  batch: number;
  structured?: StructuredImportance;
  fusionSteps?: number;
  fitness?: string;
  start?: string;
  exactCalibration?: number;
  baselines?: string;
  out?: string;
  resume?: string;
  json: boolean;
  backend: BackendChoice;
}

/** The pruning the allocations were scored under, in words. */
const whatWasPruned = (s: SearchSummary): string => {
  const t = s.settings;
  if (t.structured) return `structured by ${t.structured} importance, ${t.sparsity} of the prunable weights removed`;
  return `${t.metric}, target sparsity ${t.pattern.kind === "nm" ? `${t.pattern.n}:${t.pattern.m}` : t.sparsity}, final pruning ${s.final.mode}`;
};

/** The comparison table printed at the end of a search: each column says what it measured. */
export const comparisonTable = (s: SearchSummary): string => {
  const t = s.settings;
  // A user's measure is saved as its file's path: its file name says which.
  const fitness = `fitness ${basename(t.fitness ?? "ppl").replace(/\.[cm]?[jt]s$/, "")} (${t.structured ? "structured" : t.mode}, ${t.fitnessWindows} windows)`;
  const test = `test ppl (${t.structured ? "structured" : s.final.mode}, ${s.final.windows} windows)`;
  // The winner by validation fitness is marked; the test column is only read, never chosen on.
  const rows = s.final.results.map(
    (r) =>
      `| ${r.method}${r.method === s.winner ? " (best validation)" : ""} | ${r.validation === null ? "failed" : r.validation.toFixed(3)} | ${r.test.toFixed(3)} | ${r.achieved === undefined ? "-" : `${(r.achieved * 100).toFixed(2)}%`} |`,
  );
  const beaten = s.winner !== undefined && s.winner !== s.settings.method ? [beatenLine(s.settings.method, s.winner, s.final.results, s.settings.fitness ?? "ppl"), ""] : [];
  const baselineFiles = s.final.results.filter((r) => r.method !== s.settings.method).map((r) => `${r.method}-allocation.csv`);
  return [
    `best ${s.final.results[0]?.method ?? s.settings.method}: ${s.best.genome} (validation ${s.settings.fitness === "kl" ? "KL per token" : s.settings.fitness === undefined || s.settings.fitness === "ppl" ? "perplexity" : basename(s.settings.fitness).replace(/\.[cm]?[jt]s$/, "")} ${s.best.fitness.toFixed(4)}; ${s.evaluations} evaluations in ${s.generations} generations, ${s.searchSeconds.toFixed(0)} s, stopped by ${s.stoppedBy})`,
    "",
    `${whatWasPruned(s)}; test perplexity on ${s.final.windows} windows of ${s.final.seqlen} from ${s.final.data} (dense ${s.final.dense.toFixed(3)})`,
    "",
    `| allocation | ${fitness} | ${test} | achieved sparsity |`,
    "| --- | ---: | ---: | ---: |",
    ...rows,
    "",
    ...beaten,
    `wrote ${s.out}: best-allocation.csv, ${baselineFiles.length > 0 ? `${baselineFiles.join(", ")}, ` : ""}history.csv, summary.json, fitness.svg, allocation.svg`,
    `reproduce the ${s.final.results[0]?.method ?? s.settings.method} row: ${s.settings.structured ? s.final.reproduce : `npx evosparse prune --from ${shellWord(s.out)} --out DIR`}`,
  ].join("\n") + "\n";
};

/** The settings of a new run, from the flags (the table in the search job names them). */
const settingsFromFlags = (argv: SearchArgs, pattern: Pattern): GivenSettings => {
  const given = settingsFromArgv(SEARCH_FLAGS, argv as unknown as Record<string, unknown>);
  // An N:M pattern implies its sparsity; the .check of the options makes sure one is given.
  return { ...given, pattern, sparsity: pattern.kind === "nm" ? pattern.n / pattern.m : (argv.sparsity ?? NaN) } as GivenSettings;
};

/** The settings whose flags were written on the command line (with --resume). */
const givenSettings = (flags: GivenSettings, given: ReadonlySet<string>): Partial<GivenSettings> => {
  const picked: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(flags)) {
    if (given.has(camelOf(SEARCH_FLAGS[key as keyof FlaggedSettings].flag))) picked[key] = value;
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
  let progress: Progress | undefined;
  let finalDone = 0;
  let finalNext: Record<string, string> = {};
  // The set-up: a bar for each pass over the dense model, then one for the baselines.
  let pass: string | undefined;
  let setupDone = -1;
  let setupNext: Record<string, string> = {};
  const endBar = () => {
    progress?.stop();
    progress = undefined;
  };
  // Lines printed while a progress line is drawn end it first.
  const log = argv.json ? undefined : (line: string) => (progress ? progress.log(line) : void process.stderr.write(line + "\n"));
  const flags = settingsFromFlags(argv, pattern);
  const summary = await runCommand(
    searchJob({
      ...(argv.resume
        ? { resume: argv.resume, given: givenSettings(flags, given) }
        : { settings: flags, ...(argv.out !== undefined ? { out: argv.out } : {}) }),
      workers: argv.workers,
      streamed: argv.streamed ?? false,
      ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
      ...(argv.queue !== undefined ? { queue: argv.queue } : {}),
      ...(argv.queueTimeout !== undefined ? { queueTimeout: argv.queueTimeout } : {}),
      backend: argv.backend,
      ...(log ? { log } : {}),
      onSetupStep: (step, done, total) => {
        // While the baselines are scored: a candidate's blocks, or a pass one of them needs
        // first (AlphaPruning's spectra), inside the baselines' bar.
        if (setupDone >= 0) {
          progress?.update(setupDone, { ...setupNext, [step]: `${done}/${total}` });
          return;
        }
        if (step === "blocks") return;
        if (step !== pass || done === 0) {
          endBar();
          progress = startProgress(PASS_LABELS[step], total, { quiet: argv.json });
          pass = step;
        }
        progress?.update(done);
        if (done === total) {
          endBar();
          pass = undefined;
        }
      },
      onSetup: (done, total, what) => {
        if (what === "done") {
          if (setupDone >= 0) progress?.update(done);
          endBar();
          setupDone = -1;
          return;
        }
        if (setupDone < 0) {
          endBar();
          progress = startProgress("baselines", total, { quiet: argv.json });
        }
        setupDone = done;
        setupNext = { next: what === "start" ? "warm start" : what };
        progress?.update(done, setupNext);
      },
      onLevels: (done, total) => {
        if (done === 0) progress = startProgress("factors", total, { quiet: argv.json });
        progress?.update(done);
        if (done === total) {
          progress?.stop();
          progress = undefined;
        }
      },
      onGeneration: (record, total) => {
        progress ??= startProgress("generation", total, { quiet: argv.json });
        // In the order a narrow terminal keeps them.
        progress.update(record.generation + 1, {
          best: record.best ?? NaN,
          ...(record.median !== undefined ? { median: record.median } : {}),
          evals: String(record.evaluations),
        });
      },
      onFinal: (done, total, what) => {
        if (done === 0) {
          progress?.stop();
          progress = startProgress("final", total, { quiet: argv.json });
        }
        finalDone = done;
        finalNext = what === "done" ? {} : { next: what === "dense" ? "dense model" : what };
        progress?.update(done, finalNext);
      },
      // Inside one measurement: its blocks re-pruned, then its test windows.
      onFinalStep: (step, done, total) => progress?.update(finalDone, { ...finalNext, [step]: `${done}/${total}` }),
    }),
  );
  progress?.stop();
  return summary;
};

/** What may change on --resume, for the help text. */
const RESUME_CHANGES = `${RESUMABLE_SETTINGS.map(settingFlag).join(", ")}, --workers, --queue and --backend`;

export const searchCommand = {
  command: "search",
  describe: "Search a per-block allocation with a method plugin, scored by validation perplexity or KL from the dense model",
  builder: (y: Argv) =>
    memoryOptions(tableOptions(y, SEARCH_FLAGS))
      .option("workers", numberOption("workers", { ...WHOLE_POSITIVE, default: 1, describe: "fitness evaluations in parallel (worker threads, each with its own model; capped at the cores and memory)" }))
      .option("queue", { type: "string", requiresArg: true, describe: "score candidates on queue workers (evosparse worker) through this Redis: redis://[user:password@]host:port[/db], rediss:// for TLS" })
      .option("queue-timeout", numberOption("queue-timeout", { ...WHOLE_POSITIVE, describe: `seconds Redis may be away before the search stops, resumable (default ${QUEUE_TIMEOUT_SECONDS})` }))
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
