import * as tf from "@tensorflow/tfjs";
import { sumAll } from "../model/ops.ts";

export interface AdamWOptions {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** Clip the global gradient norm to this value (0: no clipping). */
  readonly clipNorm: number;
}

export const DEFAULT_ADAMW: AdamWOptions = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clipNorm: 1 };

interface Slot {
  readonly param: tf.Variable;
  readonly m: tf.Variable;
  readonly v: tf.Variable;
  /** Decoupled weight decay applies to matrices only, never to norms or biases (common practice). */
  readonly decay: boolean;
}

/**
 * AdamW (Loshchilov & Hutter) with bias correction and global-norm clipping, written
 * out with plain tfjs ops so the update order, and hence the result, is fixed.
 */
export class AdamW {
  private readonly slots: Slot[];
  private step = 0;

  constructor(params: readonly tf.Variable[], private readonly options: AdamWOptions = DEFAULT_ADAMW) {
    // Within tidy, so the zero tensors the moments start from are freed.
    this.slots = tf.tidy(() =>
      params.map((p) => ({
        param: p,
        m: tf.variable(tf.zerosLike(p), false),
        v: tf.variable(tf.zerosLike(p), false),
        decay: p.rank >= 2,
      })),
    );
  }

  /** Applies one update; returns the gradient norm before clipping (read asynchronously). */
  async apply(grads: readonly tf.Tensor[], lr: number): Promise<number> {
    const { beta1, beta2, eps, weightDecay, clipNorm } = this.options;
    this.step++;
    const normTensor = tf.tidy(() => tf.sqrt(sumAll(grads.map((g) => tf.sum(tf.square(g))))));
    let norm: number;
    try {
      norm = (await normTensor.data())[0]!;
    } finally {
      normTensor.dispose();
    }
    const scale = clipNorm > 0 && norm > clipNorm ? clipNorm / norm : 1;
    const c1 = 1 - Math.pow(beta1, this.step);
    const c2 = 1 - Math.pow(beta2, this.step);
    tf.tidy(() => {
      this.slots.forEach((s, i) => {
        const g = scale === 1 ? grads[i]! : tf.mul(grads[i]!, scale);
        const m = tf.add(tf.mul(s.m, beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(s.v, beta2), tf.mul(tf.square(g), 1 - beta2));
        const update = tf.div(tf.div(m, c1), tf.add(tf.sqrt(tf.div(v, c2)), eps));
        const decayed = s.decay ? tf.mul(s.param, 1 - lr * weightDecay) : s.param;
        s.param.assign(tf.sub(decayed, tf.mul(update, lr)));
        s.m.assign(m);
        s.v.assign(v);
      });
    });
    return norm;
  }

  /** Moments and step count, for checkpoints that resume exactly. */
  async getState(): Promise<{ step: number; m: Float32Array[]; v: Float32Array[] }> {
    const read = async (t: tf.Tensor) => Float32Array.from((await t.data()) as Float32Array);
    return {
      step: this.step,
      m: await Promise.all(this.slots.map((s) => read(s.m))),
      v: await Promise.all(this.slots.map((s) => read(s.v))),
    };
  }

  setState(state: { step: number; m: readonly Float32Array[]; v: readonly Float32Array[] }): void {
    this.step = state.step;
    tf.tidy(() =>
      this.slots.forEach((s, i) => {
        s.m.assign(tf.tensor(state.m[i]!, s.m.shape));
        s.v.assign(tf.tensor(state.v[i]!, s.v.shape));
      }),
    );
  }

  dispose(): void {
    for (const s of this.slots) {
      s.m.dispose();
      s.v.dispose();
    }
  }
}
