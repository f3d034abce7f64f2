/**
 * The generic decoder: embedding, blocks and LM head of any supported family, driven by a
 * ModelSpec. Blocks are either all resident as tensors or streamed: each block is uploaded
 * when it runs (straight from the checkpoint's bytes where the source offers them) and
 * freed after, while the next one is read from disk. A pass over many windows runs block
 * by block, each block loaded once for all of them, so streaming costs one read of the
 * model per pass, not per window. The embedding is read by rows and the head by
 * vocabulary chunks (head.ts): no vocabulary-sized float32 buffer is needed.
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointError, DataError, UsageError } from "../errors.ts";
import { hostGlobalSource, type GlobalSource, type HostGlobals, type HostNorm, type ModelSpec, type NormOf, type SourceBlock, type TensorLike } from "./spec.ts";
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
import { Head, logAddExp, logitsAtTokens, rowLogSumExp, type VocabRange } from "./head.ts";

export { blockForward, blockToTensors, disposeBlock, type BlockTensors, type LinearInputObserver } from "./block.ts";
export type { LinearTensors, NormTensors } from "./ops.ts";
export { ForwardTables } from "./tables.ts";
export type { VocabRange } from "./head.ts";

/** Where block weights come from; `load` may read from disk on every call. */
export interface BlockSource {
  readonly numBlocks: number;
  load(index: number): SourceBlock;
  /**
   * Starts reading block `index` so that a later `load` finds it in memory; resolves once it
   * has. Streamed passes ask for block i + 1 while block i computes.
   */
  prefetch?(index: number): Promise<void>;
}

/** Block i's tensors as the loss should see them, computed from the resident ones. */
export type BlockTransform = (block: number, tensors: BlockTensors) => BlockTensors;

export interface DecoderOptions {
  /** Load each block when it runs and dispose it right after (only one block resident). */
  readonly streamed?: boolean;
  /** Upload each head chunk when a pass uses it instead of keeping the head on the backend. */
  readonly streamedHead?: boolean;
  /** Hold every weight as a trainable tf.Variable (resident mode only), for tf.variableGrads and optimizers. */
  readonly trainable?: boolean;
  /** Names the checkpoint in error messages. */
  readonly source?: string;
  /** Vocabulary columns per head chunk (default: as many as HEAD_CHUNK_BYTES holds). */
  readonly headColumns?: number;
  /** Tokens a pass over many windows may hold at once (default: 256 MiB of hidden states). */
  readonly passTokens?: number;
}

/** Windows of one length run together: ids of `batch` windows of `seqlen` tokens, one after another. */
export interface WindowGroup {
  readonly ids: Int32Array;
  /** targets[i] is the token expected after position i; negative means "not scored". */
  readonly targets: Int32Array;
  readonly batch: number;
  readonly seqlen: number;
}

/** The globals of a trainable model, every one a variable. */
interface TrainableGlobals {
  readonly embed: tf.Tensor2D;
  readonly lmHead?: tf.Tensor2D;
}

interface SmallGlobals {
  readonly positions?: tf.Tensor2D;
  readonly finalNorm?: NormTensors;
  readonly projectIn?: tf.Tensor2D;
  readonly projectOut?: tf.Tensor2D;
}


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

const isHostGlobals = (g: HostGlobals | GlobalSource): g is HostGlobals => (g as HostGlobals).embed !== undefined;

/** Uploads what lies outside blocks and head: the position table, final norm and OPT's projections. */
const smallGlobals = (spec: ModelSpec, g: GlobalSource | HostGlobals, source: string, asVariables: boolean): SmallGlobals => {
  const made: tf.Tensor[] = [];
  const upload = <R extends tf.Rank>(t: TensorLike | undefined, shape: number[], where: string) => {
    const tensor = hostToTensor<R>(checkHostTensor(t, shape, source, where), asVariables, where);
    made.push(tensor);
    return tensor;
  };
  const norm = (n: NormOf<TensorLike> | HostNorm | undefined, where: string): NormTensors => {
    if (!n) throw new CheckpointError({ file: source, problem: `${where} is missing` });
    const weight = upload<tf.Rank.R1>(n.weight, [spec.hiddenSize], `${where} weight`);
    return n.bias ? { weight, bias: upload<tf.Rank.R1>(n.bias, [spec.hiddenSize], `${where} bias`) } : { weight };
  };
  try {
    let positions: tf.Tensor2D | undefined;
    if (spec.positions.kind === "learned") {
      const rows = g.positions?.shape[0] ?? 0;
      if (rows <= spec.positions.offset) {
        throw new CheckpointError({ file: source, problem: `the learned position table has ${rows} rows, too few for offset ${spec.positions.offset}` });
      }
      positions = upload<tf.Rank.R2>(g.positions, [rows, spec.hiddenSize], "position table");
    }
    const finalNorm = spec.finalNorm ? norm(g.finalNorm, "final norm") : undefined;
    const projected = spec.embedDim !== spec.hiddenSize;
    const projectIn = projected ? upload<tf.Rank.R2>(g.projectIn, [spec.embedDim, spec.hiddenSize], "project_in") : undefined;
    const projectOut = projected ? upload<tf.Rank.R2>(g.projectOut, [spec.hiddenSize, spec.embedDim], "project_out") : undefined;
    return { positions, finalNorm, projectIn, projectOut };
  } catch (e) {
    tf.dispose(made);
    throw e;
  }
};

const smallGlobalList = (g: SmallGlobals): tf.Tensor[] => {
  const all: (tf.Tensor | undefined)[] = [g.positions, g.finalNorm?.weight, g.finalNorm?.bias, g.projectIn, g.projectOut];
  return all.filter((t): t is tf.Tensor => t !== undefined);
};

/** What a decoder holds outside its blocks. */
interface GlobalParts {
  readonly small: SmallGlobals;
  readonly trainable?: TrainableGlobals;
  readonly source?: GlobalSource;
  readonly head?: Head;
}

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

/** The scored positions of a group: their rows and targets. */
interface Scored {
  readonly rows: Int32Array;
  readonly targets: Int32Array;
}

/**
 * One block of at most HEAD_ROWS scored rows of one group, as `headScan` hands it over:
 * which group, the index of its first row among the group's scored rows, its targets.
 */
export interface HeadRows {
  readonly group: number;
  readonly first: number;
  readonly targets: Int32Array;
}

/** Head rows per matMul: bounds the logits tensor (rows × chunk) whatever the vocabulary. */
export const HEAD_ROWS = 256;

/**
 * Activation bytes a pass may hold by default: every window's hidden states are alive
 * between blocks (input and output, float32). The memory plan may set its own.
 */
const PASS_BYTES = 256 * 2 ** 20;

export class Decoder {
  private readonly tables: ForwardTables;
  /** Resident blocks; in streamed mode only blocks replaced through setBlock with tensors. */
  private readonly blocks: (BlockTensors | undefined)[];
  private readonly overrides = new Map<number, SourceBlock>();
  private readonly small: SmallGlobals;
  /** A trainable model's embedding and untied head (variables); absent otherwise. */
  private readonly trainableGlobals: TrainableGlobals | undefined;
  /** The embedding rows and head chunks of a model that is not trainable. */
  private readonly globalSource: GlobalSource | undefined;
  private readonly head: Head | undefined;
  private disposed = false;

  private constructor(
    readonly spec: ModelSpec,
    parts: GlobalParts,
    private readonly source: BlockSource,
    blocks: (BlockTensors | undefined)[],
    readonly streamed: boolean,
    readonly trainable: boolean,
    private readonly sourceName: string,
    /** Tokens a pass over many windows may hold at once. */
    readonly passTokens: number,
  ) {
    this.blocks = blocks;
    this.tables = new ForwardTables(spec);
    this.small = parts.small;
    this.trainableGlobals = parts.trainable;
    this.globalSource = parts.source;
    this.head = parts.head;
  }

  static create(spec: ModelSpec, globals: HostGlobals | GlobalSource, blocks: BlockSource, options: DecoderOptions = {}): Decoder {
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
    const made: tf.Tensor[] = [];
    let head: Head | undefined;
    const resident: (BlockTensors | undefined)[] = new Array(spec.numLayers).fill(undefined);
    try {
      const small = smallGlobals(spec, globals, sourceName, trainable);
      made.push(...smallGlobalList(small));
      let parts: GlobalParts;
      if (trainable) {
        if (!isHostGlobals(globals)) throw new UsageError({ problem: "a trainable model needs its globals in host memory" });
        const embed = hostToTensor<tf.Rank.R2>(checkHostTensor(globals.embed, [spec.vocabSize, spec.embedDim], sourceName, "token embedding"), true, "token embedding");
        made.push(embed);
        const lmHead = spec.tiedEmbeddings
          ? undefined
          : hostToTensor<tf.Rank.R2>(checkHostTensor(globals.lmHead, [spec.embedDim, spec.vocabSize], sourceName, "LM head"), true, "LM head");
        if (lmHead) made.push(lmHead);
        parts = { small, trainable: { embed, ...(lmHead ? { lmHead } : {}) } };
      } else {
        if (isHostGlobals(globals)) {
          checkHostTensor(globals.embed, [spec.vocabSize, spec.embedDim], sourceName, "token embedding");
          if (!spec.tiedEmbeddings) checkHostTensor(globals.lmHead, [spec.embedDim, spec.vocabSize], sourceName, "LM head");
        }
        const source = isHostGlobals(globals) ? hostGlobalSource(spec, globals) : globals;
        head = new Head(spec, source, !(options.streamedHead ?? false), options.headColumns);
        parts = { small, source, head };
      }
      if (!streamed) {
        for (let i = 0; i < spec.numLayers; i++) {
          resident[i] = blockToTensors(spec, i, blocks.load(i), { source: sourceName, label: `block ${i}`, asVariables: trainable });
        }
      }
      const passTokens = options.passTokens ?? Math.max(1, Math.floor(PASS_BYTES / (8 * spec.hiddenSize)));
      return new Decoder(spec, parts, blocks, resident, streamed, trainable, sourceName, passTokens);
    } catch (e) {
      for (const b of resident) if (b) disposeBlock(b);
      head?.dispose();
      tf.dispose(made);
      throw e;
    }
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
   * Block i's tensors for one use: the resident ones, or uploaded (the replacement set with
   * setBlock, else the source's block) and freed by `release`.
   */
  private acquire(i: number): { tensors: BlockTensors; release: () => void } {
    const resident = this.blocks[i];
    if (resident) return { tensors: resident, release: () => {} };
    const tensors = blockToTensors(this.spec, i, this.overrides.get(i) ?? this.source.load(i), { source: this.sourceName, label: `block ${i}` });
    return { tensors, release: () => disposeBlock(tensors) };
  }

  /**
   * Runs block i on x [batch·seqlen, hidden]; x is left to the caller. `observe` sees each
   * prunable linear's input (for calibration statistics).
   */
  runBlock(i: number, x: tf.Tensor2D, batch: number, seqlen: number, observe?: LinearInputObserver): tf.Tensor2D {
    return this.withBlockSync(i, (run) => run(x, batch, seqlen, observe));
  }

  /**
   * Runs block i on every input, the block loaded once: outputs in input order; inputs are
   * left to the caller.
   */
  runBlockAll(i: number, inputs: readonly tf.Tensor2D[], batches: readonly number[], seqlen: number, observe?: (input: number) => LinearInputObserver | undefined): tf.Tensor2D[] {
    return this.withBlockSync(i, (run) => {
      const outputs: tf.Tensor2D[] = [];
      try {
        inputs.forEach((x, k) => outputs.push(run(x, batches[k]!, seqlen, observe?.(k))));
      } catch (e) {
        tf.dispose(outputs);
        throw e;
      }
      return outputs;
    });
  }

  /** `f` with block i acquired once: `run` applies it to an input (left to the caller). */
  private withBlockSync<T>(i: number, f: (run: BlockRunner) => T): T {
    this.checkLive();
    this.checkBlockIndex(i);
    const { tensors, release } = this.acquire(i);
    try {
      return f((x, batch, seqlen, observe) => {
        this.checkActivations(x, batch, seqlen);
        return tf.tidy(() => blockForward(this.spec, i, tensors, x, batch, seqlen, this.tables, observe));
      });
    } finally {
      release();
    }
  }

  /** The asynchronous form of runBlockAll's loop: `f` may await (reads of statistics) between inputs. */
  async withBlock<T>(i: number, f: (run: BlockRunner) => Promise<T>): Promise<T> {
    this.checkLive();
    this.checkBlockIndex(i);
    const { tensors, release } = this.acquire(i);
    try {
      return await f((x, batch, seqlen, observe) => {
        this.checkActivations(x, batch, seqlen);
        return tf.tidy(() => blockForward(this.spec, i, tensors, x, batch, seqlen, this.tables, observe));
      });
    } finally {
      release();
    }
  }

  /** Reads block i ahead when it will be uploaded from its source (streamed and not replaced). */
  prefetch(i: number): Promise<void> {
    if (i < 0 || i >= this.spec.numLayers || this.blocks[i] || this.overrides.has(i) || !this.source.prefetch) return Promise.resolve();
    return this.source.prefetch(i);
  }

  /**
   * The hidden states after the last block of every group, each block run on all groups
   * before the next (loaded once per pass; the next block read while this one computes).
   */
  async hiddenStatesAll(groups: readonly Pick<WindowGroup, "ids" | "batch" | "seqlen">[], onBlock?: (block: number) => void): Promise<tf.Tensor2D[]> {
    this.checkLive();
    let xs: tf.Tensor2D[] = [];
    try {
      for (const g of groups) xs.push(this.embed(g.ids, g.batch, g.seqlen));
      let ahead = this.prefetch(0);
      for (let i = 0; i < this.spec.numLayers; i++) {
        await ahead;
        ahead = this.prefetch(i + 1);
        const seqlens = new Set(groups.map((g) => g.seqlen));
        let next: tf.Tensor2D[];
        if (seqlens.size === 1) {
          next = this.runBlockAll(i, xs, groups.map((g) => g.batch), groups[0]!.seqlen);
        } else {
          next = this.withBlockSync(i, (run) => xs.map((x, k) => run(x, groups[k]!.batch, groups[k]!.seqlen)));
        }
        tf.dispose(xs);
        xs = next;
        onBlock?.(i);
      }
      await ahead;
      return xs;
    } catch (e) {
      tf.dispose(xs);
      throw e;
    }
  }

  /** Final norm, projection and head for x [rows, hidden]: logits [rows, vocab]. */
  headLogits(x: tf.Tensor2D): tf.Tensor2D {
    this.checkLive();
    if (x.rank !== 2 || x.shape[1] !== this.spec.hiddenSize) {
      throw new UsageError({ problem: `head input must be [rows, ${this.spec.hiddenSize}], got [${x.shape.join(", ")}]` });
    }
    return tf.tidy(() => {
      const input = this.headInput(x);
      const parts = this.vocabChunks.map((_, c) => this.withHeadChunk(c, (w) => matMul2d(input, w)));
      return parts.length === 1 ? parts[0]! : (tf.concat(parts, 1) as tf.Tensor2D);
    });
  }

  /** Head chunk c's weight [embedDim, count] for the duration of `f` (a trainable model's whole head). */
  private withHeadChunk<T>(c: number, f: (weight: tf.Tensor2D, range: VocabRange) => T): T {
    if (!this.trainableGlobals) return this.head!.with(c, f);
    const weight = this.trainableHead();
    try {
      return f(weight, { start: 0, count: this.spec.vocabSize });
    } finally {
      if (weight !== this.trainableGlobals.lmHead) weight.dispose();
    }
  }

  /** Chunks of the head this model computes logits in. */
  get vocabChunks(): readonly VocabRange[] {
    return this.head?.chunks ?? [{ start: 0, count: this.spec.vocabSize }];
  }

  /**
   * The head over the scored positions of every group. For each vocabulary chunk (acquired
   * once for the whole scan) and each block of at most HEAD_ROWS scored rows of each group,
   * `perChunk` gets the logits [n, chunk] and returns tensors to keep; after the last chunk,
   * `combine` turns a row block's parts (in chunk order) into its result. Results come per
   * group, per row block in order; the caller disposes them. Nothing else is kept.
   */
  headScan<P extends tf.Tensor | tf.Tensor[], R extends tf.Tensor | tf.Tensor[]>(
    finals: readonly tf.Tensor2D[],
    scored: readonly Scored[],
    perChunk: (logits: tf.Tensor2D, range: VocabRange, rows: HeadRows) => P,
    combine: (parts: P[], rows: HeadRows) => R,
  ): R[][] {
    this.checkLive();
    const picked: tf.Tensor2D[] = [];
    const partsOf: P[][] = [];
    const blocks: HeadRows[] = [];
    try {
      finals.forEach((x, g) => {
        const s = scored[g]!;
        if (s.rows.length === 0) {
          picked.push(undefined as unknown as tf.Tensor2D);
          return;
        }
        picked.push(tf.tidy(() => this.headInput(s.rows.length === x.shape[0] ? x : copyRows(x, s.rows))));
        for (let first = 0; first < s.rows.length; first += HEAD_ROWS) {
          blocks.push({ group: g, first, targets: s.targets.subarray(first, Math.min(first + HEAD_ROWS, s.rows.length)) });
          partsOf.push([]);
        }
      });
      this.vocabChunks.forEach((_, c) =>
        this.withHeadChunk(c, (weight, range) => {
          blocks.forEach((b, k) => {
            partsOf[k]!.push(tf.tidy(() => perChunk(matMul2d(takeRange(picked[b.group]!, 0, b.first, b.targets.length), weight), range, b)));
          });
        }),
      );
      const results: R[][] = finals.map(() => []);
      blocks.forEach((b, k) => results[b.group]!.push(tf.tidy(() => combine(partsOf[k]!, b))));
      return results;
    } finally {
      tf.dispose(picked.filter((t) => t !== undefined));
      for (const parts of partsOf) tf.dispose(parts as unknown as tf.TensorContainer);
    }
  }

  /**
   * Sum of next-token negative log-likelihoods over the scored positions and their count.
   * targets[i] is the token expected after position i; negative means "not scored".
   * Only the final scalar leaves the backend, read asynchronously (GPU backends have no
   * synchronous reads).
   */
  nll(ids: Int32Array, targets: Int32Array, batch: number, seqlen: number): Promise<{ nll: number; count: number }> {
    return this.nllGroups([{ ids, targets, batch, seqlen }]).then((r) => r[0]!);
  }

  /**
   * `nll` of every group, in one pass: each block loaded once for all of them. Bad input is
   * refused synchronously, before anything runs.
   */
  nllGroups(groups: readonly WindowGroup[], onBlock?: (block: number) => void): Promise<{ nll: number; count: number }[]> {
    this.checkLive();
    const scored = groups.map((g) => {
      this.checkWindow(g.ids, g.batch, g.seqlen);
      return this.scoredPositions(g.targets, g.ids.length);
    });
    return this.scoredNll(groups, scored, onBlock);
  }

  private async scoredNll(groups: readonly WindowGroup[], scored: readonly Scored[], onBlock?: (block: number) => void): Promise<{ nll: number; count: number }[]> {
    const finals = await this.hiddenStatesAll(groups, onBlock);
    let sums: tf.Scalar[];
    try {
      const results = this.headScan(finals, scored, ...nllParts(this.vocabChunks.length));
      sums = results.map((parts) => (parts.length === 0 ? tf.scalar(0) : tf.tidy(() => sumAll(parts))));
      for (const parts of results) tf.dispose(parts.filter((t) => !sums.includes(t)));
    } finally {
      tf.dispose(finals);
    }
    const values = await Promise.all(sums.map((t) => readAndDispose(t)));
    return values.map((v, g) => ({ nll: scored[g]!.rows.length === 0 ? 0 : v[0]!, count: scored[g]!.rows.length }));
  }

  /** The scored positions of a group (targets >= 0), checked against the vocabulary. */
  scored(targets: Int32Array, rows: number): Scored {
    return this.scoredPositions(targets, rows);
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
      const parts: tf.Scalar[] = [];
      for (let start = 0; start < rows; start += HEAD_ROWS) {
        const n = Math.min(HEAD_ROWS, rows - start);
        if (!weights.subarray(start, start + n).some((w) => w > 0)) continue;
        const input = takeRange(picked, 0, start, n);
        const t = safeTargets.subarray(start, start + n);
        const w = weights.subarray(start, start + n);
        parts.push(this.differentiableNll(input, t, w));
      }
      return tf.div(sumAll(parts), scored.rows.length);
    });
  }

  /** Σ w·(lse − target logit) over rows, differentiable, over the head's chunks. */
  private differentiableNll(input: tf.Tensor2D, targets: Int32Array, weights: Float32Array): tf.Scalar {
    if (this.trainableGlobals) return weightedNllSum(matMul2d(input, this.trainableHead()), tf.tensor1d(targets, "int32"), tf.tensor1d(weights));
    const head = this.head!;
    if (head.chunks.length === 1) return head.with(0, (w) => weightedNllSum(matMul2d(input, w), tf.tensor1d(targets, "int32"), tf.tensor1d(weights)));
    // Several chunks: the log-sum-exp combined across chunks; the target's logit by a
    // one-hot product (gather's gradient needs a kernel wasm lacks).
    const lses: tf.Tensor1D[] = [];
    const picks: tf.Tensor1D[] = [];
    head.chunks.forEach((_, c) =>
      head.with(c, (w, range) => {
        const z = matMul2d(input, w);
        lses.push(rowLogSumExp(z));
        const local = Int32Array.from(targets, (t) => (t >= range.start && t < range.start + range.count ? t - range.start : -1));
        const oneHot = tf.cast(tf.oneHot(tf.tensor1d(local, "int32"), range.count), "float32");
        picks.push(tf.sum(tf.mul(z, oneHot), 1) as tf.Tensor1D);
      }),
    );
    return tf.sum(tf.mul(tf.sub(logAddExp(lses), sumAll(picks)), tf.tensor1d(weights))) as tf.Scalar;
  }

  /**
   * Gradients of each window's mean next-token loss, block by block from the top. The
   * forward runs block by block over every window, keeping each block's inputs; then, from
   * the last block down, block i is acquired once more and, for each window, differentiated
   * on its own (tf.grads of its forward, given the upstream gradient of its output), which
   * also gives the gradient of its input for the block below. Only one block's weights and
   * graph are alive at a time, so a streamed model larger than the backend's memory has
   * gradients too, and a resident one gets the same numbers. `wrt` picks the block's
   * tensors to differentiate; `onBlock` gets their gradients for one window (disposed after
   * it returns), windows in order, blocks from the last to the first; `afterBlock` is
   * called once a block has seen every window. The model's weights are never variables.
   */
  async blockwiseGradients(
    windows: readonly { readonly ids: Int32Array; readonly targets: Int32Array }[],
    wrt: (block: number, tensors: BlockTensors) => tf.Tensor[],
    onBlock: (block: number, window: number, grads: tf.Tensor[]) => void | Promise<void>,
    options: { readonly transform?: BlockTransform; readonly afterBlock?: (block: number) => void | Promise<void> } = {},
  ): Promise<void> {
    this.checkLive();
    if (this.trainableGlobals) throw new UsageError({ problem: "block-wise gradients are for a model whose weights are not variables" });
    const transform = options.transform;
    const scored = windows.map(({ ids, targets }) => {
      this.checkWindow(ids, 1, ids.length);
      const s = this.scoredPositions(targets, ids.length);
      if (s.rows.length === 0) throw new UsageError({ problem: "no position is scored: every target is negative" });
      return s;
    });
    // inputs[i][w]: block i's input for window w.
    const inputs: tf.Tensor2D[][] = [];
    let upstream: tf.Tensor2D[] = [];
    try {
      let xs = windows.map(({ ids }) => this.embed(ids, 1, ids.length));
      let ahead = this.prefetch(0);
      for (let i = 0; i < this.spec.numLayers; i++) {
        await ahead;
        ahead = this.prefetch(i + 1);
        inputs.push(xs);
        const current = xs;
        const { tensors, release } = this.acquire(i);
        try {
          xs = [];
          for (const [w, x] of current.entries()) {
            xs.push(tf.tidy(() => blockForward(this.spec, i, transform ? transform(i, tensors) : tensors, x, 1, windows[w]!.ids.length, this.tables)));
          }
        } finally {
          release();
        }
      }
      await ahead;
      // The head's gradient with respect to the last block's output.
      upstream = xs.map((final, w) => tf.tidy(() => tf.grad((h: tf.Tensor) => this.headLoss(h as tf.Tensor2D, windows[w]!.targets, scored[w]!.rows.length))(final) as tf.Tensor2D));
      tf.dispose(xs);
      // Backward, block by block from the top.
      for (let i = this.spec.numLayers - 1; i >= 0; i--) {
        const { tensors, release } = this.acquire(i);
        try {
          const picked = wrt(i, tensors);
          for (let w = 0; w < windows.length; w++) {
            const seqlen = windows[w]!.ids.length;
            const dy = upstream[w]!;
            const grads = tf.tidy(() =>
              tf.grads((xIn: tf.Tensor, ...ws: tf.Tensor[]) => {
                const replaced = replaceTensors(tensors, picked, ws);
                return blockForward(this.spec, i, transform ? transform(i, replaced) : replaced, xIn as tf.Tensor2D, 1, seqlen, this.tables);
              })([inputs[i]![w]!, ...picked], dy),
            );
            try {
              await onBlock(i, w, grads.slice(1));
            } finally {
              tf.dispose(grads.slice(1));
            }
            dy.dispose();
            upstream[w] = grads[0] as tf.Tensor2D;
          }
        } finally {
          release();
        }
        tf.dispose(inputs[i]!);
        inputs[i] = [];
        await options.afterBlock?.(i);
      }
    } finally {
      for (const xsAt of inputs) tf.dispose(xsAt);
      tf.dispose(upstream);
    }
  }

  /** Mean NLL over the scored positions of one window, differentiable in the last block's output h. */
  private headLoss(h: tf.Tensor2D, targets: Int32Array, count: number): tf.Scalar {
    const rows = targets.length;
    const safeTargets = new Int32Array(rows);
    const weights = new Float32Array(rows);
    for (let i = 0; i < rows; i++) {
      if (targets[i]! >= 0) {
        safeTargets[i] = targets[i]!;
        weights[i] = 1;
      }
    }
    const picked = this.headInput(h);
    const parts: tf.Scalar[] = [];
    for (let start = 0; start < rows; start += HEAD_ROWS) {
      const n = Math.min(HEAD_ROWS, rows - start);
      if (!weights.subarray(start, start + n).some((v) => v > 0)) continue;
      parts.push(this.differentiableNll(takeRange(picked, 0, start, n), safeTargets.subarray(start, start + n), weights.subarray(start, start + n)));
    }
    return tf.div(sumAll(parts), count);
  }

  /** Logits of one position of a single sequence, for greedy decoding. */
  logitsAt(ids: Int32Array, position: number = ids.length - 1): Promise<Float32Array> {
    this.checkLive();
    if (!Number.isInteger(position) || position < 0 || position >= ids.length) {
      throw new UsageError({ problem: `position ${position} is outside a sequence of ${ids.length} tokens` });
    }
    this.checkWindow(ids, 1, ids.length);
    return this.logitsOf(ids, position);
  }

  private async logitsOf(ids: Int32Array, position: number): Promise<Float32Array> {
    const [x] = await this.hiddenStatesAll([{ ids, batch: 1, seqlen: ids.length }]);
    let logits: tf.Tensor;
    try {
      logits = tf.tidy(() => this.headLogits(takeRange(x!, 0, position, 1)));
    } finally {
      x!.dispose();
    }
    return readAndDispose(logits);
  }

  /**
   * Replaces block i. A block whose tensors are on the host or in the checkpoint is
   * uploaded (as variables when trainable), or in streamed mode kept as it is and uploaded
   * when the block runs; block tensors are taken over as they are and disposed with the
   * model. The previous tensors are disposed.
   */
  setBlock(i: number, w: SourceBlock | BlockTensors): void {
    this.checkLive();
    this.checkBlockIndex(i);
    if (this.streamed && !isBlockTensors(w)) {
      this.overrides.set(i, w);
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
    this.overrides.delete(i);
    if (previous && previous !== next) {
      const keep = new Set(blockTensorList(next));
      tf.dispose(blockTensorList(previous).filter((t) => !keep.has(t)));
    }
  }

  /**
   * Puts the source's own block i back: a streamed model drops its replacement, a resident
   * one uploads the source's block again (when it was replaced).
   */
  restoreBlock(i: number): void {
    this.checkLive();
    this.checkBlockIndex(i);
    if (this.streamed) {
      this.overrides.delete(i);
      const previous = this.blocks[i];
      this.blocks[i] = undefined;
      if (previous) disposeBlock(previous);
      return;
    }
    this.setBlock(i, this.source.load(i));
  }

  /** The resident tensors of block i (owned by the model: do not dispose). */
  getBlock(i: number): BlockTensors {
    this.checkLive();
    this.checkBlockIndex(i);
    const b = this.blocks[i];
    if (!b) throw new UsageError({ problem: `block ${i} is not resident: the model is streamed` });
    return b;
  }

  /**
   * Every weight by name ("embed", "blocks.3.attnNorm.weight", "blocks.3.<linear>.bias", ...),
   * resident mode only. With `trainable` these are the tf.Variables an optimizer updates.
   */
  parameters(): Map<string, tf.Tensor> {
    this.checkLive();
    if (this.streamed) throw new UsageError({ problem: "a streamed model has no resident parameters" });
    const out = new Map<string, tf.Tensor>();
    const put = (name: string, t: tf.Tensor | undefined): void => {
      if (t) out.set(name, t);
    };
    const g = this.small;
    put("embed", this.trainableGlobals?.embed);
    put("positions", g.positions);
    put("finalNorm.weight", g.finalNorm?.weight);
    put("finalNorm.bias", g.finalNorm?.bias);
    put("lmHead", this.trainableGlobals?.lmHead);
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
    tf.dispose(smallGlobalList(this.small));
    if (this.trainableGlobals) tf.dispose([this.trainableGlobals.embed, ...(this.trainableGlobals.lmHead ? [this.trainableGlobals.lmHead] : [])]);
    this.head?.dispose();
    this.tables.dispose();
    this.overrides.clear();
  }

  private embedIds(ids: Int32Array, batch: number, seqlen: number): tf.Tensor2D {
    const g = this.small;
    let x = this.trainableGlobals
      ? embeddingLookup(this.trainableGlobals.embed, ids)
      : tf.tensor2d(this.globalSource!.embedRows(ids), [ids.length, this.spec.embedDim]);
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
    const g = this.small;
    let h = g.finalNorm ? normalize(this.spec, x, g.finalNorm) : x;
    if (g.projectOut) h = matMul2d(h, g.projectOut);
    return h;
  }

  /** A trainable model's head [embedDim, vocab]; a tied head is transposed inside the graph so gradients reach the embedding. */
  private trainableHead(): tf.Tensor2D {
    const g = this.trainableGlobals!;
    return g.lmHead ?? tf.transpose(g.embed);
  }

  private scoredPositions(targets: Int32Array, rows: number): Scored {
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
    if (p.kind === "learned" && this.small.positions && seqlen + p.offset > this.small.positions.shape[0]) {
      throw new UsageError({
        problem: `a window of ${seqlen} tokens is longer than the ${this.small.positions.shape[0] - p.offset} positions the model has`,
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

/** Applies an acquired block to an input [batch·seqlen, hidden] (left to the caller). */
export type BlockRunner = (x: tf.Tensor2D, batch: number, seqlen: number, observe?: LinearInputObserver) => tf.Tensor2D;

const isBlockTensors = (w: SourceBlock | BlockTensors): w is BlockTensors => w.attnNorm?.weight instanceof tf.Tensor;

/** The block with each tensor of `from` replaced by the one at the same index of `to`. */
const replaceTensors = (b: BlockTensors, from: readonly tf.Tensor[], to: readonly tf.Tensor[]): BlockTensors => {
  const swap = <T extends tf.Tensor>(t: T): T => {
    const k = from.indexOf(t);
    return (k >= 0 ? to[k] : t) as T;
  };
  const norm = (n: NormTensors): NormTensors => ({ weight: swap(n.weight), ...(n.bias ? { bias: swap(n.bias) } : {}) });
  return {
    attnNorm: norm(b.attnNorm),
    mlpNorm: norm(b.mlpNorm),
    linears: Object.fromEntries(Object.entries(b.linears).map(([name, l]) => [name, { weight: swap(l.weight), ...(l.bias ? { bias: swap(l.bias) } : {}) }])),
  };
};

/**
 * headScan's steps for the NLL sum of a row block: over one chunk, weightedNllSum as one
 * product over the whole vocabulary computes it; over several, each chunk's log-sum-exp and
 * target logit, combined as Σ (log-add-exp of the lses − the target's logit).
 */
const nllParts = (chunks: number): [(z: tf.Tensor2D, range: VocabRange, rows: HeadRows) => tf.Tensor[], (parts: tf.Tensor[][], rows: HeadRows) => tf.Scalar] => {
  if (chunks === 1) {
    return [
      (z, _range, rows) => [weightedNllSum(z, tf.tensor1d(rows.targets, "int32"), tf.ones([rows.targets.length]))],
      (parts) => parts[0]![0]!.clone() as tf.Scalar,
    ];
  }
  return [
    (z, range, rows) => [rowLogSumExp(z), logitsAtTokens(z, range, rows.targets)],
    (parts) => tf.sum(tf.sub(logAddExp(parts.map((p) => p[0] as tf.Tensor1D)), sumAll(parts.map((p) => p[1] as tf.Tensor1D)))) as tf.Scalar,
  ];
};
