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
import { HEAD_ROWS, type Decoder, type HeadRows, type VocabRange } from "../model/decoder.ts";
import { logAddExp, rowLogSumExp } from "../model/head.ts";
import { sumAll } from "../model/ops.ts";
import { passesOf } from "./passes.ts";

/** One block of scored rows of a window's dense distribution (the head's row blocks). */
interface ReferenceRows {
  /** The top-k token ids of each row, [n, k]. */
  readonly tokens: tf.Tensor2D;
  /** Their dense probabilities, [n, k]. */
  readonly p: tf.Tensor2D;
  /** Their dense log-probabilities, [n, k]. */
  readonly logp: tf.Tensor2D;
}

interface WindowReference {
  readonly rows: ReferenceRows[];
}

/** The default top-k: every token of vocabularies up to this size, exact KL. */
export const DEFAULT_TOP_K = 1024;

/** Row indices r·width, [n, 1], to turn per-row columns into flat indices of an [n, width] tensor. */
const rowBases = (n: number, width: number): tf.Tensor2D => tf.mul(tf.reshape(tf.range(0, n, 1, "int32"), [n, 1]), tf.scalar(width, "int32")) as tf.Tensor2D;

/**
 * The top-k entries of each row over every chunk: each chunk's own top-k (token ids made
 * global) and log-sum-exp, then the top-k of their union and the log-add-exp of the lses.
 */
const topKSteps = (k: number, chunks: number) => {
  const perChunk = (z: tf.Tensor2D, range: VocabRange): tf.Tensor[] => {
    const { values, indices } = tf.topk(z, Math.min(k, range.count));
    return [values, tf.add(indices, tf.scalar(range.start, "int32")), rowLogSumExp(z)];
  };
  const combine = (parts: tf.Tensor[][]): tf.Tensor[] => {
    if (chunks === 1) {
      const [values, tokens, lse] = parts[0]! as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      const logp = tf.sub(values, tf.reshape(lse, [-1, 1]));
      return [tokens.clone(), tf.exp(logp), logp];
    }
    const values = tf.concat(parts.map((p) => p[0] as tf.Tensor2D), 1);
    const tokens = tf.concat(parts.map((p) => p[1] as tf.Tensor2D), 1);
    const [n, width] = values.shape;
    const top = tf.topk(values, k);
    const picked = tf.reshape(tf.gather(tf.reshape(tokens, [-1]), tf.reshape(tf.add(top.indices, rowBases(n, width)), [-1])), [n, k]);
    const logp = tf.sub(top.values, tf.reshape(logAddExp(parts.map((p) => p[2] as tf.Tensor1D)), [-1, 1]));
    return [picked, tf.exp(logp), logp];
  };
  return { perChunk, combine };
};

const referenceBytes = (r: WindowReference): number => r.rows.reduce((n, c) => n + c.tokens.size * 12, 0);

export class DenseReference {
  private readonly windows = new Map<Window, WindowReference>();
  private bytes = 0;
  private disposed = false;

  /**
   * `topK`: entries kept per position (the whole vocabulary when it is smaller). `maxBytes`:
   * what the references may hold; beyond it the windows added longest ago are dropped (a
   * search's stage minibatches are fresh each generation, so old ones are rarely met again,
   * and a dropped window is simply scored again when it is).
   */
  constructor(
    readonly topK: number = DEFAULT_TOP_K,
    readonly maxBytes: number = Infinity,
  ) {
    if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`top-k ${topK} must be a whole number >= 1`);
  }

  /** Windows not yet known are scored with `dense`, which must hold the dense model. */
  async add(dense: Decoder, windows: readonly Window[]): Promise<void> {
    const missing = [...new Set(windows.filter((w) => !this.windows.has(w)))];
    const k = Math.min(this.topK, dense.spec.vocabSize);
    this.evict(windows, missing.reduce((n, w) => n + w.ids.length, 0) * k * 12);
    const steps = topKSteps(k, dense.vocabChunks.length);
    for (const pass of passesOf(missing, dense.passTokens)) {
      const groups = pass.map((w) => ({ ids: w.ids, targets: w.targets, batch: 1, seqlen: w.ids.length }));
      const scored = groups.map((g) => dense.scored(g.targets, g.ids.length));
      const finals = await dense.hiddenStatesAll(groups);
      try {
        const results = dense.headScan(finals, scored, steps.perChunk, steps.combine);
        pass.forEach((w, g) => {
          const reference = { rows: results[g]!.map(([tokens, p, logp]) => ({ tokens: tokens as tf.Tensor2D, p: p as tf.Tensor2D, logp: logp as tf.Tensor2D })) };
          this.windows.set(w, reference);
          this.bytes += referenceBytes(reference);
        });
      } finally {
        tf.dispose(finals);
      }
    }
  }

  /** Drops the oldest windows, none of `keep`, until `incoming` more bytes fit. */
  private evict(keep: readonly Window[], incoming: number): void {
    if (!Number.isFinite(this.maxBytes)) return;
    const needed = new Set(keep);
    for (const [w, r] of this.windows) {
      if (this.bytes + incoming <= this.maxBytes) break;
      if (needed.has(w)) continue;
      for (const c of r.rows) tf.dispose([c.tokens, c.p, c.logp]);
      this.windows.delete(w);
      this.bytes -= referenceBytes(r);
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
    for (const r of this.windows.values()) for (const c of r.rows) tf.dispose([c.tokens, c.p, c.logp]);
    this.windows.clear();
  }
}

export interface KlResult {
  /** Mean KL per scored token, in nats. */
  readonly kl: number;
  readonly tokens: number;
}

/**
 * log q of the model at the reference's tokens, per chunk: over one chunk the logits there
 * minus the chunk's log-sum-exp; over several, each chunk's logits at the tokens it holds
 * (0 elsewhere) and its log-sum-exp, summed and log-added.
 */
const divergenceSteps = (chunks: number, referenceOf: (rows: HeadRows) => ReferenceRows) => {
  const perChunk = (z: tf.Tensor2D, range: VocabRange, rows: HeadRows): tf.Tensor[] => {
    const ref = referenceOf(rows);
    const [n, k] = ref.tokens.shape;
    const [, width] = z.shape;
    if (chunks === 1) {
      const flat = tf.reshape(tf.add(ref.tokens, rowBases(n, width)), [-1]);
      const logq = tf.sub(tf.reshape(tf.gather(tf.reshape(z, [-1]), flat), [n, k]), tf.reshape(rowLogSumExp(z), [n, 1]));
      return [tf.sum(tf.mul(ref.p, tf.sub(ref.logp, logq)))];
    }
    const local = tf.sub(ref.tokens, tf.scalar(range.start, "int32"));
    const inside = tf.logicalAnd(tf.greaterEqual(local, 0), tf.less(local, range.count));
    const flat = tf.reshape(tf.add(tf.where(inside, local, tf.zerosLike(local)), rowBases(n, width)), [-1]);
    const picked = tf.mul(tf.reshape(tf.gather(tf.reshape(z, [-1]), flat), [n, k]), tf.cast(inside, "float32"));
    return [picked, rowLogSumExp(z)];
  };
  const combine = (parts: tf.Tensor[][], rows: HeadRows): tf.Scalar => {
    if (chunks === 1) return parts[0]![0]!.clone() as tf.Scalar;
    const ref = referenceOf(rows);
    const logq = tf.sub(sumAll(parts.map((p) => p[0] as tf.Tensor2D)), tf.reshape(logAddExp(parts.map((p) => p[1] as tf.Tensor1D)), [-1, 1]));
    return tf.sum(tf.mul(ref.p, tf.sub(ref.logp, logq))) as tf.Scalar;
  };
  return { perChunk, combine };
};

/** KL(dense || model) per token over the windows, every window's reference added before. */
export const klDivergence = async (model: Decoder, windows: readonly Window[], reference: DenseReference): Promise<KlResult> => {
  let total = 0;
  let tokens = 0;
  for (const pass of passesOf(windows, model.passTokens)) {
    const groups = pass.map((w) => ({ ids: w.ids, targets: w.targets, batch: 1, seqlen: w.ids.length }));
    const scored = groups.map((g) => model.scored(g.targets, g.ids.length));
    const refs = pass.map((w) => reference.of(w));
    const steps = divergenceSteps(model.vocabChunks.length, (rows) => refs[rows.group]!.rows[rows.first / HEAD_ROWS]!);
    const finals = await model.hiddenStatesAll(groups);
    let sums: tf.Scalar[];
    try {
      const results = model.headScan(finals, scored, steps.perChunk, steps.combine);
      sums = results.map((parts) => (parts.length === 0 ? tf.scalar(0) : tf.tidy(() => sumAll(parts))));
      for (const parts of results) tf.dispose(parts.filter((t) => !sums.includes(t)));
    } finally {
      tf.dispose(finals);
    }
    // Added window by window in order, as the windows' own sums.
    for (const [g, sum] of sums.entries()) {
      const value = (await sum.data())[0]!;
      sum.dispose();
      total += value;
      tokens += scored[g]!.rows.length;
    }
  }
  return { kl: total / tokens, tokens };
};
