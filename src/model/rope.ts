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

/** cos and sin of position·inv_freq laid out per row of a [T·heads, headDim] view, times `scale`. */
export interface RopeTables {
  readonly cos: tf.Tensor2D;
  readonly sin: tf.Tensor2D;
  /** Rotate-half as a signed permutation, and its transpose for the gradient. */
  readonly rotate: tf.Tensor2D;
  readonly rotateTransposed: tf.Tensor2D;
}

export const buildRopeTables = (
  inv: Float64Array,
  seqlen: number,
  heads: number,
  scale: number,
): RopeTables => {
  const half = inv.length;
  const headDim = 2 * half;
  const cos = new Float32Array(seqlen * heads * headDim);
  const sin = new Float32Array(seqlen * heads * headDim);
  for (let t = 0; t < seqlen; t++) {
    for (let j = 0; j < half; j++) {
      // torch forms the angle as a float32 product.
      const angle = Math.fround(t * inv[j]);
      const c = Math.cos(angle) * scale;
      const s = Math.sin(angle) * scale;
      for (let h = 0; h < heads; h++) {
        const row = (t * heads + h) * headDim;
        cos[row + j] = c;
        cos[row + j + half] = c;
        sin[row + j] = s;
        sin[row + j + half] = s;
      }
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
    cos: tf.tensor2d(cos, [1, cos.length]),
    sin: tf.tensor2d(sin, [1, sin.length]),
    rotate: rotateTensor,
    rotateTransposed: tf.transpose(rotateTensor),
  };
};

export const disposeRopeTables = (t: RopeTables): void => {
  tf.dispose([t.cos, t.sin, t.rotate, t.rotateTransposed]);
};

/**
 * x·cos + rotate_half(x)·sin for x [batch·seqlen, heads·headDim]. The tables broadcast over
 * the batch once x is viewed as [batch, seqlen·heads·headDim].
 */
export const applyRope = (x: tf.Tensor2D, headDim: number, batch: number, tables: RopeTables): tf.Tensor2D => {
  const [rows, cols] = x.shape;
  const rotated = constMatMul(tf.reshape(x, [-1, headDim]), tables.rotate, tables.rotateTransposed);
  const perWindow = [batch, (rows * cols) / batch];
  const out = tf.add(
    tf.mul(tf.reshape(x, perWindow), tables.cos),
    tf.mul(tf.reshape(rotated, perWindow), tables.sin),
  );
  return tf.reshape(out, [rows, cols]);
};
