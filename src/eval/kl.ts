/**
 * KL(dense || pruned) per token: how far a pruned model's next-token distribution has
 * moved from the dense model's, EvoPress's fitness (its ablation finds it a better guide
 * than perplexity). The dense distribution of each window is computed once, when the
 * window is first used, and kept on the backend as its top-k entries: k token ids and
 * probabilities per position. With K the top-k set of a position, p the dense and q the
 * pruned distribution and z the pruned logits,
 *   KL_K = sum_{v in K} p_v (log p_v - log q_v),  log q_v = z_v - lse(z),
 * the difference taken per entry before any sum: for a model close to the dense one both
 * logs are large and nearly equal, and summing them apart would cancel in float32. When k
 * is the vocabulary this is the exact KL;
 * a smaller k drops the dense tail (EvoPress offers the same for large vocabularies).
 * Positions are those perplexity scores (targets >= 0), so both fitnesses count the same
 * tokens.
 */
import * as tf from "@tensorflow/tfjs";
import type { Window } from "../data/windows.ts";
import type { Decoder } from "../model/decoder.ts";
import { sumAll } from "../model/ops.ts";

/** One head chunk of a window's dense distribution. */
interface ReferenceChunk {
  /** Row-major flat indices (row · vocab + token) of the top-k tokens, [n · k]. */
  readonly flat: tf.Tensor1D;
  /** Their dense probabilities, [n, k]. */
  readonly p: tf.Tensor2D;
  /** Their dense log-probabilities, [n, k]. */
  readonly logp: tf.Tensor2D;
}

interface WindowReference {
  readonly chunks: ReferenceChunk[];
}

/** log-sum-exp of each row of z [n, vocab], [n]. */
const logSumExp = (z: tf.Tensor2D): tf.Tensor1D => tf.sub(tf.max(z, 1), tf.log(tf.max(tf.softmax(z), 1))) as tf.Tensor1D;

/** The default top-k: every token of vocabularies up to this size, exact KL. */
export const DEFAULT_TOP_K = 1024;

export class DenseReference {
  private readonly windows = new Map<Window, WindowReference>();
  private disposed = false;

  /** `topK`: entries kept per position (the whole vocabulary when it is smaller). */
  constructor(readonly topK: number = DEFAULT_TOP_K) {
    if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`top-k ${topK} must be a whole number >= 1`);
  }

  /** Windows not yet known are scored with `dense`, which must hold the dense model. */
  async add(dense: Decoder, windows: readonly Window[]): Promise<void> {
    for (const w of windows) {
      if (this.windows.has(w)) continue;
      const k = Math.min(this.topK, dense.spec.vocabSize);
      const chunkParts: Array<{ flat: tf.Tensor1D; logp: tf.Tensor2D }> = [];
      const { parts } = dense.headChunks(w.ids, w.targets, 1, w.ids.length, (z) => {
        const [n, vocab] = z.shape;
        const { values, indices } = tf.topk(z, k);
        const logp = tf.sub(values, tf.reshape(logSumExp(z), [n, 1])) as tf.Tensor2D;
        const rows = tf.mul(tf.reshape(tf.range(0, n, 1, "int32"), [n, 1]), tf.scalar(vocab, "int32"));
        const flat = tf.reshape(tf.add(indices, rows), [-1]) as tf.Tensor1D;
        // headChunks keeps what f returns (p); the chunk's other tensors are kept here.
        chunkParts.push({ flat: tf.keep(flat), logp: tf.keep(logp) });
        return tf.exp(logp) as tf.Tensor2D;
      });
      this.windows.set(w, { chunks: parts.map((p, i) => ({ ...chunkParts[i]!, p })) });
    }
  }

  has(window: Window): boolean {
    return this.windows.has(window);
  }

  /** The reference of a window added before. */
  of(window: Window): WindowReference {
    const r = this.windows.get(window);
    if (!r) throw new RangeError("no dense reference for this window: add it first");
    return r;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const r of this.windows.values()) for (const c of r.chunks) tf.dispose([c.flat, c.p, c.logp]);
    this.windows.clear();
  }
}

export interface KlResult {
  /** Mean KL per scored token, in nats. */
  readonly kl: number;
  readonly tokens: number;
}

/** KL(dense || model) per token over the windows, every window's reference added before. */
export const klDivergence = async (model: Decoder, windows: readonly Window[], reference: DenseReference): Promise<KlResult> => {
  let total = 0;
  let tokens = 0;
  for (const w of windows) {
    const ref = reference.of(w);
    const { parts, count } = model.headChunks(w.ids, w.targets, 1, w.ids.length, (z, _targets, first) => {
      // Every chunk but the last has the first one's rows, so `first` names the chunk.
      const chunk = ref.chunks[first / ref.chunks[0]!.p.shape[0]]!;
      const [n, k] = chunk.p.shape;
      const logq = tf.sub(tf.reshape(tf.gather(tf.reshape(z, [-1]), chunk.flat), [n, k]), tf.reshape(logSumExp(z), [n, 1]));
      return tf.sum(tf.mul(chunk.p, tf.sub(chunk.logp, logq))) as tf.Scalar;
    });
    const sum = tf.tidy(() => sumAll(parts));
    const value = (await sum.data())[0]!;
    tf.dispose([sum, ...parts.filter((t) => t !== sum)]);
    total += value;
    tokens += count;
  }
  return { kl: total / tokens, tokens };
};
