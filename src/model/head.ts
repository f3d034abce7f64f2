/**
 * The LM head in vocabulary chunks. A vocabulary-by-width float32 head is 2 GB for
 * Llama-3 (128k tokens x 4096): it is never one buffer. The head is cut into chunks of at
 * most HEAD_CHUNK_BYTES ([embedDim, count] each, in the model's [in, out] layout), kept on
 * the backend (resident) or uploaded from the checkpoint one at a time for each pass over
 * the windows (streamed). Both modes cut the same chunks and combine them in the same
 * order, so they give the same numbers.
 *
 * A head of one chunk (every vocabulary up to 32k tokens at width 4096) computes exactly
 * what one product over the whole vocabulary computes. Over several chunks the per-row
 * quantities are combined: the log-sum-exp of the logits as log-add-exp of the chunks'
 * own, the target's logit from the chunk that holds it.
 */
import * as tf from "@tensorflow/tfjs";
import type { GlobalSource, ModelSpec } from "./spec.ts";
import { uploadTensor } from "./upload.ts";

/** Largest head chunk, in float32 bytes: LLaMA-2's 32000 x 4096 head is one chunk. */
export const HEAD_CHUNK_BYTES = 512 * 2 ** 20;

export interface VocabRange {
  readonly start: number;
  readonly count: number;
}

/** The head's chunks: as few as HEAD_CHUNK_BYTES allows (or `columns` per chunk), of near-equal size. */
export const vocabChunks = (spec: ModelSpec, columns?: number): VocabRange[] => {
  const widest = columns ?? Math.max(1, Math.floor(HEAD_CHUNK_BYTES / (4 * spec.embedDim)));
  const count = Math.ceil(spec.vocabSize / widest);
  const size = Math.ceil(spec.vocabSize / count);
  const out: VocabRange[] = [];
  for (let start = 0; start < spec.vocabSize; start += size) out.push({ start, count: Math.min(size, spec.vocabSize - start) });
  return out;
};

export class Head {
  readonly chunks: readonly VocabRange[];
  private readonly resident: (tf.Tensor2D | undefined)[];
  private disposed = false;

  constructor(
    readonly spec: ModelSpec,
    private readonly source: GlobalSource,
    /** Keep every chunk on the backend (true) or upload each when it is used. */
    readonly keep: boolean,
    columns?: number,
  ) {
    this.chunks = vocabChunks(spec, columns);
    // Kept chunks are uploaded on first use: a model that never reaches its head (the
    // calibration passes of pruning) never holds it.
    this.resident = this.chunks.map(() => undefined);
  }

  /** Bytes of the largest chunk on the backend. */
  get chunkBytes(): number {
    return Math.max(...this.chunks.map((c) => c.count)) * this.spec.embedDim * 4;
  }

  private upload(c: number): tf.Tensor2D {
    const { start, count } = this.chunks[c]!;
    return uploadTensor(this.source.headColumns(start, count), `the LM head (tokens ${start}..${start + count - 1})`) as tf.Tensor2D;
  }

  /** Chunk c's weight [embedDim, count] for the duration of `f`. */
  with<T>(c: number, f: (weight: tf.Tensor2D, range: VocabRange) => T): T {
    if (this.disposed) throw new Error("the head has been disposed");
    // Kept past any tidy the first use happens in.
    if (this.keep && !this.resident[c]) this.resident[c] = tf.keep(this.upload(c));
    const kept = this.resident[c];
    const weight = kept ?? this.upload(c);
    try {
      return f(weight, this.chunks[c]!);
    } finally {
      if (!kept) weight.dispose();
    }
  }

  dispose(): void {
    this.disposed = true;
    tf.dispose(this.resident.filter((t): t is tf.Tensor2D => t !== undefined));
    this.resident.fill(undefined);
  }
}

/** log-sum-exp of each row of z [n, vocab], [n], by the softmax kernel (fast on wasm, unlike exp). */
export const rowLogSumExp = (z: tf.Tensor2D): tf.Tensor1D => tf.sub(tf.max(z, 1), tf.log(tf.max(tf.softmax(z), 1))) as tf.Tensor1D;

/** log(exp(a) + exp(b) + ...) elementwise over same-shaped tensors, in the given order. */
export const logAddExp = (parts: readonly tf.Tensor1D[]): tf.Tensor1D =>
  tf.tidy(() => {
    const top = parts.slice(1).reduce((m, p) => tf.maximum(m, p), parts[0]!);
    const sum = parts.reduce((s: tf.Tensor | undefined, p) => {
      const e = tf.exp(tf.sub(p, top));
      return s ? tf.add(s, e) : e;
    }, undefined)!;
    return tf.add(top, tf.log(sum)) as tf.Tensor1D;
  });

/**
 * Logits of each row at a token id given per row, from one chunk: rows whose token lies
 * outside the chunk get 0, so summing over the chunks picks every row's logit once.
 */
export const logitsAtTokens = (z: tf.Tensor2D, range: VocabRange, tokens: Int32Array): tf.Tensor1D => {
  const [rows, width] = z.shape;
  const local = new Int32Array(rows);
  const inside = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const t = tokens[r]! - range.start;
    if (t >= 0 && t < range.count) {
      local[r] = r * width + t;
      inside[r] = 1;
    } else local[r] = r * width;
  }
  return tf.mul(tf.gather(tf.reshape(z, [-1]), tf.tensor1d(local, "int32")), tf.tensor1d(inside)) as tf.Tensor1D;
};
