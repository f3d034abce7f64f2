import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import { statsCsv, statsJob } from "../jobs/stats.ts";
import { numberOption, SEED, SEQLEN, WHOLE_POSITIVE, memoryOptions } from "./flags.ts";
import { PASS_LABELS, stepBars } from "./progress.ts";
import { runCommand } from "./run.ts";

export interface StatsArgs {
  memory?: number;
  streamed: boolean;
  model: string;
  tokenizer?: string;
  calib: string;
  field: string;
  nsamples: number;
  seqlen?: number;
  seed: number;
  metric: "wanda" | "magnitude";
  out?: string;
  overwrite: boolean;
  json: boolean;
  backend: BackendChoice;
}


export const statsCommand = {
  command: "stats",
  describe: "Per-block and per-linear statistics of the dense model: outlier shares (OWL, MRP) and Fisher traces (MSP)",
  builder: (y: Argv) =>
    memoryOptions(y)
      .option("model", { type: "string", default: defaultModel(), describe: "Hugging Face folder, llama2.c .bin, or a folder holding one" })
      .option("tokenizer", { type: "string", describe: "tokenizer file (overrides the one beside the checkpoint)" })
      .option("calib", { type: "string", default: defaultData("calibration"), describe: "calibration text (.jsonl: documents from --field)" })
      .option("field", { type: "string", default: "text" })
      .option("nsamples", numberOption("nsamples", { ...WHOLE_POSITIVE, default: 128, describe: "calibration windows" }))
      .option("seqlen", numberOption("seqlen", { ...SEQLEN, describe: "calibration window length (default: the model's context)" }))
      .option("seed", numberOption("seed", { ...SEED, default: 0, describe: "seed of the calibration windows" }))
      .option("metric", { choices: ["wanda", "magnitude"] as const, default: "wanda" as const, describe: "element scores the outlier shares are computed on" })
      .option("out", { type: "string", describe: "write the table as CSV (a new file)" })
      .option("overwrite", { type: "boolean", default: false, describe: "replace an existing --out file (never an input)" })
      .option("json", { type: "boolean", default: false }),
  handler: async (argv: StatsArgs) => {
    const bars = stepBars(PASS_LABELS, argv.json);
    const rows = await runCommand(
      statsJob({
        model: argv.model,
        ...(argv.tokenizer ? { tokenizer: argv.tokenizer } : {}),
        calib: argv.calib,
        field: argv.field,
        nsamples: argv.nsamples,
        ...(argv.seqlen !== undefined ? { seqlen: argv.seqlen } : {}),
        seed: argv.seed,
        metric: argv.metric,
        streamed: argv.streamed,
        ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
        ...(argv.out !== undefined ? { out: argv.out } : {}),
        overwrite: argv.overwrite,
        backend: argv.backend,
        ...(bars.log ? { log: bars.log } : {}),
        onPass: bars.onProgress,
      }),
    );
    bars.stop();
    if (!rows) return;
    if (argv.json) process.stdout.write(JSON.stringify(rows) + "\n");
    else process.stdout.write(statsCsv(rows) + (argv.out ? `wrote ${argv.out}\n` : ""));
  },
};
