/**
 * Rotary position embeddings in the Hugging Face "rotate half" layout: dimension j is paired
 * with j + headDim/2 and both use inv_freq[j].
 */
import * as tf from "@tensorflow/tfjs";
import type { Llama3RopeScaling } from "./spec.ts";
import { constMatMul } from "./ops.ts";

/**
 * inv_freq_j = theta^(-2j/headDim), then LLaMA-3 frequency-dependent scaling when asked,
 * following transformers' `_compute_llama3_parameters`. Rounded to float32 as torch holds it.
 */
export const inverseFrequencies = (headDim: number, theta: number, scaling?: Llama3RopeScaling): Float64Array => {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = Math.fround(1 / Math.pow(theta, (2 * j) / headDim));
  if (!scaling) return inv;
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = scaling;
  const lowFreqWavelen = originalMaxPositions / lowFreqFactor;
  const highFreqWavelen = originalMaxPositions / highFreqFactor;
  for (let j = 0; j < half; j++) {
    const wavelen = (2 * Math.PI) / inv[j];
    if (wavelen < highFreqWavelen) continue;
    if (wavelen > lowFreqWavelen) {
      inv[j] = Math.fround(inv[j] / factor);
      continue;
    }
    const smooth = (originalMaxPositions / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    inv[j] = Math.fround(((1 - smooth) * inv[j]) / factor + smooth * inv[j]);
  }
  return inv;
};

/** cos and sin of position·inv_freq as [1, seqlen, 1, headDim], times `scale`: they broadcast over windows and heads. */
export interface RopeTables {
  readonly cos: tf.Tensor4D;
  readonly sin: tf.Tensor4D;
  /** Rotate-half as a signed permutation, and its transpose for the gradient. */
  readonly rotate: tf.Tensor2D;
  readonly rotateTransposed: tf.Tensor2D;
}

export const buildRopeTables = (inv: Float64Array, seqlen: number, scale: number): RopeTables => {
  const half = inv.length;
  const headDim = 2 * half;
  const cos = new Float32Array(seqlen * headDim);
  const sin = new Float32Array(seqlen * headDim);
  for (let t = 0; t < seqlen; t++) {
    for (let j = 0; j < half; j++) {
      // torch forms the angle as a float32 product.
      const angle = Math.fround(t * inv[j]);
      const row = t * headDim;
      cos[row + j] = cos[row + j + half] = Math.cos(angle) * scale;
      sin[row + j] = sin[row + j + half] = Math.sin(angle) * scale;
    }
  }
  const rotate = new Float32Array(headDim * headDim);
  for (let j = 0; j < half; j++) {
    // rotate_half(x) = [-x2, x1]: out[j] = -x[j + half], out[j + half] = x[j].
    rotate[(j + half) * headDim + j] = -1;
    rotate[j * headDim + j + half] = 1;
  }
  const rotateTensor = tf.tensor2d(rotate, [headDim, headDim]);
  return {
    cos: tf.tensor4d(cos, [1, seqlen, 1, headDim]),
    sin: tf.tensor4d(sin, [1, seqlen, 1, headDim]),
    rotate: rotateTensor,
    rotateTransposed: tf.transpose(rotateTensor),
  };
};

export const disposeRopeTables = (t: RopeTables): void => {
  tf.dispose([t.cos, t.sin, t.rotate, t.rotateTransposed]);
};

/** x·cos + rotate_half(x)·sin for x [batch·seqlen, heads·headDim]. */
export const applyRope = (x: tf.Tensor2D, batch: number, tables: RopeTables): tf.Tensor2D => {
  const [rows, cols] = x.shape;
  const [, seqlen, , headDim] = tables.cos.shape;
  const perHead = [batch, seqlen, cols / headDim, headDim];
  const rotated = constMatMul(tf.reshape(x, [-1, headDim]), tables.rotate, tables.rotateTransposed);
  const out = tf.add(tf.mul(tf.reshape(x, perHead), tables.cos), tf.mul(tf.reshape(rotated, perHead), tables.sin));
  return tf.reshape(out, [rows, cols]);
};
