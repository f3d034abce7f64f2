/**
 * The generic decoder: embedding, blocks and LM head of any supported family, driven by a
 * ModelSpec. Blocks are either all resident as tensors or streamed one at a time from host
 * memory, so a model larger than the backend's memory can still be evaluated.
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointError, DataError, UsageError } from "../errors.ts";
import type { HostBlock, HostGlobals, HostNorm, ModelSpec } from "./spec.ts";
import { linearShapes } from "./spec.ts";
import {
  blockForward,
  blockTensorList,
  blockToTensors,
  checkHostTensor,
  disposeBlock,
  hostToTensor,
  type BlockTensors,
  type LinearInputObserver,
} from "./block.ts";
import { embeddingLookup, matMul2d, normalize, sumAll, takeRange, weightedNllSum, type NormTensors } from "./ops.ts";
import { copyRows } from "./copy-kernels.ts";
import { ForwardTables } from "./tables.ts";

export { blockForward, blockToTensors, disposeBlock, type BlockTensors, type LinearInputObserver } from "./block.ts";
export type { LinearTensors, NormTensors } from "./ops.ts";
export { ForwardTables } from "./tables.ts";

/** Where block weights come from; `load` may read from disk on every call. */
export interface BlockSource {
  readonly numBlocks: number;
  load(index: number): HostBlock;
}

/** Block i's tensors as the loss should see them, computed from the resident ones. */
export type BlockTransform = (block: number, tensors: BlockTensors) => BlockTensors;

export interface DecoderOptions {
  /** Load each block when it runs and dispose it right after (only one block resident). */
  readonly streamed?: boolean;
  /** Hold every weight as a trainable tf.Variable (resident mode only), for tf.variableGrads and optimizers. */
  readonly trainable?: boolean;
  /** Names the checkpoint in error messages. */
  readonly source?: string;
}

export interface GlobalTensors {
  readonly embed: tf.Tensor2D;
  readonly positions?: tf.Tensor2D;
  readonly finalNorm?: NormTensors;
  readonly lmHead?: tf.Tensor2D;
  readonly projectIn?: tf.Tensor2D;
  readonly projectOut?: tf.Tensor2D;
}

/** Head rows per matMul: bounds the logits tensor (rows × vocab) for large vocabularies. */
const HEAD_ROWS = 256;

const checkSpec = (spec: ModelSpec, source: string): void => {
  const fail = (problem: string): never => {
    throw new CheckpointError({ file: source, problem });
  };
  const positive = ["vocabSize", "hiddenSize", "numLayers", "numHeads", "numKvHeads", "headDim", "intermediateSize"] as const;
  for (const key of positive) {
    if (!Number.isInteger(spec[key]) || spec[key] <= 0) fail(`${key} must be a positive integer, got ${spec[key]}`);
  }
  if (spec.numHeads % spec.numKvHeads !== 0) {
    fail(`${spec.numHeads} attention heads cannot be shared among ${spec.numKvHeads} key/value heads`);
  }
  if (spec.blocks !== undefined) {
    if (spec.blocks.length !== spec.numLayers) fail(`${spec.blocks.length} block shapes for ${spec.numLayers} layers`);
    spec.blocks.forEach((b, i) => {
      for (const key of ["numHeads", "numKvHeads", "intermediateSize"] as const) {
        if (!Number.isInteger(b?.[key]) || b[key] <= 0) fail(`block ${i} ${key} must be a positive integer, got ${b?.[key]}`);
      }
      if (b.numHeads % b.numKvHeads !== 0) {
        fail(`block ${i}: ${b.numHeads} attention heads cannot be shared among ${b.numKvHeads} key/value heads`);
      }
    });
  }
  if (spec.positions.kind === "rope" && spec.headDim % 2 !== 0) {
    fail(`rotary embeddings need an even head size, got ${spec.headDim}`);
  }
  if (spec.roles.qkv === undefined && (spec.roles.q === undefined || spec.roles.k === undefined || spec.roles.v === undefined)) {
    fail("the attention needs either a fused qkv linear or separate q, k and v linears");
  }
};

const globalsToTensors = (spec: ModelSpec, g: HostGlobals, source: string, asVariables: boolean): GlobalTensors => {
  const made: tf.Tensor[] = [];
  const upload = <R extends tf.Rank>(t: Parameters<typeof checkHostTensor>[0], shape: number[], where: string) => {
    const tensor = hostToTensor<R>(checkHostTensor(t, shape, source, where), asVariables);
    made.push(tensor);
    return tensor;
  };
  const norm = (n: HostNorm | undefined, where: string): NormTensors => {
    if (!n) throw new CheckpointError({ file: source, problem: `${where} is missing` });
    const weight = upload<tf.Rank.R1>(n.weight, [spec.hiddenSize], `${where} weight`);
    return n.bias ? { weight, bias: upload<tf.Rank.R1>(n.bias, [spec.hiddenSize], `${where} bias`) } : { weight };
  };
  try {
    const embed = upload<tf.Rank.R2>(g.embed, [spec.vocabSize, spec.embedDim], "token embedding");
    let positions: tf.Tensor2D | undefined;
    if (spec.positions.kind === "learned") {
      const rows = g.positions?.shape[0] ?? 0;
      if (rows <= spec.positions.offset) {
        throw new CheckpointError({ file: source, problem: `the learned position table has ${rows} rows, too few for offset ${spec.positions.offset}` });
      }
      positions = upload<tf.Rank.R2>(g.positions, [rows, spec.hiddenSize], "position table");
    }
    const finalNorm = spec.finalNorm ? norm(g.finalNorm, "final norm") : undefined;
    const lmHead = spec.tiedEmbeddings ? undefined : upload<tf.Rank.R2>(g.lmHead, [spec.embedDim, spec.vocabSize], "LM head");
    const projected = spec.embedDim !== spec.hiddenSize;
    const projectIn = projected ? upload<tf.Rank.R2>(g.projectIn, [spec.embedDim, spec.hiddenSize], "project_in") : undefined;
    const projectOut = projected ? upload<tf.Rank.R2>(g.projectOut, [spec.hiddenSize, spec.embedDim], "project_out") : undefined;
    return { embed, positions, finalNorm, lmHead, projectIn, projectOut };
  } catch (e) {
    tf.dispose(made);
    throw e;
  }
};

const globalTensorList = (g: GlobalTensors): tf.Tensor[] => {
  const all: (tf.Tensor | undefined)[] = [g.embed, g.positions, g.finalNorm?.weight, g.finalNorm?.bias, g.lmHead, g.projectIn, g.projectOut];
  return all.filter((t): t is tf.Tensor => t !== undefined);
};

const isBlockTensors = (w: HostBlock | BlockTensors): w is BlockTensors => w.attnNorm?.weight instanceof tf.Tensor;

/**
 * A tensor's values, read asynchronously (GPU backends have no synchronous reads), and the
 * tensor disposed. Bad input is refused before this, synchronously, where it is found.
 */
const readAndDispose = async (t: tf.Tensor): Promise<Float32Array> => {
  try {
    return Float32Array.from((await t.data()) as Float32Array);
  } finally {
    t.dispose();
  }
};

export class Decoder {
  private readonly tables: ForwardTables;
  /** Transposed tied embedding, taken once; absent when the head is untied or trainable. */
  private readonly tiedHead: tf.Tensor2D | undefined;
  /** Resident blocks; in streamed mode only blocks replaced through setBlock. */
  private readonly blocks: (BlockTensors | undefined)[];
  private readonly hostOverrides = new Map<number, HostBlock>();
  private disposed = false;

  private constructor(
    readonly spec: ModelSpec,
    private readonly globals: GlobalTensors,
    private readonly source: BlockSource,
    blocks: (BlockTensors | undefined)[],
    readonly streamed: boolean,
    readonly trainable: boolean,
    private readonly sourceName: string,
  ) {
    this.blocks = blocks;
    this.tables = new ForwardTables(spec);
    this.tiedHead = spec.tiedEmbeddings && !trainable ? tf.transpose(globals.embed) : undefined;
  }

  static create(spec: ModelSpec, globals: HostGlobals, blocks: BlockSource, options: DecoderOptions = {}): Decoder {
    const sourceName = options.source ?? spec.family;
    const streamed = options.streamed ?? false;
    const trainable = options.trainable ?? false;
    if (streamed && trainable) {
      throw new UsageError({ problem: "a trainable model must keep its blocks resident; it cannot be streamed" });
    }
    checkSpec(spec, sourceName);
    if (blocks.numBlocks !== spec.numLayers) {
      throw new CheckpointError({ file: sourceName, problem: `has ${blocks.numBlocks} blocks but the model declares ${spec.numLayers} layers` });
    }
    const g = globalsToTensors(spec, globals, sourceName, trainable);
    const resident: (BlockTensors | undefined)[] = new Array(spec.numLayers).fill(undefined);
    if (!streamed) {
      try {
        for (let i = 0; i < spec.numLayers; i++) {
          resident[i] = blockToTensors(spec, i, blocks.load(i), { source: sourceName, label: `block ${i}`, asVariables: trainable });
        }
      } catch (e) {
        for (const b of resident) if (b) disposeBlock(b);
        tf.dispose(globalTensorList(g));
        throw e;
      }
    }
    return new Decoder(spec, g, blocks, resident, streamed, trainable, sourceName);
  }

  get numBlocks(): number {
    return this.spec.numLayers;
  }

  /** Token (+ learned position) embedding, projected to the hidden size: [batch·seqlen, hidden]. */
  embed(ids: Int32Array, batch: number, seqlen: number): tf.Tensor2D {
    this.checkLive();
    this.checkWindow(ids, batch, seqlen);
    return tf.tidy(() => this.embedIds(ids, batch, seqlen));
  }

  /**
   * Runs block i on x [batch·seqlen, hidden]; x is left to the caller. `observe` sees each
   * prunable linear's input (for calibration statistics).
   */
  runBlock(i: number, x: tf.Tensor2D, batch: number, seqlen: number, observe?: LinearInputObserver): tf.Tensor2D {
    this.checkLive();
    this.checkBlockIndex(i);
    this.checkActivations(x, batch, seqlen);
    const resident = this.blocks[i];
    if (resident) return tf.tidy(() => blockForward(this.spec, i, resident, x, batch, seqlen, this.tables, observe));
    const loaded = blockToTensors(this.spec, i, this.hostOverrides.get(i) ?? this.source.load(i), {
      source: this.sourceName,
      label: `block ${i}`,
    });
    try {
      return tf.tidy(() => blockForward(this.spec, i, loaded, x, batch, seqlen, this.tables, observe));
    } finally {
      disposeBlock(loaded);
    }
  }

  /** Final norm, projection and head for x [rows, hidden]: logits [rows, vocab]. */
  headLogits(x: tf.Tensor2D): tf.Tensor2D {
    this.checkLive();
    if (x.rank !== 2 || x.shape[1] !== this.spec.hiddenSize) {
      throw new UsageError({ problem: `head input must be [rows, ${this.spec.hiddenSize}], got [${x.shape.join(", ")}]` });
    }
    return tf.tidy(() => matMul2d(this.headInput(x), this.headWeight()));
  }

  /**
   * Sum of next-token negative log-likelihoods over the scored positions and their count.
   * targets[i] is the token expected after position i; negative means "not scored".
   * Only the final scalar leaves the backend, read asynchronously (GPU backends have no
   * synchronous reads).
   */
  nll(ids: Int32Array, targets: Int32Array, batch: number, seqlen: number): Promise<{ nll: number; count: number }> {
    const { parts, count } = this.headChunks(ids, targets, batch, seqlen, (logits, scoredTargets) => weightedNllSum(logits, tf.tensor1d(scoredTargets, "int32"), tf.ones([scoredTargets.length])));
    if (count === 0) return Promise.resolve({ nll: 0, count: 0 });
    const total = tf.tidy(() => sumAll(parts));
    // A single part is its own sum.
    tf.dispose(parts.filter((t) => t !== total));
    return readAndDispose(total).then((values) => ({ nll: values[0]!, count }));
  }

  /**
   * `f` applied to the head logits of the scored positions (targets[i] >= 0), at most
   * HEAD_ROWS rows at a time, in order: f gets the chunk's logits [n, vocab], its targets and
   * the index of its first row among the scored positions. The tensors f returns are kept
   * (the caller disposes them); everything else is freed. For per-token scores beyond the
   * NLL (the KL divergence from a reference distribution), without pulling logits back.
   */
  headChunks<T extends tf.Tensor>(
    ids: Int32Array,
    targets: Int32Array,
    batch: number,
    seqlen: number,
    f: (logits: tf.Tensor2D, targets: Int32Array, first: number) => T,
  ): { parts: T[]; count: number } {
    this.checkLive();
    this.checkWindow(ids, batch, seqlen);
    const scored = this.scoredPositions(targets, ids.length);
    if (scored.rows.length === 0) return { parts: [], count: 0 };
    const x = this.hiddenStates(ids, batch, seqlen);
    try {
      const parts = tf.tidy(() => {
        const rows = scored.rows.length === ids.length ? x : copyRows(x, scored.rows);
        const head = this.headWeight();
        const picked = this.headInput(rows);
        const out: T[] = [];
        for (let start = 0; start < scored.rows.length; start += HEAD_ROWS) {
          const n = Math.min(HEAD_ROWS, scored.rows.length - start);
          out.push(tf.tidy(() => f(tf.matMul(takeRange(picked, 0, start, n), head), scored.targets.subarray(start, start + n), start)));
        }
        return out;
      });
      return { parts, count: scored.rows.length };
    } finally {
      x.dispose();
    }
  }

  /**
   * Mean next-token NLL over the scored positions as a differentiable scalar, for tf.grad or
   * tf.variableGrads (with `trainable`, every weight is a variable; see `parameters`).
   * `transform` replaces a block's tensors inside the graph by ones computed from them
   * (low-rank adapters added to the weights, soft masks multiplied in), so gradients reach
   * whatever variables the transform uses while the model's own weights stay constant.
   */
  lossTensor(ids: Int32Array, targets: Int32Array, batch: number, seqlen: number, transform?: BlockTransform): tf.Scalar {
    this.checkLive();
    if (this.streamed) {
      throw new UsageError({ problem: "a differentiable loss needs resident weights; create the model without streaming" });
    }
    this.checkWindow(ids, batch, seqlen);
    const scored = this.scoredPositions(targets, ids.length);
    if (scored.rows.length === 0) throw new UsageError({ problem: "no position is scored: every target is negative" });
    const rows = ids.length;
    const safeTargets = new Int32Array(rows);
    const weights = new Float32Array(rows);
    for (let i = 0; i < rows; i++) {
      if (targets[i] >= 0) {
        safeTargets[i] = targets[i];
        weights[i] = 1;
      }
    }
    return tf.tidy(() => {
      let x = this.embedIds(ids, batch, seqlen);
      for (let i = 0; i < this.spec.numLayers; i++) {
        const block = transform ? transform(i, this.blocks[i]!) : this.blocks[i]!;
        x = blockForward(this.spec, i, block, x, batch, seqlen, this.tables);
      }
      const picked = this.headInput(x);
      const head = this.headWeight();
      const parts: tf.Scalar[] = [];
      for (let start = 0; start < rows; start += HEAD_ROWS) {
        const n = Math.min(HEAD_ROWS, rows - start);
        if (!weights.subarray(start, start + n).some((w) => w > 0)) continue;
        parts.push(
          weightedNllSum(
            matMul2d(takeRange(picked, 0, start, n), head),
            tf.tensor1d(safeTargets.subarray(start, start + n), "int32"),
            tf.tensor1d(weights.subarray(start, start + n)),
          ),
        );
      }
      return tf.div(sumAll(parts), scored.rows.length);
    });
  }

  /** Logits of one position of a single sequence, for greedy decoding. */
  logitsAt(ids: Int32Array, position: number = ids.length - 1): Promise<Float32Array> {
    this.checkLive();
    if (!Number.isInteger(position) || position < 0 || position >= ids.length) {
      throw new UsageError({ problem: `position ${position} is outside a sequence of ${ids.length} tokens` });
    }
    const x = this.hiddenStates(ids, 1, ids.length);
    let logits: tf.Tensor;
    try {
      logits = tf.tidy(() => matMul2d(this.headInput(takeRange(x, 0, position, 1)), this.headWeight()));
    } finally {
      x.dispose();
    }
    return readAndDispose(logits);
  }

  /**
   * Replaces block i. Host weights are uploaded (as variables when trainable); block tensors
   * are taken over as they are and disposed with the model. The previous tensors are disposed.
   */
  setBlock(i: number, w: HostBlock | BlockTensors): void {
    this.checkLive();
    this.checkBlockIndex(i);
    if (this.streamed && !isBlockTensors(w)) {
      // Kept on the host so that streaming still holds one block's tensors at a time.
      this.hostOverrides.set(i, w);
      const previous = this.blocks[i];
      this.blocks[i] = undefined;
      if (previous) disposeBlock(previous);
      return;
    }
    const next = isBlockTensors(w)
      ? this.checkedBlockTensors(w, i)
      : blockToTensors(this.spec, i, w, { source: this.sourceName, label: `block ${i}`, asVariables: this.trainable });
    const previous = this.blocks[i];
    this.blocks[i] = next;
    this.hostOverrides.delete(i);
    if (previous && previous !== next) {
      const keep = new Set(blockTensorList(next));
      tf.dispose(blockTensorList(previous).filter((t) => !keep.has(t)));
    }
  }

  /** The resident tensors of block i (owned by the model: do not dispose). */
  getBlock(i: number): BlockTensors {
    this.checkLive();
    this.checkBlockIndex(i);
    const b = this.blocks[i];
    if (!b) throw new UsageError({ problem: `block ${i} is not resident: the model is streamed` });
    return b;
  }

  getGlobals(): GlobalTensors {
    this.checkLive();
    return this.globals;
  }

  /**
   * Every weight by name ("embed", "blocks.3.attnNorm.weight", "blocks.3.<linear>.bias", ...),
   * resident mode only. With `trainable` these are the tf.Variables an optimizer updates.
   */
  parameters(): Map<string, tf.Tensor> {
    this.checkLive();
    if (this.streamed) throw new UsageError({ problem: "a streamed model has no resident parameters" });
    const out = new Map<string, tf.Tensor>();
    const g = this.globals;
    const put = (name: string, t: tf.Tensor | undefined): void => {
      if (t) out.set(name, t);
    };
    put("embed", g.embed);
    put("positions", g.positions);
    put("finalNorm.weight", g.finalNorm?.weight);
    put("finalNorm.bias", g.finalNorm?.bias);
    put("lmHead", g.lmHead);
    put("projectIn", g.projectIn);
    put("projectOut", g.projectOut);
    this.blocks.forEach((b, i) => {
      if (!b) return;
      for (const [part, n] of [["attnNorm", b.attnNorm], ["mlpNorm", b.mlpNorm]] as const) {
        put(`blocks.${i}.${part}.weight`, n.weight);
        put(`blocks.${i}.${part}.bias`, n.bias);
      }
      for (const [name, l] of Object.entries(b.linears)) {
        put(`blocks.${i}.${name}.weight`, l.weight);
        put(`blocks.${i}.${name}.bias`, l.bias);
      }
    });
    return out;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.blocks) if (b) disposeBlock(b);
    tf.dispose(globalTensorList(this.globals));
    this.tiedHead?.dispose();
    this.tables.dispose();
    this.hostOverrides.clear();
  }

  /** Embedding and every block, one block's intermediates alive at a time. */
  private hiddenStates(ids: Int32Array, batch: number, seqlen: number): tf.Tensor2D {
    let x = this.embed(ids, batch, seqlen);
    try {
      for (let i = 0; i < this.spec.numLayers; i++) {
        const next = this.runBlock(i, x, batch, seqlen);
        x.dispose();
        x = next;
      }
    } catch (e) {
      x.dispose();
      throw e;
    }
    return x;
  }

  private embedIds(ids: Int32Array, batch: number, seqlen: number): tf.Tensor2D {
    const g = this.globals;
    let x = embeddingLookup(g.embed, ids);
    if (g.projectIn) x = matMul2d(x, g.projectIn);
    if (g.positions && this.spec.positions.kind === "learned") {
      const hidden = this.spec.hiddenSize;
      const table = takeRange(g.positions, 0, this.spec.positions.offset, seqlen);
      x = tf.reshape(tf.add(tf.reshape(x, [batch, seqlen * hidden]), tf.reshape(table, [1, seqlen * hidden])), [
        batch * seqlen,
        hidden,
      ]);
    }
    return x;
  }

  private headInput(x: tf.Tensor2D): tf.Tensor2D {
    const g = this.globals;
    let h = g.finalNorm ? normalize(this.spec, x, g.finalNorm) : x;
    if (g.projectOut) h = matMul2d(h, g.projectOut);
    return h;
  }

  /** [embedDim, vocab]; a trainable tied head is transposed inside the graph so gradients reach the embedding. */
  private headWeight(): tf.Tensor2D {
    return this.globals.lmHead ?? this.tiedHead ?? tf.transpose(this.globals.embed);
  }

  private scoredPositions(targets: Int32Array, rows: number): { rows: Int32Array; targets: Int32Array } {
    if (!(targets instanceof Int32Array) || targets.length !== rows) {
      throw new UsageError({ problem: `expected ${rows} targets as an Int32Array, got ${targets?.length ?? "none"}` });
    }
    let count = 0;
    for (let i = 0; i < rows; i++) {
      const t = targets[i];
      if (t < 0) continue;
      if (t >= this.spec.vocabSize) {
        throw new DataError({ file: this.sourceName, problem: `target token ${t} at position ${i} is outside the vocabulary of ${this.spec.vocabSize}` });
      }
      count++;
    }
    const scoredRows = new Int32Array(count);
    const scoredTargets = new Int32Array(count);
    for (let i = 0, j = 0; i < rows; i++) {
      if (targets[i] < 0) continue;
      scoredRows[j] = i;
      scoredTargets[j++] = targets[i];
    }
    return { rows: scoredRows, targets: scoredTargets };
  }

  private checkWindow(ids: Int32Array, batch: number, seqlen: number): void {
    if (!Number.isInteger(batch) || batch < 1 || !Number.isInteger(seqlen) || seqlen < 1) {
      throw new UsageError({ problem: `batch and window length must be positive integers, got ${batch} and ${seqlen}` });
    }
    if (!(ids instanceof Int32Array) || ids.length !== batch * seqlen) {
      throw new UsageError({ problem: `expected ${batch}×${seqlen} token ids as an Int32Array, got ${ids?.length ?? "none"}` });
    }
    const span = this.spec.slidingWindow;
    if (span !== undefined && seqlen > span) {
      throw new UsageError({
        problem: `a window of ${seqlen} tokens exceeds the model's sliding attention span of ${span}, which full attention would not reproduce`,
      });
    }
    const p = this.spec.positions;
    if (p.kind === "learned" && this.globals.positions && seqlen + p.offset > this.globals.positions.shape[0]) {
      throw new UsageError({
        problem: `a window of ${seqlen} tokens is longer than the ${this.globals.positions.shape[0] - p.offset} positions the model has`,
      });
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0 || id >= this.spec.vocabSize) {
        throw new DataError({ file: this.sourceName, problem: `token ${id} at position ${i} is outside the vocabulary of ${this.spec.vocabSize}` });
      }
    }
  }

  private checkActivations(x: tf.Tensor2D, batch: number, seqlen: number): void {
    if (x.rank !== 2 || x.shape[0] !== batch * seqlen || x.shape[1] !== this.spec.hiddenSize) {
      throw new UsageError({
        problem: `block input must be [${batch * seqlen}, ${this.spec.hiddenSize}], got [${x.shape.join(", ")}]`,
      });
    }
  }

  private checkBlockIndex(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.spec.numLayers) {
      throw new UsageError({ problem: `block ${i} does not exist: the model has ${this.spec.numLayers} blocks` });
    }
  }

  private checkLive(): void {
    if (this.disposed) throw new UsageError({ problem: "the model has been disposed" });
  }

  private checkedBlockTensors(w: BlockTensors, i: number): BlockTensors {
    const hidden = [this.spec.hiddenSize];
    const fail = (where: string, got: readonly number[], want: readonly number[]): never => {
      throw new CheckpointError({
        file: this.sourceName,
        problem: `block ${i} ${where} has shape [${got.join(", ")}] but the model needs [${want.join(", ")}]`,
      });
    };
    for (const [where, n] of [["attention norm", w.attnNorm], ["MLP norm", w.mlpNorm]] as const) {
      if (n.weight.shape[0] !== hidden[0] || n.weight.rank !== 1) fail(`${where} weight`, n.weight.shape, hidden);
    }
    const shapes = Object.entries(linearShapes(this.spec, i));
    for (const [name, shape] of shapes) {
      const l = w.linears[name];
      if (!l) throw new CheckpointError({ file: this.sourceName, problem: `block ${i} linear ${name} is missing` });
      if (l.weight.shape[0] !== shape[0] || l.weight.shape[1] !== shape[1]) fail(`linear ${name} weight`, l.weight.shape, shape);
    }
    return w;
  }
}
