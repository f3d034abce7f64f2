import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { PRUNE_FLAGS, pruneJob, type PruneReport, type PruneSettings } from "../jobs/prune.ts";
import { structuredPruneJob, type StructuredPruneReport } from "../jobs/structured-prune.ts";
import { GROUP_IMPORTANCE_KINDS, type GroupImportanceKind } from "../prune/group-importance.ts";
import { UsageError } from "../errors.ts";
import { settingsFromArgv, tableOptions } from "./flags.ts";
import { reportFailure, runCommand } from "./run.ts";

/** The flags of PRUNE_FLAGS (by their camelCase names), and where and how the result goes. */
interface PruneArgs {
  out: string;
  overwrite: boolean;
  json: boolean;
  backend: BackendChoice;
  structured?: GroupImportanceKind;
}

const structuredSummary = (r: StructuredPruneReport): string => {
  const lines = [
    `pruned ${r.model} structurally by ${r.structured} importance: ${r.parameters.before} -> ${r.parameters.after} prunable weights ` +
      `(removed ${r.parameters.removed.toFixed(6)}, requested ${r.target})`,
    ...r.blocks.map((b) => `  block ${b.block}: ${b.numHeads} heads, ${b.numKvHeads} key/value heads, intermediate size ${b.intermediateSize}`),
  ];
  if (r.evaluation) {
    lines.push(`perplexity at seqlen ${r.evaluation.seqlen} on ${r.evaluation.data}: dense ${r.evaluation.dense.toFixed(4)}, pruned ${r.evaluation.pruned.toFixed(4)}`);
  }
  lines.push(`wrote ${r.out} (model, report.json)`);
  return lines.join("\n") + "\n";
};

/** Structured pruning: the settings it takes from the prune flags, refusing those it cannot honour. */
const runStructured = async (importance: GroupImportanceKind, settings: PruneSettings, argv: PruneArgs, log?: (line: string) => void) => {
  if (settings.pattern.kind !== "unstructured") return reportFailure(new UsageError({ problem: "--structured removes whole groups: it takes no --pattern" }));
  if (settings.allocation !== "uniform") {
    return reportFailure(new UsageError({ problem: `--structured removes the same fraction from every block: it takes --allocation uniform, not ${settings.allocation}` }));
  }
  if (settings.sparsity === undefined) return reportFailure(new UsageError({ problem: "--structured needs --sparsity (the fraction of prunable weights to remove)" }));
  const report = await runCommand(
    structuredPruneJob({
      model: settings.model,
      ...(settings.tokenizer ? { tokenizer: settings.tokenizer } : {}),
      importance,
      sparsity: settings.sparsity,
      calib: settings.calib,
      field: settings.field,
      nsamples: settings.nsamples,
      seed: settings.seed,
      ...(settings.seqlen ? { seqlen: settings.seqlen } : {}),
      ...(settings.eval ? { eval: settings.eval } : {}),
      ...(settings.evalFormat ? { evalFormat: settings.evalFormat } : {}),
      ...(settings.evalWindows ? { evalWindows: settings.evalWindows } : {}),
      ...(settings.batch ? { batch: settings.batch } : {}),
      out: argv.out,
      overwrite: argv.overwrite,
      backend: argv.backend,
      ...(log ? { log } : {}),
    }),
  );
  if (!report) return;
  process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : structuredSummary(report));
};

const summary = (r: PruneReport): string => {
  const lines = [
    `pruned ${r.model} with ${r.metric} (${r.mode}, ${r.pattern}, allocation ${r.allocation}${r.chosen ? ` ${r.chosen}` : ""})`,
    `sparsity: requested ${r.requestedSparsity.toFixed(6)}, achieved ${r.achievedSparsity.toFixed(6)}`,
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

export const pruneCommand = {
  command: "prune",
  describe: "Prune a model with an allocation and write it as a Hugging Face folder",
  builder: (y: Argv) =>
    tableOptions(y, PRUNE_FLAGS)
      .option("out", { type: "string", demandOption: true, describe: "output folder (new or empty)" })
      .option("overwrite", { type: "boolean", default: false, describe: "replace an existing --out folder that evosparse wrote (never one holding an input)" })
      .option("json", { type: "boolean", default: false, describe: "print the report as JSON" })
      .option("structured", {
        choices: GROUP_IMPORTANCE_KINDS,
        describe: "remove whole key/value head groups and MLP channels, scored by this importance (--sparsity: the fraction of prunable weights)",
      }),
  handler: async (argv: PruneArgs) => {
    const log = argv.json ? undefined : (line: string) => process.stderr.write(line + "\n");
    let settings: PruneSettings;
    try {
      settings = settingsFromArgv(PRUNE_FLAGS, argv as unknown as Record<string, unknown>) as PruneSettings;
    } catch (error) {
      return reportFailure(error);
    }
    if (argv.structured) return runStructured(argv.structured, settings, argv, log);
    const report = await runCommand(
      pruneJob({ ...settings, out: argv.out, overwrite: argv.overwrite, backend: argv.backend, ...(log ? { log } : {}) }),
    );
    if (!report) return;
    process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : summary(report));
  },
};
