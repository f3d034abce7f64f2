import * as tf from "@tensorflow/tfjs";
import { type BackendChoice, initBackend } from "../backend/backend.ts";
import { writeHuggingFace } from "../checkpoint/write-huggingface.ts";
import { Rng } from "../data/rng.ts";
import { readTextFile } from "../data/text-source.ts";
import { contiguousWindows } from "../data/windows.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, HostGlobals, HostTensor, ModelSpec } from "../model/spec.ts";
import { lineChart } from "../report/svg.ts";
import { BYTE_LEVEL_BOS_ID, BYTE_LEVEL_EOS_ID, BYTE_LEVEL_VOCAB_SIZE, byteLevelTokenizerJson } from "../tokenizer/byte-level.ts";
import { AdamW, DEFAULT_ADAMW } from "./adamw.ts";
import { sampleBatch } from "./batches.ts";
import { initWeights } from "./init.ts";
import { learningRate } from "./schedule.ts";

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
  /** The command line that produced the model, recorded beside it. */
  readonly command?: string;
  readonly onStep?: (step: StepLog) => void;
  readonly onStart?: (info: { backend: string; parameters: number; trainTokens: number }) => void;
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
  readonly seconds: number;
  readonly backend: string;
  readonly parameters: number;
}

/** A LLaMA spec over the byte-level vocabulary. */
export const llamaSpec = (s: ArchitectureSize): ModelSpec => ({
  family: "llama",
  vocabSize: BYTE_LEVEL_VOCAB_SIZE,
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

const hostOf = (t: tf.Tensor): HostTensor => ({ shape: t.shape, data: Float32Array.from(t.dataSync() as Float32Array) });

/** Reads the trained weights back from the model's variables into host tensors. */
const exportWeights = (decoder: Decoder, spec: ModelSpec): { globals: HostGlobals; blocks: HostBlock[] } => {
  const g = decoder.getGlobals();
  const globals: HostGlobals = {
    embed: hostOf(g.embed),
    ...(g.finalNorm ? { finalNorm: { weight: hostOf(g.finalNorm.weight) } } : {}),
    ...(g.lmHead ? { lmHead: hostOf(g.lmHead) } : {}),
  };
  const blocks = Array.from({ length: spec.numLayers }, (_, i): HostBlock => {
    const b = decoder.getBlock(i);
    return {
      attnNorm: { weight: hostOf(b.attnNorm.weight) },
      mlpNorm: { weight: hostOf(b.mlpNorm.weight) },
      linears: Object.fromEntries(Object.entries(b.linears).map(([n, l]) => [n, { weight: hostOf(l.weight) }])),
    };
  });
  return { globals, blocks };
};

export const countParameters = (decoder: Decoder): number =>
  [...decoder.parameters().values()].reduce((n, t) => n + t.size, 0);

const byteTokens = (text: string): Uint8Array => {
  // The byte-level tokenizer's ids are exactly the UTF-8 bytes (a tested property), so the
  // training stream skips the general tokenizer for speed.
  return new Uint8Array(Buffer.from(text, "utf8"));
};

/**
 * Trains a small LLaMA-architecture byte-level model with AdamW, linear warmup and cosine
 * decay, and writes it as a Hugging Face folder (F16 safetensors, config.json,
 * tokenizer.json) with its loss curve. Every random choice (initial weights, batch
 * offsets) comes from `seed`, so a seed and a backend fix the result.
 */
export const train = async (o: TrainOptions): Promise<TrainResult> => {
  const backend = await initBackend(o.backend);
  const spec = llamaSpec(o.size);
  if (o.seqlen > spec.maxPositions) throw new RangeError(`seqlen ${o.seqlen} exceeds the context length ${spec.maxPositions}`);
  const trainTokens = byteTokens(readTextFile(o.data));
  const valWindows = o.validation
    ? contiguousWindows(Array.from(byteTokens(readTextFile(o.validation))), o.seqlen, { maxWindows: o.evalWindows })
    : [];
  const rng = new Rng(o.seed);
  const init = initWeights(spec, rng.split("init").nextUint32());
  const decoder = Decoder.create(spec, init.globals, { numBlocks: spec.numLayers, load: (i) => init.blocks[i]! }, { trainable: true });
  const params = [...decoder.parameters().values()] as tf.Variable[];
  const parameters = params.reduce((n, t) => n + t.size, 0);
  const optimizer = new AdamW(params, { ...DEFAULT_ADAMW, weightDecay: o.weightDecay });
  const batches = rng.split("batches");
  const log: StepLog[] = [];
  const start = performance.now();
  o.onStart?.({ backend: backend.name, parameters, trainTokens: trainTokens.length });

  const validationLoss = (): number | undefined => {
    if (valWindows.length === 0) return undefined;
    let total = 0;
    let count = 0;
    for (const w of valWindows) {
      const r = decoder.nll(w.ids, w.targets, 1, w.ids.length);
      total += r.nll;
      count += r.count;
    }
    return total / count;
  };

  try {
    for (let step = 0; step < o.steps; step++) {
      const lr = learningRate(step, { peak: o.lr, warmupSteps: o.warmupSteps, totalSteps: o.steps });
      const { ids, targets } = sampleBatch(trainTokens, o.batch, o.seqlen, batches);
      const { value, grads } = tf.variableGrads(() => decoder.lossTensor(ids, targets, o.batch, o.seqlen), params);
      const trainLoss = value.dataSync()[0]!;
      const gradNorm = optimizer.apply(params.map((p) => grads[p.name]!), lr);
      value.dispose();
      tf.dispose(Object.values(grads));
      const last = step === o.steps - 1;
      const valLoss = o.evalEvery > 0 && ((step + 1) % o.evalEvery === 0 || last) ? validationLoss() : undefined;
      const entry: StepLog = {
        step: step + 1,
        lr,
        trainLoss,
        gradNorm,
        ...(valLoss !== undefined ? { valLoss } : {}),
        seconds: (performance.now() - start) / 1000,
      };
      log.push(entry);
      o.onStep?.(entry);
    }
    const seconds = (performance.now() - start) / 1000;
    const finalValLoss = [...log].reverse().find((l) => l.valLoss !== undefined)?.valLoss;
    // The final training loss is averaged over the last steps: one batch is too noisy.
    const tail = log.slice(-Math.min(50, log.length));
    const finalTrainLoss = tail.reduce((s, l) => s + l.trainLoss, 0) / tail.length;
    const { globals, blocks } = exportWeights(decoder, spec);
    const result: TrainResult = {
      spec,
      log,
      finalTrainLoss,
      ...(finalValLoss !== undefined ? { finalValLoss } : {}),
      seconds,
      backend: backend.name,
      parameters,
    };
    writeHuggingFace(o.out, spec, globals, blocks, {
      dtype: "F16",
      tokenizerJson: byteLevelTokenizerJson(),
      extraFiles: {
        "training-log.csv": trainingLogCsv(log),
        "loss-curve.svg": lossCurveSvg(log),
        "training.json": JSON.stringify(trainingRecord(o, result), null, 2) + "\n",
      },
    });
    return result;
  } finally {
    optimizer.dispose();
    decoder.dispose();
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
  seconds: Number(r.seconds.toFixed(1)),
  finalTrainLoss: Number(r.finalTrainLoss.toFixed(4)),
  finalValLoss: r.finalValLoss !== undefined ? Number(r.finalValLoss.toFixed(4)) : undefined,
  tokenizer: "byte-level (256 byte tokens + BOS + EOS)",
});
