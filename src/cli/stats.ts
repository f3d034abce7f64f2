import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { writeFileAtomically } from "../files.ts";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import type { Argv } from "yargs";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { openCheckpoint } from "../checkpoint/open.ts";
import { calibrationWindows } from "../data/calibration.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import { DataError, TokenizerError, UsageError } from "../errors.ts";
import { checkOutputFile } from "../output/folder.ts";
import { tokenizerFor } from "../eval/evaluate.ts";
import { layerStatistics, type LinearStatistics } from "../prune/layer-stats.ts";
import { startProgress } from "./progress.ts";
import { reportFailure, runCommand } from "./run.ts";
import { numberOption, SEED, SEQLEN, WHOLE_POSITIVE } from "./flags.ts";

interface StatsArgs {
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

const COLUMNS = ["block", "linear", "params", "outlier_share", "block_outlier_share", "block_non_outlier_ratio", "fisher_trace"];

const csvOf = (rows: readonly LinearStatistics[]): string =>
  stringify(
    rows.map((r) => [r.block, r.linear, r.params, r.outlierShare, r.blockOutlierShare, r.blockNonOutlierRatio, r.fisherTrace]),
    { header: true, columns: COLUMNS },
  );

export const statsCommand = {
  command: "stats",
  describe: "Per-block and per-linear statistics of the dense model: outlier shares (OWL, MRP) and Fisher traces (MSP)",
  builder: (y: Argv) =>
    y
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
    const rows = await runCommand(
      Effect.scoped(
        Effect.gen(function* () {
          const out = argv.out;
          if (out !== undefined) {
            yield* Effect.try({
              try: () => checkOutputFile(out, { flag: "--out", overwrite: argv.overwrite, inputs: [argv.model, argv.tokenizer, argv.calib] }),
              catch: (e) => e as UsageError | DataError,
            });
          }
          const backend = yield* initBackendEffect(argv.backend);
          const checkpoint = yield* openCheckpoint(argv.model, argv.tokenizer ? { tokenizer: argv.tokenizer } : {});
          const seqlen = argv.seqlen ?? checkpoint.spec.maxPositions;
          if (seqlen > checkpoint.spec.maxPositions) {
            return yield* new UsageError({ problem: `--seqlen ${seqlen} exceeds the model's context of ${checkpoint.spec.maxPositions}` });
          }
          const windows = yield* Effect.try({
            try: () => calibrationWindows({ source: argv.calib, field: argv.field, samples: argv.nsamples, seqlen, seed: argv.seed }, tokenizerFor(checkpoint)),
            catch: (e) => e as DataError | TokenizerError,
          });
          if (!argv.json) process.stderr.write(`backend: ${describeBackend(backend)}; ${windows.length} calibration windows of ${seqlen} tokens\n`);
          const progress = startProgress("blocks", checkpoint.spec.numLayers, { quiet: argv.json });
          const result = layerStatistics(checkpoint, windows, { metric: argv.metric, onBlock: (b) => progress.update(b + 1) });
          progress.stop();
          return result;
        }),
      ),
    );
    if (!rows) return;
    if (argv.out) {
      try {
        mkdirSync(dirname(argv.out), { recursive: true });
        writeFileAtomically(argv.out, csvOf(rows));
      } catch (error) {
        return reportFailure(error);
      }
    }
    if (argv.json) process.stdout.write(JSON.stringify(rows) + "\n");
    else process.stdout.write(csvOf(rows) + (argv.out ? `wrote ${argv.out}\n` : ""));
  },
};
