import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { PRUNE_FLAGS, pruneJob, type PruneReport, type PruneSettings, type PruneStep } from "../jobs/prune.ts";
import { PASS_LABELS, stepBars } from "./progress.ts";
import { STRUCTURED_FLAGS, structuredPruneJob, type StructuredPruneReport, type StructuredSettings, type StructuredStep } from "../jobs/structured-prune.ts";
import { STRUCTURED_IMPORTANCES, type StructuredImportance } from "../prune/structured.ts";
import { UsageError } from "../errors.ts";
import { hideBin } from "yargs/helpers";
import { protocolFromRun } from "../jobs/search.ts";
import { givenFlags, memoryOptions, settingsFromArgv, tableOptions } from "./flags.ts";
import { camelOf } from "../settings/flag-table.ts";
import { reportFailure, runCommand } from "./run.ts";

/** What each step's progress line is called. */
const STEP_LABELS: Readonly<Record<PruneStep, string>> = {
  ...PASS_LABELS,
  allocation: "allocation (blocks)",
  prune: "prune (blocks)",
  "eval pruned": "eval pruned (windows)",
  "eval dense": "eval dense (windows)",
  export: "export (blocks)",
};

const STRUCTURED_STEP_LABELS: Readonly<Record<StructuredStep, string>> = {
  ...PASS_LABELS,
  candidates: "allocation candidates",
  gradients: "gradients (blocks)",
  fusion: "fusion (steps)",
  "fusion trials": "fusion trials",
  "eval pruned": "eval pruned (windows)",
  recovery: "recovery (steps)",
  "eval recovered": "eval recovered (windows)",
  "eval dense": "eval dense (windows)",
  export: "export (blocks)",
};

/** The flags of PRUNE_FLAGS (by their camelCase names), and where and how the result goes. */
export interface PruneArgs {
  out: string;
  overwrite: boolean;
  json: boolean;
  backend: BackendChoice;
  structured?: StructuredImportance;
  resume: boolean;
  from?: string;
  memory?: number;
  streamed: boolean;
}

const structuredSummary = (r: StructuredPruneReport): string => {
  const lines = [
    `pruned ${r.model} structurally by ${r.structured} importance (allocation ${r.allocation}${r.chosen ? ` ${r.chosen}` : ""}): ` +
      `${r.parameters.before} -> ${r.parameters.after} prunable weights (removed ${r.parameters.removed.toFixed(6)}, requested ${r.target})`,
    ...r.blocks.map((b) => `  block ${b.block}: ${b.numHeads} heads, ${b.numKvHeads} key/value heads, intermediate size ${b.intermediateSize}`),
  ];
  if (r.fusion) {
    lines.push(`fusion: ${r.fusion.chosen}; fine/coarse weights per block (heads | channels): ` + r.fusion.weights.map((w) => `${w.heads.fine.toFixed(2)}/${w.heads.coarse.toFixed(2)} | ${w.channels.fine.toFixed(2)}/${w.channels.coarse.toFixed(2)}`).join(", "));
  }
  if (r.recovery) {
    const rc = r.recovery;
    lines.push(
      `LoRA recovery: ${rc.steps} steps (rank ${rc.rank}, alpha ${rc.alpha}, lr ${rc.lr}), loss ${rc.firstLoss.toFixed(4)} -> ${rc.lastLoss.toFixed(4)}` +
        (rc.before !== undefined && rc.after !== undefined ? `; perplexity ${rc.before.toFixed(4)} -> ${rc.after.toFixed(4)}` : ""),
    );
  }
  if (r.evaluation) {
    lines.push(`perplexity at seqlen ${r.evaluation.seqlen} on ${r.evaluation.data}: dense ${r.evaluation.dense.toFixed(4)}, pruned ${r.evaluation.pruned.toFixed(4)}`);
  }
  lines.push(`wrote ${r.out} (model, allocation.csv, report.json)`);
  return lines.join("\n") + "\n";
};

/** Structured pruning: the prune settings, and the structured ones (a run's, under those given here). */
const runStructured = async (importance: StructuredImportance, settings: PruneSettings, argv: PruneArgs, fromRun: Partial<StructuredSettings> = {}) => {
  const structured = { ...fromRun, ...settingsFromArgv(STRUCTURED_FLAGS, argv as unknown as Record<string, unknown>) } as StructuredSettings;
  const bars = stepBars(STRUCTURED_STEP_LABELS, argv.json);
  const log = bars.log;
  const report = await runCommand(
    structuredPruneJob({
      ...structured,
      importance,
      settings,
      out: argv.out,
      overwrite: argv.overwrite,
      resume: argv.resume,
      backend: argv.backend,
      streamed: argv.streamed,
      ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
      ...(log ? { log } : {}),
      onProgress: bars.onProgress,
    }),
  );
  bars.stop();
  if (!report) return;
  process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : structuredSummary(report));
};

const summary = (r: PruneReport): string => {
  const lines = [
    `pruned ${r.model} with ${r.metric} (${r.mode}, ${r.pattern}, allocation ${r.allocation}${r.chosen ? ` ${r.chosen}` : ""})`,
    `sparsity: requested ${r.requestedSparsity.toFixed(6)}, achieved ${r.achievedSparsity.toFixed(6)}; weights written as ${r.dtype}`,
  ];
  if (r.evaluation) {
    lines.push(`perplexity at seqlen ${r.evaluation.seqlen} on ${r.evaluation.data}: dense ${r.evaluation.dense.toFixed(4)}, pruned ${r.evaluation.pruned.toFixed(4)}`);
  }
  const t = r.timings;
  lines.push(
    `seconds: forward ${t.forward.toFixed(2)}, statistics ${t.statistics.toFixed(2)}, scoring ${t.scoring.toFixed(2)}, masking ${t.masking.toFixed(2)}, ` +
      `evaluation ${t.evaluation.toFixed(2)}, allocation ${t.allocation.toFixed(2)}, export ${t.export.toFixed(2)}`,
  );
  lines.push(`wrote ${r.out} (model, allocation.csv, report.json)`);
  return lines.join("\n") + "\n";
};

/** The settings whose flags were written on the command line. */
const explicitSettings = (settings: PruneSettings, given: ReadonlySet<string>): Partial<PruneSettings> =>
  Object.fromEntries(Object.entries(settings).filter(([key]) => given.has(camelOf(PRUNE_FLAGS[key as keyof PruneSettings].flag)))) as Partial<PruneSettings>;

export const pruneCommand = {
  command: "prune",
  describe: "Prune a model with an allocation and write it as a Hugging Face folder",
  builder: (y: Argv) =>
    memoryOptions(tableOptions(tableOptions(y, PRUNE_FLAGS), STRUCTURED_FLAGS))
      .option("out", { type: "string", demandOption: true, describe: "output folder (new or empty)" })
      .option("overwrite", { type: "boolean", default: false, describe: "replace an existing --out folder that evosparse wrote (never one holding an input)" })
      .option("json", { type: "boolean", default: false, describe: "print the report as JSON" })
      .option("structured", {
        choices: STRUCTURED_IMPORTANCES,
        describe: "remove whole key/value head groups and MLP channels, scored by this importance (--sparsity: the fraction of prunable weights)",
      })
      .option("resume", { type: "boolean", default: false, describe: "--structured: continue the LoRA recovery from OUT.recovery" })
      .option("from", {
        type: "string",
        requiresArg: true,
        describe: "a search's run folder: prune its best allocation with the search's final protocol (model, calibration, mode, test text and windows), so the reported test perplexity is reproduced; flags given override",
      }),
  handler: async (argv: PruneArgs) => {
    let settings: PruneSettings;
    let importance = argv.structured;
    let structuredFromRun: Partial<StructuredSettings> = {};
    try {
      settings = settingsFromArgv(PRUNE_FLAGS, argv as unknown as Record<string, unknown>) as PruneSettings;
      // --from RUN: the search's final protocol (a structured run's importance and settings
      // too), under the flags written on the command line.
      if (argv.from !== undefined) {
        const protocol = protocolFromRun(argv.from);
        settings = { ...settings, ...protocol.prune, ...explicitSettings(settings, givenFlags(hideBin(process.argv))) };
        if (protocol.structured) {
          importance ??= protocol.importance;
          structuredFromRun = protocol.settings;
        }
      }
    } catch (error) {
      return reportFailure(error);
    }
    if (importance) return runStructured(importance, settings, argv, structuredFromRun);
    const misplaced = Object.values(STRUCTURED_FLAGS).find((f) => (argv as unknown as Record<string, unknown>)[camelOf(f.flag)] !== undefined);
    if (misplaced) return reportFailure(new UsageError({ problem: `--${misplaced.flag} applies to structured pruning: give --structured KIND with it` }));
    if (argv.resume) return reportFailure(new UsageError({ problem: "--resume continues a structured prune's LoRA recovery: give --structured KIND with it" }));
    const bars = stepBars(STEP_LABELS, argv.json);
    const log = bars.log;
    const report = await runCommand(
      pruneJob({
        ...settings,
        out: argv.out,
        overwrite: argv.overwrite,
        backend: argv.backend,
        streamed: argv.streamed,
        ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
        ...(log ? { log } : {}),
        onProgress: bars.onProgress,
      }),
    );
    bars.stop();
    if (!report) return;
    process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : summary(report));
  },
};
