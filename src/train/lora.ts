/**
 * LoRA recovery fine-tuning of a (pruned) model (Hu et al. 2021; the recovery stage of
 * LLM-Pruner): every prunable linear's weight W [in, out] (y = x W + b) is trained as
 * W + scaling · A · B, with A [in, rank] and B [rank, out] the only trainable tensors and
 * scaling = alpha / rank as in PEFT. The base weights, biases and norms stay fixed. B starts
 * at zero, so the first step sees exactly the base model; the adapters are merged into the
 * weights at the end, giving a model of the same shapes and cost.
 *
 * Training is deterministic for a given seed and backend: adapter initialisation and the
 * batch of step s depend only on (seed, s), and a run stopped part-way resumes from its
 * checkpoint to the same weights and log as an uninterrupted run.
 */
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../errors.ts";
import { Decoder, type BlockTensors, type BlockTransform } from "../model/decoder.ts";
import { blockShape, linearShapes, type HostBlock, type HostGlobals, type HostNorm, type HostTensor, type ModelSpec } from "../model/spec.ts";
import { notReplaceable, removeStaleStaging } from "../output/folder.ts";
import { hashString, Rng } from "../rng.ts";
import { AdamW, DEFAULT_ADAMW } from "./adamw.ts";
import { sampleBatch } from "./batches.ts";
import { crashPoint } from "../crash-point.ts";
import { hasLoraCheckpoint, readLoraCheckpoint, STATE_FILE, writeLoraCheckpoint, type LoraCheckpoint, type LoraSettings } from "./lora-state.ts";

/**
 * LLM-Pruner's recovery settings: rank 8, alpha 16, a learning rate of 1e-4 (its
 * post-training script; PEFT's lora_alpha 16 default). Its optimiser is the Hugging Face
 * Trainer's AdamW; here it is the project's AdamW (beta2 0.95, global-norm clipping at 1)
 * without weight decay, at a constant rate.
 */
export const LLM_PRUNER_LORA = { rank: 8, alpha: 16, lr: 1e-4 } as const;

export interface LoraStepLog {
  /** Steps done, this one included (1 for the first). */
  readonly step: number;
  /** The step's batch loss (mean next-token NLL) before its update. */
  readonly loss: number;
}

export interface LoraOptions {
  /** Adapter rank: an integer from 1 to the smaller dimension of every adapted linear. */
  readonly rank: number;
  /** Scaling = alpha / rank. */
  readonly alpha: number;
  readonly steps: number;
  /** Constant learning rate (LLM-Pruner: 1e-4 at rank 8). */
  readonly lr: number;
  /** Windows per step. */
  readonly batch: number;
  readonly seqlen: number;
  /** The tokenized training text; each window of a batch starts at a random offset. */
  readonly tokens: Int32Array;
  /** Fixes the adapters' initialisation and every batch. */
  readonly seed: number;
  /** Write a resumable checkpoint into `dir` every `every` steps (never after the last). */
  readonly checkpoint?: { readonly dir: string; readonly every: number };
  /** Continue from the checkpoint in `checkpoint.dir` when there is one. */
  readonly resume?: boolean;
  /** Called once before training, with the step it starts from: 0, or where a resumed run stopped. */
  readonly onStart?: (step: number) => void;
  readonly onStep?: (log: LoraStepLog) => void;
}

export interface LoraResult {
  /** The blocks with the adapters merged into their weights, shapes unchanged. */
  readonly blocks: HostBlock[];
  readonly log: LoraStepLog[];
  /** Trainable adapter parameters: rank · (in + out) summed over the adapted linears. */
  readonly parameters: number;
}

/** The low-rank pair trained for one linear. */
export interface Adapter {
  readonly block: number;
  readonly linear: string;
  /** [in, rank], from PEFT's Kaiming-uniform initialisation. */
  readonly a: tf.Variable;
  /** [rank, out], zeros at the start. */
  readonly b: tf.Variable;
}

export interface Adapters {
  readonly scaling: number;
  readonly list: readonly Adapter[];
}

const positiveInteger = (n: number): boolean => Number.isInteger(n) && n >= 1;

/** Refuses options that cannot train, before any work; a rank too large names the linear. */
const checkOptions = (spec: ModelSpec, blocks: readonly HostBlock[], o: LoraOptions): void => {
  if (!positiveInteger(o.rank)) throw new RangeError(`LoRA rank must be an integer of at least 1, got ${o.rank}`);
  if (!(Number.isFinite(o.alpha) && o.alpha > 0)) throw new RangeError(`LoRA alpha must be a positive number, got ${o.alpha}`);
  if (!positiveInteger(o.steps)) throw new RangeError(`LoRA steps must be an integer of at least 1, got ${o.steps}`);
  if (!(Number.isFinite(o.lr) && o.lr > 0)) throw new RangeError(`LoRA learning rate must be a positive number, got ${o.lr}`);
  if (!positiveInteger(o.batch)) throw new RangeError(`LoRA batch must be an integer of at least 1, got ${o.batch}`);
  if (!positiveInteger(o.seqlen)) throw new RangeError(`LoRA seqlen must be an integer of at least 1, got ${o.seqlen}`);
  if (!(Number.isInteger(o.seed) && o.seed >= 0 && o.seed < 2 ** 32)) throw new RangeError(`LoRA seed must be an integer in [0, 2^32), got ${o.seed}`);
  if (o.checkpoint && !positiveInteger(o.checkpoint.every)) {
    throw new RangeError(`LoRA checkpoint interval must be an integer of at least 1, got ${o.checkpoint.every}`);
  }
  if (blocks.length !== spec.numLayers) throw new RangeError(`${blocks.length} blocks for a model of ${spec.numLayers} blocks`);
  for (let b = 0; b < spec.numLayers; b++) {
    const shapes = linearShapes(spec, b);
    for (const name of spec.linears) {
      const [inDim, outDim] = shapes[name]!;
      if (o.rank > Math.min(inDim, outDim)) {
        throw new RangeError(`LoRA rank ${o.rank} exceeds block ${b} linear ${name} of shape [${inDim}, ${outDim}]: the rank can be at most ${Math.min(inDim, outDim)}`);
      }
    }
  }
  if (!(o.tokens instanceof Int32Array) || o.tokens.length < o.seqlen + 1) {
    throw new RangeError(`LoRA training needs at least ${o.seqlen + 1} tokens for windows of ${o.seqlen}, got ${o.tokens?.length ?? 0}`);
  }
  const outside = o.tokens.findIndex((t) => t < 0 || t >= spec.vocabSize);
  if (outside >= 0) throw new RangeError(`training token ${o.tokens[outside]} at position ${outside} is outside the vocabulary of ${spec.vocabSize}`);
};

/**
 * PEFT's initialisation of A: torch's kaiming_uniform_ with a = sqrt(5) over fan-in `in`,
 * i.e. uniform in ±gain·sqrt(3/in) with gain = sqrt(2 / (1 + a²)) = sqrt(1/3): ±1/sqrt(in).
 */
const kaimingUniform = (inDim: number, rank: number, rng: Rng): Float32Array => {
  const bound = 1 / Math.sqrt(inDim);
  return Float32Array.from({ length: inDim * rank }, () => bound * (2 * rng.next() - 1));
};

const variableOf = (data: Float32Array, shape: [number, number]): tf.Variable => {
  const initial = tf.tensor2d(data, shape, "float32");
  try {
    return tf.variable(initial, true);
  } finally {
    initial.dispose();
  }
};

/**
 * An adapter on every prunable linear of every block, sized by the block's own shapes.
 * Each A comes from its own stream of the seed, so it does not depend on the other linears.
 */
export const createAdapters = (spec: ModelSpec, rank: number, alpha: number, seed: number): Adapters => {
  const init = new Rng(seed).split("lora-init");
  const list: Adapter[] = [];
  try {
    for (let block = 0; block < spec.numLayers; block++) {
      const shapes = linearShapes(spec, block);
      for (const linear of spec.linears) {
        const [inDim, outDim] = shapes[linear]!;
        const a = variableOf(kaimingUniform(inDim, rank, init.split(`${block}/${linear}`)), [inDim, rank]);
        try {
          list.push({ block, linear, a, b: variableOf(new Float32Array(rank * outDim), [rank, outDim]) });
        } catch (e) {
          a.dispose();
          throw e;
        }
      }
    }
  } catch (e) {
    disposeAdapters({ scaling: 0, list });
    throw e;
  }
  return { scaling: alpha / rank, list };
};

export const disposeAdapters = (adapters: Adapters): void => {
  for (const { a, b } of adapters.list) tf.dispose([a, b]);
};

/** The trainable tensors in optimizer order (A then B of each adapter), with their checkpoint names. */
export const adapterVariables = (adapters: Adapters): { names: string[]; variables: tf.Variable[] } => ({
  names: adapters.list.flatMap(({ block, linear }) => [`blocks.${block}.${linear}.lora_A`, `blocks.${block}.${linear}.lora_B`]),
  variables: adapters.list.flatMap(({ a, b }) => [a, b]),
});

/** W + scaling · A · B: the one expression both training and merging use, so the merged model computes what training saw. */
const adaptedWeight = (weight: tf.Tensor2D, adapter: Adapter, scaling: number): tf.Tensor2D =>
  tf.add(weight, tf.mul(tf.matMul(adapter.a, adapter.b), scaling));

/** The loss's view of each block: adapted linear weights, biases and norms as they are. */
export const loraTransform = (adapters: Adapters): BlockTransform => {
  const byBlock = new Map<number, Map<string, Adapter>>();
  for (const a of adapters.list) {
    if (!byBlock.has(a.block)) byBlock.set(a.block, new Map());
    byBlock.get(a.block)!.set(a.linear, a);
  }
  return (block: number, tensors: BlockTensors): BlockTensors => {
    const own = byBlock.get(block);
    if (!own) return tensors;
    const linears = Object.fromEntries(
      Object.entries(tensors.linears).map(([name, l]) => {
        const adapter = own.get(name);
        return [name, adapter ? { ...l, weight: adaptedWeight(l.weight, adapter, adapters.scaling) } : l];
      }),
    );
    return { attnNorm: tensors.attnNorm, mlpNorm: tensors.mlpNorm, linears };
  };
};

/**
 * The adapted model's loss on one batch and its gradients with respect to the adapter
 * variables, in `adapterVariables` order. The caller disposes all of them.
 */
export const adapterLossAndGradients = (
  decoder: Decoder,
  adapters: Adapters,
  ids: Int32Array,
  targets: Int32Array,
  batch: number,
  seqlen: number,
): { loss: tf.Scalar; grads: tf.Tensor[] } => {
  const { variables } = adapterVariables(adapters);
  const transform = loraTransform(adapters);
  const { value, grads } = tf.variableGrads(() => decoder.lossTensor(ids, targets, batch, seqlen, transform), variables);
  return { loss: value, grads: variables.map((v) => grads[v.name]!) };
};

/** The batch of step `step`: it depends only on (seed, step), so a resumed run sees the same batches. */
export const loraBatch = (tokens: Int32Array, batch: number, seqlen: number, seed: number, step: number): { ids: Int32Array; targets: Int32Array } =>
  sampleBatch(tokens, batch, seqlen, new Rng(seed).split("batches").split(step));

const copyTensor = (t: HostTensor): HostTensor => ({ shape: [...t.shape], data: Float32Array.from(t.data) });
const copyNorm = (n: HostNorm): HostNorm => (n.bias ? { weight: copyTensor(n.weight), bias: copyTensor(n.bias) } : { weight: copyTensor(n.weight) });

/**
 * The blocks with each adapter merged into its linear's weight (W + scaling · A · B in
 * float32, computed on the backend by the expression training used); biases and norms are
 * copied unchanged. `blocks` are the host blocks `decoder` was created from.
 */
export const mergeAdapters = async (decoder: Decoder, blocks: readonly HostBlock[], adapters: Adapters): Promise<HostBlock[]> => {
  const merged: HostBlock[] = [];
  for (const [i, host] of blocks.entries()) {
    const resident = decoder.getBlock(i);
    const linears: Record<string, HostBlock["linears"][string]> = {};
    for (const [name, l] of Object.entries(host.linears)) {
      const adapter = adapters.list.find((a) => a.block === i && a.linear === name);
      let weight: HostTensor = copyTensor(l.weight);
      if (adapter) {
        const w = tf.tidy(() => adaptedWeight(resident.linears[name]!.weight, adapter, adapters.scaling));
        try {
          weight = { shape: [...w.shape], data: Float32Array.from((await w.data()) as Float32Array) };
        } finally {
          w.dispose();
        }
      }
      linears[name] = l.bias ? { weight, bias: copyTensor(l.bias) } : { weight };
    }
    merged.push({ attnNorm: copyNorm(host.attnNorm), mlpNorm: copyNorm(host.mlpNorm), linears });
  }
  return merged;
};

/** Adds a float array's bits to a running 32-bit hash (FNV-1a over words). */
const hashWords = (h: number, data: Float32Array): number => {
  const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i]!, 0x01000193) >>> 0;
  return h;
};

const hex = (h: number): string => h.toString(16).padStart(8, "0");

/** The architecture and each block's sizes, readable in an error message. */
const modelFingerprint = (spec: ModelSpec): string => {
  const shapes = Array.from({ length: spec.numLayers }, (_, b) => {
    const s = blockShape(spec, b);
    return `${s.numHeads}/${s.numKvHeads}/${s.intermediateSize}`;
  });
  return `${spec.family}, vocab ${spec.vocabSize}, hidden ${spec.hiddenSize}, head ${spec.headDim}, linears ${spec.linears.join(" ")}, block heads/kv heads/MLP ${shapes.join(" ")}`;
};

/**
 * A hash of every base weight. Shapes alone would not tell two unstructured prunings of
 * one model apart; hashing is linear in the weights, negligible next to training.
 */
const weightsFingerprint = (globals: HostGlobals, blocks: readonly HostBlock[]): string => {
  const tensors: (HostTensor | undefined)[] = [
    globals.embed,
    globals.positions,
    globals.finalNorm?.weight,
    globals.finalNorm?.bias,
    globals.lmHead,
    globals.projectIn,
    globals.projectOut,
  ];
  for (const b of blocks) {
    tensors.push(b.attnNorm.weight, b.attnNorm.bias, b.mlpNorm.weight, b.mlpNorm.bias);
    for (const name of Object.keys(b.linears).sort()) tensors.push(b.linears[name]!.weight, b.linears[name]!.bias);
  }
  let h = 0x811c9dc5;
  for (const t of tensors) {
    h = Math.imul(h ^ hashString(t ? t.shape.join("x") : "-"), 0x01000193) >>> 0;
    if (t) h = hashWords(h, t.data);
  }
  return hex(h);
};

const tokensFingerprint = (tokens: Int32Array): string => {
  let h = 0x811c9dc5;
  for (let i = 0; i < tokens.length; i++) h = Math.imul(h ^ tokens[i]!, 0x01000193) >>> 0;
  return `${tokens.length} tokens, hash ${hex(h)}`;
};

const settingsOf = (spec: ModelSpec, globals: HostGlobals, blocks: readonly HostBlock[], o: LoraOptions): LoraSettings => ({
  rank: o.rank,
  alpha: o.alpha,
  lr: o.lr,
  batch: o.batch,
  seqlen: o.seqlen,
  seed: o.seed,
  steps: o.steps,
  model: modelFingerprint(spec),
  weights: weightsFingerprint(globals, blocks),
  tokens: tokensFingerprint(o.tokens),
});

/**
 * Checks the checkpoint folder before any work, as training does: a stopped run there is
 * continued only when asked, and a folder evosparse did not write is never replaced.
 */
const checkCheckpointFolder = (dir: string, resume: boolean): void => {
  removeStaleStaging(dir);
  if (hasLoraCheckpoint(dir)) {
    if (!resume) throw new UsageError({ problem: `${dir} holds a stopped LoRA run: continue it with resume, or remove that folder to start afresh` });
    return;
  }
  if (existsSync(dir) && readdirSync(dir).length > 0) {
    const why = notReplaceable(dir);
    if (why !== undefined) throw new UsageError({ problem: `${dir} cannot hold LoRA checkpoints: ${why}` });
  }
};

const readValues = async (t: tf.Tensor): Promise<Float32Array> => Float32Array.from((await t.data()) as Float32Array);

/** One update; returns the batch loss before it. A non-finite loss stops the run before it spoils the adapters. */
const trainStep = async (decoder: Decoder, adapters: Adapters, optimizer: AdamW, o: LoraOptions, step: number): Promise<number> => {
  const { ids, targets } = loraBatch(o.tokens, o.batch, o.seqlen, o.seed, step);
  const { loss, grads } = adapterLossAndGradients(decoder, adapters, ids, targets, o.batch, o.seqlen);
  try {
    const value = (await loss.data())[0]!;
    if (!Number.isFinite(value)) {
      throw new UsageError({ problem: `LoRA training diverged at step ${step + 1} (loss ${value}); use a lower learning rate than ${o.lr}` });
    }
    await optimizer.apply(grads, o.lr);
    return value;
  } finally {
    loss.dispose();
    tf.dispose(grads);
  }
};

const saveCheckpoint = async (
  dir: string,
  step: number,
  adapters: Adapters,
  optimizer: AdamW,
  log: readonly LoraStepLog[],
  settings: LoraSettings,
): Promise<void> => {
  const { names, variables } = adapterVariables(adapters);
  const moments = await optimizer.getState();
  const values = await Promise.all(variables.map(readValues));
  writeLoraCheckpoint(dir, {
    state: { step, optimizerStep: moments.step, names, log: [...log], settings },
    shapes: variables.map((v) => v.shape),
    values,
    m: moments.m,
    v: moments.v,
  });
  crashPoint("lora-step", step);
};

/** Puts a checkpoint's adapters and moments in place; inside tidy, so the uploaded copies are released. */
const restore = (adapters: Adapters, optimizer: AdamW, c: LoraCheckpoint): void => {
  const { variables } = adapterVariables(adapters);
  tf.tidy(() => {
    variables.forEach((v, i) => v.assign(tf.tensor(c.values[i]!, v.shape)));
    optimizer.setState({ step: c.state.optimizerStep, m: c.m, v: c.v });
  });
};

/**
 * The project's AdamW without weight decay (adapters start at zero; decay would pull them
 * back towards the pruned model). Built inside tidy: the zero tensors its constructor makes
 * for the moments would otherwise outlive it (the moments are variables, which tidy keeps).
 */
const newOptimizer = (variables: tf.Variable[]): AdamW => {
  let optimizer: AdamW | undefined;
  tf.tidy(() => {
    optimizer = new AdamW(variables, { ...DEFAULT_ADAMW, weightDecay: 0 });
  });
  return optimizer!;
};

/**
 * Fine-tunes LoRA adapters on every prunable linear of the model to recover what pruning
 * lost, and returns the blocks with the adapters merged. The base weights never change:
 * the model is created non-trainable and only the adapters are tf.Variables.
 */
export const loraRecover = async (spec: ModelSpec, globals: HostGlobals, blocks: readonly HostBlock[], o: LoraOptions): Promise<LoraResult> => {
  checkOptions(spec, blocks, o);
  const dir = o.checkpoint?.dir;
  if (dir !== undefined) checkCheckpointFolder(dir, o.resume ?? false);
  const settings = settingsOf(spec, globals, blocks, o);
  const decoder = Decoder.create(spec, globals, { numBlocks: spec.numLayers, load: (i) => blocks[i]! }, {});
  let adapters: Adapters | undefined;
  let optimizer: AdamW | undefined;
  try {
    adapters = createAdapters(spec, o.rank, o.alpha, o.seed);
    const { names, variables } = adapterVariables(adapters);
    optimizer = newOptimizer(variables);
    const resumed = dir !== undefined && o.resume && hasLoraCheckpoint(dir) ? readLoraCheckpoint(dir, { settings, names, shapes: variables.map((v) => v.shape) }) : undefined;
    if (resumed) restore(adapters, optimizer, resumed);
    const log: LoraStepLog[] = [...(resumed?.state.log ?? [])];
    o.onStart?.(resumed?.state.step ?? 0);
    for (let step = resumed?.state.step ?? 0; step < o.steps; step++) {
      const entry: LoraStepLog = { step: step + 1, loss: await trainStep(decoder, adapters, optimizer, o, step) };
      log.push(entry);
      o.onStep?.(entry);
      if (dir !== undefined && (step + 1) % o.checkpoint!.every === 0 && step + 1 < o.steps) {
        await saveCheckpoint(dir, step + 1, adapters, optimizer, log, settings);
      }
    }
    const merged = await mergeAdapters(decoder, blocks, adapters);
    // The run is complete: its checkpoint would only resume to this same result.
    if (dir !== undefined && existsSync(join(dir, STATE_FILE))) rmSync(dir, { recursive: true, force: true });
    const parameters = variables.reduce((n, v) => n + v.size, 0);
    return { blocks: merged, log, parameters };
  } finally {
    optimizer?.dispose();
    if (adapters) disposeAdapters(adapters);
    decoder.dispose();
  }
};
