import { existsSync, rmSync } from "node:fs";
import { fileDigest, readBoundedUtf8 } from "../reads.ts";
import { join } from "node:path";
import type { BackendChoice } from "../backend/backend.ts";
import { openSafetensors, writeSafetensors } from "../checkpoint/safetensors.ts";
import { writeHuggingFace } from "../checkpoint/write-huggingface.ts";
import { DataError, UsageError } from "../errors.ts";
import { checkStamp, stamp, type Provenance } from "../output/provenance.ts";
import { isBrownSource } from "../data/brown.ts";
import { checkOutputFolder, markerContent, OUTPUT_MARKER, removeStaleStaging, stagingFolder, writeStagedFolder } from "../output/folder.ts";
import { writeNewFile } from "../files.ts";
import { Rng } from "../rng.ts";
import { readTextFile } from "../data/text-source.ts";
import { contiguousWindows } from "../data/windows.ts";
import { scoredBytes } from "../eval/inputs.ts";
import type { HostBlock, HostGlobals, HostTensor, ModelSpec } from "../model/spec.ts";
import { lineChart } from "../report/svg.ts";
import { trainByteLevelBpe } from "../tokenizer/bpe-trainer.ts";
import { BYTE_LEVEL_BOS_ID, BYTE_LEVEL_EOS_ID, BYTE_LEVEL_VOCAB_SIZE, byteLevelTokenizerJson } from "../tokenizer/byte-level.ts";
import { huggingFaceTokenizer } from "../tokenizer/huggingface.ts";
import { machineBudget, workerExcess, workerLimit } from "../workers/limit.ts";
import { spawnTsWorker, WorkerChannel } from "../workers/spawn.ts";
import { DEFAULT_ADAMW } from "../train/adamw.ts";
import { sampleBatch } from "../train/batches.ts";
import { initWeights } from "../train/init.ts";
import { learningRate } from "../train/schedule.ts";
import { decodeTrainingState } from "../train/state.ts";

/** The size of a LLaMA-architecture model to train, in config.json's terms. */
export interface ArchitectureSize {
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly intermediateSize: number;
  readonly contextLength: number;
}

export interface TrainOptions {
  readonly data: string;
  readonly validation?: string;
  readonly out: string;
  readonly size: ArchitectureSize;
  readonly steps: number;
  readonly batch: number;
  readonly seqlen: number;
  readonly lr: number;
  readonly warmupSteps: number;
  readonly weightDecay: number;
  readonly seed: number;
  readonly evalEvery: number;
  readonly evalWindows: number;
  readonly backend: BackendChoice;
  /** Tokenizer size: 258 is raw bytes (+ BOS, EOS); more learns a byte-level BPE from the training text. */
  readonly vocabSize: number;
  /** Data-parallel worker threads, each with its own backend. */
  readonly workers: number;
  /** Steps between resumable checkpoints (0: none). */
  readonly checkpointEvery: number;
  /** Continue from the checkpoint beside `out` when there is one. */
  readonly resume: boolean;
  /** `out` may be an existing folder evosparse wrote, replaced at the end. */
  readonly overwrite?: boolean;
  /** The command line that produced the model, recorded beside it. */
  readonly command?: string;
  readonly onStep?: (step: StepLog) => void;
  readonly onStart?: (info: { backend: string; parameters: number; trainTokens: number; workers: number; vocabSize: number; resumedAt: number }) => void;
}

export interface StepLog {
  readonly step: number;
  readonly lr: number;
  readonly trainLoss: number;
  readonly gradNorm: number;
  readonly valLoss?: number;
  readonly seconds: number;
}

export interface TrainResult {
  readonly spec: ModelSpec;
  readonly log: readonly StepLog[];
  readonly finalTrainLoss: number;
  readonly finalValLoss?: number;
  /** Validation perplexity per UTF-8 byte, comparable across tokenizers. */
  readonly finalValPplPerByte?: number;
  readonly seconds: number;
  readonly backend: string;
  readonly parameters: number;
  readonly workers: number;
}

/** A LLaMA spec over a byte-level (BPE) vocabulary whose BOS and EOS follow the 256 bytes. */
export const llamaSpec = (s: ArchitectureSize, vocabSize: number): ModelSpec => ({
  family: "llama",
  vocabSize,
  hiddenSize: s.hiddenSize,
  numLayers: s.numLayers,
  numHeads: s.numHeads,
  numKvHeads: s.numKvHeads,
  headDim: s.hiddenSize / s.numHeads,
  intermediateSize: s.intermediateSize,
  maxPositions: s.contextLength,
  norm: "rms",
  normEps: 1e-5,
  normBefore: true,
  positions: { kind: "rope", theta: 10000 },
  activation: "silu",
  linears: ["q", "k", "v", "o", "gate", "up", "down"],
  roles: { q: "q", k: "k", v: "v", o: "o", gate: "gate", up: "up", down: "down" },
  biasedLinears: [],
  tiedEmbeddings: true,
  finalNorm: true,
  embedDim: s.hiddenSize,
  bosTokenId: BYTE_LEVEL_BOS_ID,
  eosTokenId: BYTE_LEVEL_EOS_ID,
});

/** Host weights from the named parameter list the workers report. */
const weightsFromParameters = (
  spec: ModelSpec,
  names: readonly string[],
  shapes: readonly number[][],
  values: readonly Float32Array[],
): { globals: HostGlobals; blocks: HostBlock[] } => {
  const byName = new Map(names.map((n, i) => [n, { shape: shapes[i]!, data: values[i]! } as HostTensor]));
  const get = (n: string): HostTensor => {
    const t = byName.get(n);
    if (!t) throw new Error(`trained model lacks parameter ${n}`);
    return t;
  };
  const globals: HostGlobals = {
    embed: get("embed"),
    finalNorm: { weight: get("finalNorm.weight") },
    ...(byName.has("lmHead") ? { lmHead: get("lmHead") } : {}),
  };
  const blocks = Array.from({ length: spec.numLayers }, (_, i): HostBlock => ({
    attnNorm: { weight: get(`blocks.${i}.attnNorm.weight`) },
    mlpNorm: { weight: get(`blocks.${i}.mlpNorm.weight`) },
    linears: Object.fromEntries(spec.linears.map((n) => [n, { weight: get(`blocks.${i}.${n}.weight`) }])),
  }));
  return { globals, blocks };
};

interface WorkerState {
  backend: string;
  names: string[];
  shapes: number[][];
  parameters: Float32Array[];
  step: number;
  m: Float32Array[];
  v: Float32Array[];
}

/** The tokenizer of a new model: raw bytes, or a byte-level BPE learned from the training text. */
const buildTokenizer = (text: string, vocabSize: number): object =>
  vocabSize <= BYTE_LEVEL_VOCAB_SIZE ? byteLevelTokenizerJson() : trainByteLevelBpe(text, vocabSize).tokenizerJson;

const checkpointDir = (out: string): string => `${out}.checkpoint`;

/**
 * More workers than the machine runs well is refused rather than capped: the worker count
 * is part of a training run's result (gradients are summed per worker), so it never
 * changes silently.
 */
const refuseExcessWorkers = (o: TrainOptions): void => {
  const { hiddenSize: d, numLayers, numHeads, numKvHeads, intermediateSize: f } = o.size;
  const headDim = d / numHeads;
  const perBlock = d * (numHeads + 2 * numKvHeads) * headDim + numHeads * headDim * d + 3 * d * f;
  const parameters = numLayers * perBlock + Math.max(o.vocabSize, BYTE_LEVEL_VOCAB_SIZE) * d;
  // Weights, gradients and two AdamW moments in float32, plus the activations of a batch
  // share and the backend's own runtime.
  const activations = 4 * o.seqlen * Math.ceil(o.batch / Math.max(1, o.workers)) * (numLayers * (8 * d + 3 * f) + o.vocabSize);
  const budget = machineBudget(16 * parameters + activations + 128 * 2 ** 20);
  const used = Math.min(o.workers, o.batch);
  const excess = workerExcess(used, budget);
  if (excess !== undefined) {
    throw new UsageError({
      problem: `--workers ${o.workers} is more than this machine runs well: ${excess}; use --workers ${workerLimit(budget)} or fewer (the worker count is part of a training run's result)`,
    });
  }
};

/**
 * Trains a small LLaMA-architecture model with AdamW, linear warmup and cosine decay, on
 * `workers` data-parallel worker threads, and writes it as a Hugging Face folder (F16
 * safetensors, config.json, tokenizer.json) with its loss curve. Every random choice
 * (initial weights, batch offsets) comes from `seed`; the batch of step s depends only on
 * (seed, s), so a run resumed from its checkpoint continues exactly where it stopped.
 * Results are reproducible for a given seed, backend and worker count.
 */
export const train = async (o: TrainOptions): Promise<TrainResult> => {
  // The output folder and the checkpoint beside it are checked before any work.
  checkOutputFolder(o.out, { flag: "--out", overwrite: o.overwrite ?? false, inputs: [o.data, o.validation] });
  const ckptDir = checkpointDir(o.out);
  removeStaleStaging(ckptDir);
  if (!o.resume && existsSync(join(ckptDir, "state.json"))) {
    throw new UsageError({ problem: `${ckptDir} holds a stopped training run: continue it with --resume, or remove that folder to start afresh` });
  }
  refuseExcessWorkers(o);
  const trainText = readTextFile(o.data);
  const made = trainingProvenance(o);
  const resumed = o.resume && existsSync(join(ckptDir, "state.json")) ? readCheckpoint(ckptDir, made) : undefined;
  const tokenizerJson = resumed?.tokenizerJson ?? buildTokenizer(trainText, o.vocabSize);
  const tokenizer = huggingFaceTokenizer(tokenizerJson, undefined, o.data);
  const spec = llamaSpec(o.size, tokenizer.vocabSize);
  if (o.seqlen > spec.maxPositions) throw new UsageError({ problem: `--seqlen ${o.seqlen} exceeds --context ${spec.maxPositions}` });
  const trainTokens = Int32Array.from(tokenizer.encode(trainText));
  const valText = o.validation ? readTextFile(o.validation) : "";
  const valWindows = o.validation ? contiguousWindows(tokenizer.encode(valText), o.seqlen, { maxWindows: o.evalWindows }) : [];
  const valBytes = scoredBytes(valWindows, tokenizer);
  const rng = new Rng(o.seed);
  const init = initWeights(spec, rng.split("init").nextUint32());
  const batches = rng.split("batches");
  const workerCount = Math.max(1, Math.min(o.workers, o.batch));
  const workers = Array.from(
    { length: workerCount },
    () =>
      new WorkerChannel(
        spawnTsWorker(new URL("../train/worker.ts", import.meta.url), {
          spec,
          globals: init.globals,
          blocks: init.blocks,
          adamw: { ...DEFAULT_ADAMW, weightDecay: o.weightDecay },
          backend: o.backend,
          share: workerCount,
          ...(resumed ? { parameters: resumed.parameters, optimizer: resumed.optimizer } : {}),
        }),
      ),
  );
  const log: StepLog[] = [...(resumed?.log ?? [])];
  const firstStep = resumed?.step ?? 0;
  const secondsBefore = log.at(-1)?.seconds ?? 0;
  const start = performance.now();
  const elapsed = () => secondsBefore + (performance.now() - start) / 1000;

  const state = () => workers[0]!.request<WorkerState>({ kind: "state" });
  const validationLoss = async (): Promise<number | undefined> => {
    if (valWindows.length === 0) return undefined;
    const shares = await Promise.all(
      workers.map((w, k) => w.request<{ nll: number; count: number }>({ kind: "nll", windows: valWindows.filter((_, i) => i % workerCount === k) })),
    );
    return shares.reduce((s, r) => s + r.nll, 0) / shares.reduce((s, r) => s + r.count, 0);
  };

  try {
    const first = await state();
    const parameters = first.parameters.reduce((n, p) => n + p.length, 0);
    o.onStart?.({ backend: first.backend, parameters, trainTokens: trainTokens.length, workers: workerCount, vocabSize: tokenizer.vocabSize, resumedAt: firstStep });
    for (let step = firstStep; step < o.steps; step++) {
      const lr = learningRate(step, { peak: o.lr, warmupSteps: o.warmupSteps, totalSteps: o.steps });
      const { ids, targets } = sampleBatch(trainTokens, o.batch, o.seqlen, batches.split(step));
      // Contiguous shares of the batch; each worker's loss is a mean over its share.
      const shares = await Promise.all(
        workers.map((w, k) => {
          const from = Math.floor((k * o.batch) / workerCount);
          const to = Math.floor(((k + 1) * o.batch) / workerCount);
          return w.request<{ loss: number; grads: Float32Array[] }>({
            kind: "grads",
            ids: ids.slice(from * o.seqlen, to * o.seqlen),
            targets: targets.slice(from * o.seqlen, to * o.seqlen),
            batch: to - from,
            seqlen: o.seqlen,
          }).then((r) => ({ ...r, weight: (to - from) / o.batch }));
        }),
      );
      // Summed in worker order, so the result does not depend on which worker finished first.
      const total = shares[0]!.grads.map((g) => new Float32Array(g.length));
      for (const s of shares) s.grads.forEach((g, i) => {
        const t = total[i]!;
        for (let j = 0; j < g.length; j++) t[j]! += s.weight * g[j]!;
      });
      const trainLoss = shares.reduce((sum, s) => sum + s.weight * s.loss, 0);
      const applied = await Promise.all(workers.map((w) => w.request<{ gradNorm: number }>({ kind: "apply", grads: total, lr })));
      const last = step === o.steps - 1;
      const valLoss = o.evalEvery > 0 && ((step + 1) % o.evalEvery === 0 || last) ? await validationLoss() : undefined;
      const entry: StepLog = { step: step + 1, lr, trainLoss, gradNorm: applied[0]!.gradNorm, ...(valLoss !== undefined ? { valLoss } : {}), seconds: elapsed() };
      log.push(entry);
      o.onStep?.(entry);
      if (o.checkpointEvery > 0 && (step + 1) % o.checkpointEvery === 0 && !last) {
        writeCheckpoint(ckptDir, step + 1, await state(), tokenizerJson, log, made);
      }
    }
    const final = await state();
    const seconds = elapsed();
    const finalValLoss = [...log].reverse().find((l) => l.valLoss !== undefined)?.valLoss;
    // One batch is too noisy to call "the final loss": average the last steps.
    const tail = log.slice(-Math.min(50, log.length));
    const finalTrainLoss = tail.reduce((s, l) => s + l.trainLoss, 0) / tail.length;
    const { globals, blocks } = weightsFromParameters(spec, final.names, final.shapes, final.parameters);
    const valTokens = valWindows.reduce((n, w) => n + w.targets.filter((t) => t >= 0).length, 0);
    const result: TrainResult = {
      spec,
      log,
      finalTrainLoss,
      ...(finalValLoss !== undefined ? { finalValLoss } : {}),
      ...(finalValLoss !== undefined && valBytes ? { finalValPplPerByte: Math.exp((finalValLoss * valTokens) / valBytes) } : {}),
      seconds,
      backend: final.backend,
      parameters: final.parameters.reduce((n, p) => n + p.length, 0),
      workers: workerCount,
    };
    writeHuggingFace(o.out, spec, globals, blocks, {
      dtype: "F16",
      command: "train",
      overwrite: o.overwrite ?? false,
      tokenizerJson,
      extraFiles: {
        "training-log.csv": trainingLogCsv(log),
        "loss-curve.svg": lossCurveSvg(log),
        "training.json": JSON.stringify(trainingRecord(o, result), null, 2) + "\n",
      },
    });
    rmSync(ckptDir, { recursive: true, force: true });
    return result;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
};

/** Parameters and AdamW moments by name, plus the log: everything a resumed run needs. */
const writeCheckpoint = (dir: string, step: number, s: WorkerState, tokenizerJson: object, log: readonly StepLog[], made: Provenance): void => {
  const staging = stagingFolder(dir);
  writeStagedFolder(dir, staging, () => {
    const tensors = s.names.flatMap((name, i) => [
      { name: `param/${name}`, dtype: "F32" as const, shape: s.shapes[i]!, data: s.parameters[i]! },
      { name: `m/${name}`, dtype: "F32" as const, shape: s.shapes[i]!, data: s.m[i]! },
      { name: `v/${name}`, dtype: "F32" as const, shape: s.shapes[i]!, data: s.v[i]! },
    ]);
    writeSafetensors(join(staging, "state.safetensors"), tensors);
    writeNewFile(join(staging, "tokenizer.json"), JSON.stringify(tokenizerJson));
    writeNewFile(join(staging, "state.json"), JSON.stringify(stamp({ step, optimizerStep: s.step, names: s.names, log }, made)));
    writeNewFile(join(staging, OUTPUT_MARKER), markerContent("train checkpoint", ["state.safetensors", "tokenizer.json", "state.json"]));
  });
};

/**
 * What made a training run's checkpoint: every setting its weights depend on (the worker
 * count included: gradients are summed per worker) and the bytes of its texts. How often
 * it checkpoints, evaluates or logs is not among them.
 */
const trainingProvenance = (o: TrainOptions): Provenance => {
  const files: Record<string, string> = {};
  for (const [flag, path] of [["--data", o.data], ["--validation", o.validation]] as const) {
    if (path !== undefined && !isBrownSource(path)) files[`${flag} ${path}`] = fileDigest(path, { error: (problem) => new DataError({ file: path, problem }) });
  }
  const s = o.size;
  return {
    settings: {
      "--data": o.data,
      "--validation": o.validation ?? null,
      "--dim": s.hiddenSize,
      "--layers": s.numLayers,
      "--heads": s.numHeads,
      "--kv-heads": s.numKvHeads,
      "--ffn": s.intermediateSize,
      "--context": s.contextLength,
      "--vocab": o.vocabSize,
      "--steps": o.steps,
      "--batch": o.batch,
      "--seqlen": o.seqlen,
      "--lr": o.lr,
      "--warmup": o.warmupSteps,
      "--weight-decay": o.weightDecay,
      "--seed": o.seed,
      "--workers": Math.max(1, Math.min(o.workers, o.batch)),
      "--eval-windows": o.evalWindows,
    },
    files,
  };
};

const readCheckpoint = (dir: string, made: Provenance) => {
  const file = join(dir, "state.json");
  const meta = decodeTrainingState(readBoundedUtf8(file, "state"), file, (json) => checkStamp(json, made, file, `remove ${dir} to start afresh`));
  const st = openSafetensors(join(dir, "state.safetensors"));
  try {
    return {
      step: meta.step,
      log: meta.log,
      tokenizerJson: JSON.parse(readBoundedUtf8(join(dir, "tokenizer.json"), "tokenizer")) as object,
      parameters: meta.names.map((n) => st.read(`param/${n}`)),
      optimizer: { step: meta.optimizerStep, m: meta.names.map((n) => st.read(`m/${n}`)), v: meta.names.map((n) => st.read(`v/${n}`)) },
    };
  } finally {
    st.close();
  }
};

const trainingLogCsv = (log: readonly StepLog[]): string =>
  "step,lr,train_loss,val_loss,grad_norm,seconds\n" +
  log
    .map((l) => [l.step, l.lr.toExponential(4), l.trainLoss.toFixed(5), l.valLoss?.toFixed(5) ?? "", l.gradNorm.toFixed(4), l.seconds.toFixed(1)].join(","))
    .join("\n") +
  "\n";

const lossCurveSvg = (log: readonly StepLog[]): string => {
  const smooth: Array<[number, number]> = [];
  let ema = log[0]?.trainLoss ?? 0;
  for (const l of log) {
    ema = 0.95 * ema + 0.05 * l.trainLoss;
    smooth.push([l.step, ema]);
  }
  return lineChart(
    [
      { label: "train (EMA)", points: smooth, color: "#1f77b4" },
      { label: "validation", points: log.filter((l) => l.valLoss !== undefined).map((l) => [l.step, l.valLoss!]), color: "#d62728" },
    ],
    { title: "Training loss (nats per byte)", xLabel: "step", yLabel: "loss" },
  );
};

const trainingRecord = (o: TrainOptions, r: TrainResult) => ({
  command: o.command,
  data: o.data,
  validation: o.validation,
  size: o.size,
  steps: o.steps,
  batch: o.batch,
  seqlen: o.seqlen,
  lr: o.lr,
  warmupSteps: o.warmupSteps,
  weightDecay: o.weightDecay,
  seed: o.seed,
  backend: r.backend,
  parameters: r.parameters,
  vocabSize: o.vocabSize,
  workers: r.workers,
  seconds: Number(r.seconds.toFixed(1)),
  finalTrainLoss: Number(r.finalTrainLoss.toFixed(4)),
  finalValLoss: r.finalValLoss !== undefined ? Number(r.finalValLoss.toFixed(4)) : undefined,
  finalValPplPerByte: r.finalValPplPerByte !== undefined ? Number(r.finalValPplPerByte.toFixed(4)) : undefined,
  tokenizer: o.vocabSize <= BYTE_LEVEL_VOCAB_SIZE ? "byte-level (256 byte tokens + BOS + EOS)" : `byte-level BPE, ${o.vocabSize} tokens, learned from the training text`,
});
