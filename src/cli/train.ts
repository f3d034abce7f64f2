import type { Argv } from "yargs";
import { type BackendChoice } from "../backend/backend.ts";
import { defaultData } from "../defaults.ts";
import { UsageError } from "../errors.ts";
import { BYTE_LEVEL_VOCAB_SIZE } from "../tokenizer/byte-level.ts";
import { numberOption, SEED, SEQLEN, WHOLE_NON_NEGATIVE, WHOLE_POSITIVE } from "./flags.ts";
import { train } from "../jobs/train.ts";
import { startProgress, type Progress } from "./progress.ts";
import { reportFailure } from "./run.ts";

export interface TrainArgs {
  data: string;
  validation: string;
  out: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  context: number;
  steps: number;
  batch: number;
  seqlen: number;
  lr: number;
  warmup: number;
  weightDecay: number;
  seed: number;
  evalEvery: number;
  evalWindows: number;
  vocab: number;
  workers: number;
  checkpointEvery: number;
  resume: boolean;
  overwrite: boolean;
  backend: BackendChoice;
}

export const trainCommand = {
  command: "train",
  describe: "Train a small LLaMA-architecture model with a byte-level tokenizer on a text (defaults: the embedded model's recipe)",
  builder: (y: Argv) =>
    y
      .option("data", { type: "string", default: defaultData("train"), describe: "training text (a file, or brown:<part>)" })
      .option("validation", { type: "string", default: defaultData("validation"), describe: "validation text for the loss curve" })
      .option("out", { type: "string", demandOption: true, describe: "output model folder (Hugging Face layout)" })
      .option("dim", numberOption("dim", { ...WHOLE_POSITIVE, default: 128, describe: "hidden size" }))
      .option("layers", numberOption("layers", { ...WHOLE_POSITIVE, default: 8, describe: "decoder blocks" }))
      .option("heads", numberOption("heads", { ...WHOLE_POSITIVE, default: 4, describe: "attention heads" }))
      .option("kv-heads", numberOption("kv-heads", { ...WHOLE_POSITIVE, default: 2, describe: "key/value heads (grouped-query attention)" }))
      .option("ffn", numberOption("ffn", { ...WHOLE_POSITIVE, default: 320, describe: "SwiGLU intermediate size" }))
      .option("context", numberOption("context", { ...SEQLEN, default: 256, describe: "maximum context the model declares" }))
      .option("steps", numberOption("steps", { ...WHOLE_POSITIVE, default: 1100, describe: "optimizer steps" }))
      .option("batch", numberOption("batch", { ...WHOLE_POSITIVE, default: 8, describe: "windows per step" }))
      .option("seqlen", numberOption("seqlen", { ...SEQLEN, default: 256, describe: "training window length in tokens" }))
      .option("lr", numberOption("lr", { min: 0, minExclusive: true, default: 3e-3, describe: "peak learning rate" }))
      .option("warmup", numberOption("warmup", { ...WHOLE_NON_NEGATIVE, default: 50, describe: "warmup steps" }))
      .option("weight-decay", numberOption("weight-decay", { min: 0, default: 0.1, describe: "AdamW weight decay of the matrices" }))
      .option("seed", numberOption("seed", { ...SEED, default: 0, describe: "seed of the initial weights and the batches" }))
      .option("eval-every", numberOption("eval-every", { ...WHOLE_NON_NEGATIVE, default: 100, describe: "steps between validation losses (0: never)" }))
      .option("eval-windows", numberOption("eval-windows", { ...WHOLE_POSITIVE, default: 16, describe: "validation windows per evaluation" }))
      .option("vocab", numberOption("vocab", { whole: true, min: BYTE_LEVEL_VOCAB_SIZE, default: 1024, describe: `tokenizer size: ${BYTE_LEVEL_VOCAB_SIZE} for raw bytes, more for a byte-level BPE learned from --data` }))
      .option("workers", numberOption("workers", { ...WHOLE_POSITIVE, default: 2, describe: "data-parallel worker threads (at most one per core)" }))
      .option("checkpoint-every", numberOption("checkpoint-every", { ...WHOLE_NON_NEGATIVE, default: 100, describe: "steps between resumable checkpoints (in OUT.checkpoint; 0: none)" }))
      .option("resume", { type: "boolean", default: false, describe: "continue from OUT.checkpoint if it exists" })
      .option("overwrite", { type: "boolean", default: false, describe: "replace an existing --out folder that evosparse wrote" }),
  handler: async (argv: TrainArgs) => {
    let progress: Progress | undefined;
    try {
      if (argv.dim % argv.heads !== 0) throw new UsageError({ problem: `--dim ${argv.dim} is not divisible by --heads ${argv.heads}` });
      if (argv.heads % argv.kvHeads !== 0) throw new UsageError({ problem: `--heads ${argv.heads} is not divisible by --kv-heads ${argv.kvHeads}` });
      if (argv.seqlen > argv.context) throw new UsageError({ problem: `--seqlen ${argv.seqlen} exceeds --context ${argv.context}` });
      let lastVal: number | undefined;
      const result = await train({
        data: argv.data,
        validation: argv.validation,
        out: argv.out,
        size: {
          hiddenSize: argv.dim,
          numLayers: argv.layers,
          numHeads: argv.heads,
          numKvHeads: argv.kvHeads,
          intermediateSize: argv.ffn,
          contextLength: argv.context,
        },
        steps: argv.steps,
        batch: argv.batch,
        seqlen: argv.seqlen,
        lr: argv.lr,
        warmupSteps: argv.warmup,
        weightDecay: argv.weightDecay,
        seed: argv.seed,
        evalEvery: argv.evalEvery,
        evalWindows: argv.evalWindows,
        vocabSize: argv.vocab,
        workers: argv.workers,
        checkpointEvery: argv.checkpointEvery,
        resume: argv.resume,
        overwrite: argv.overwrite,
        backend: argv.backend,
        command: `evosparse ${process.argv.slice(2).join(" ")}`,
        onStart: ({ backend, parameters, trainTokens, workers, vocabSize, resumedAt }) => {
          process.stderr.write(
            `backend: ${backend} x ${workers} workers; ${parameters} parameters; vocabulary ${vocabSize}; ${trainTokens} training tokens` +
              (resumedAt > 0 ? `; resuming at step ${resumedAt}` : "") +
              "\n",
          );
          progress = startProgress("train", argv.steps);
          progress.update(resumedAt);
        },
        onStep: (s) => {
          if (s.valLoss !== undefined) lastVal = s.valLoss;
          progress?.update(s.step, { loss: s.trainLoss, ...(lastVal !== undefined ? { val: lastVal } : {}), lr: s.lr });
        },
      });
      progress?.stop();
      process.stdout.write(
        `trained ${result.parameters} parameters for ${argv.steps} steps in ${result.seconds.toFixed(0)} s on ${result.backend}: ` +
          `train loss ${result.finalTrainLoss.toFixed(4)}` +
          (result.finalValLoss !== undefined ? `, validation loss ${result.finalValLoss.toFixed(4)}` : "") +
          (result.finalValPplPerByte !== undefined ? ` (perplexity per byte ${result.finalValPplPerByte.toFixed(3)})` : "") +
          `\nwrote ${argv.out}\n`,
      );
    } catch (e) {
      progress?.stop();
      reportFailure(e);
    }
  },
};
