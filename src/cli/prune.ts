import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { TEXT_FORMATS, type TextFormat } from "../data/text-source.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import { PRUNE_METRICS, type PruneMetric } from "../prune/prune-linear.ts";
import { pruneJob, type PruneReport } from "../jobs/prune.ts";
import { parsePattern } from "./options.ts";
import { reportFailure, runCommand } from "./run.ts";
import { numberOption, SEED, SEQLEN, SPARSITY, WHOLE_POSITIVE } from "./flags.ts";

interface PruneArgs {
  model: string;
  tokenizer?: string;
  metric: PruneMetric;
  sparsity?: number;
  allocation: string;
  space?: string;
  pattern: string;
  calib: string;
  field: string;
  nsamples: number;
  seqlen?: number;
  mode: CalibrationMode;
  seed: number;
  out: string;
  overwrite: boolean;
  eval?: string;
  evalFormat: TextFormat;
  evalWindows?: number;
  valid: string;
  validWindows: number;
  batch: number;
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
    y
      .option("model", { type: "string", default: defaultModel(), describe: "Hugging Face folder, llama2.c .bin, or a folder holding one" })
      .option("tokenizer", { type: "string", describe: "tokenizer file (overrides the one beside the checkpoint)" })
      .option("metric", { choices: PRUNE_METRICS, default: "wanda" as PruneMetric })
      .option("sparsity", numberOption("sparsity", { ...SPARSITY, describe: "target global sparsity (implied by an N:M pattern)" }))
      .option("allocation", { type: "string", default: "uniform", describe: "uniform, owl, atp (or any method in plugins/ that needs no search), or an allocation CSV file" })
      .option("space", { type: "string", describe: "search-space file of the allocation method (default: its file in search-spaces/)" })
      .option("pattern", { type: "string", default: "unstructured", describe: "unstructured, or N:M (N zeros in every M consecutive inputs)" })
      .option("calib", { type: "string", default: defaultData("calibration"), describe: "calibration text (.jsonl: documents from --field)" })
      .option("field", { type: "string", default: "text" })
      .option("nsamples", numberOption("nsamples", { ...WHOLE_POSITIVE, default: 128, describe: "calibration windows" }))
      .option("seqlen", numberOption("seqlen", { ...SEQLEN, describe: "calibration and evaluation window length (default: the model's context)" }))
      .option("mode", { choices: ["sequential", "dense"] as const, default: "sequential" as CalibrationMode, describe: "calibration inputs from the already-pruned blocks (sequential) or the dense model" })
      .option("seed", numberOption("seed", { ...SEED, default: 0, describe: "seed of the calibration windows" }))
      .option("out", { type: "string", demandOption: true, describe: "output folder (new or empty)" })
      .option("overwrite", { type: "boolean", default: false, describe: "replace an existing --out folder that evosparse wrote (never one holding an input)" })
      .option("eval", { type: "string", describe: "evaluation text: report dense and pruned perplexity" })
      .option("eval-format", { choices: TEXT_FORMATS, default: "text" as TextFormat })
      .option("eval-windows", numberOption("eval-windows", { ...WHOLE_POSITIVE, describe: "score at most this many evaluation windows (default: all)" }))
      .option("valid", { type: "string", default: defaultData("validation"), describe: "validation text for methods that compare candidates (atp)" })
      .option("valid-windows", numberOption("valid-windows", { ...WHOLE_POSITIVE, default: 16, describe: "validation windows per candidate" }))
      .option("batch", numberOption("batch", { ...WHOLE_POSITIVE, default: 1, describe: "calibration windows per forward pass" }))
      .option("json", { type: "boolean", default: false, describe: "print the report as JSON" }),
  handler: async (argv: PruneArgs) => {
    const log = argv.json ? undefined : (line: string) => process.stderr.write(line + "\n");
    let pattern;
    try {
      pattern = parsePattern(argv.pattern);
    } catch (error) {
      return reportFailure(error);
    }
    const report = await runCommand(
      pruneJob({
        model: argv.model,
        metric: argv.metric,
        allocation: argv.allocation,
        pattern,
        calib: argv.calib,
        field: argv.field,
        nsamples: argv.nsamples,
        mode: argv.mode,
        seed: argv.seed,
        out: argv.out,
        overwrite: argv.overwrite,
        evalFormat: argv.evalFormat,
        valid: argv.valid,
        validWindows: argv.validWindows,
        batch: argv.batch,
        backend: argv.backend,
        ...(argv.tokenizer ? { tokenizer: argv.tokenizer } : {}),
        ...(argv.sparsity !== undefined ? { sparsity: argv.sparsity } : {}),
        ...(argv.space ? { space: argv.space } : {}),
        ...(argv.seqlen !== undefined ? { seqlen: argv.seqlen } : {}),
        ...(argv.eval ? { eval: argv.eval } : {}),
        ...(argv.evalWindows !== undefined ? { evalWindows: argv.evalWindows } : {}),
        ...(log ? { log } : {}),
      }),
    );
    if (!report) return;
    process.stdout.write(argv.json ? JSON.stringify(report) + "\n" : summary(report));
  },
};
