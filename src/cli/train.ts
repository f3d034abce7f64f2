import type { Argv } from "yargs";
import { type BackendChoice } from "../backend/backend.ts";
import { defaultData } from "../defaults.ts";
import { UsageError } from "../errors.ts";
import { train } from "../train/train.ts";
import { startProgress, type Progress } from "./progress.ts";
import { reportFailure } from "./run.ts";

interface TrainArgs {
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
      .option("dim", { type: "number", default: 128, describe: "hidden size" })
      .option("layers", { type: "number", default: 8, describe: "decoder blocks" })
      .option("heads", { type: "number", default: 4, describe: "attention heads" })
      .option("kv-heads", { type: "number", default: 2, describe: "key/value heads (grouped-query attention)" })
      .option("ffn", { type: "number", default: 320, describe: "SwiGLU intermediate size" })
      .option("context", { type: "number", default: 256, describe: "maximum context the model declares" })
      .option("steps", { type: "number", default: 1100 })
      .option("batch", { type: "number", default: 8, describe: "windows per step" })
      .option("seqlen", { type: "number", default: 256, describe: "training window length in bytes" })
      .option("lr", { type: "number", default: 3e-3, describe: "peak learning rate" })
      .option("warmup", { type: "number", default: 50, describe: "warmup steps" })
      .option("weight-decay", { type: "number", default: 0.1 })
      .option("seed", { type: "number", default: 0 })
      .option("eval-every", { type: "number", default: 100, describe: "steps between validation losses (0: never)" })
      .option("eval-windows", { type: "number", default: 16, describe: "validation windows per evaluation" })
      .option("vocab", { type: "number", default: 1024, describe: "tokenizer size: 258 for raw bytes, more for a byte-level BPE learned from --data" })
      .option("workers", { type: "number", default: 2, describe: "data-parallel worker threads" })
      .option("checkpoint-every", { type: "number", default: 100, describe: "steps between resumable checkpoints (in OUT.checkpoint)" })
      .option("resume", { type: "boolean", default: false, describe: "continue from OUT.checkpoint if it exists" }),
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
