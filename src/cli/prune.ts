import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { PRUNE_FLAGS, pruneJob, type PruneReport, type PruneSettings } from "../jobs/prune.ts";
import { settingsFromArgv, tableOptions } from "./flags.ts";
import { reportFailure, runCommand } from "./run.ts";

/** The flags of PRUNE_FLAGS (by their camelCase names), and where and how the result goes. */
interface PruneArgs {
  out: string;
  overwrite: boolean;
  json: boolean;
  backend: BackendChoice;
}

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
      .option("json", { type: "boolean", default: false, describe: "print the report as JSON" }),
  handler: async (argv: PruneArgs) => {
    const log = argv.json ? undefined : (line: string) => process.stderr.write(line + "\n");
    let settings: PruneSettings;
    try {
      settings = settingsFromArgv(PRUNE_FLAGS, argv as unknown as Record<string, unknown>) as PruneSettings;
    } catch (error) {
      return reportFailure(error);
    }
    const report = await runCommand(
      pruneJob({ ...settings, out: argv.out, overwrite: argv.overwrite, backend: argv.backend, ...(log ? { log } : {}) }),
    );
    if (!report) return;
    process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : summary(report));
  },
};
