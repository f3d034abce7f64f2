/**
 * Element scores of the pruning metrics (docs/methods.md, "Element scores"), on host arrays.
 *
 * Layout: weight and scores are row-major [in, out] (y = x W), so element (i, o) sits at
 * i * out + o. Input feature j of docs/methods.md is our row i; an output neuron (the papers'
 * weight "row") is our column o.
 */
import type { MaskGroup, Shape2 } from "./masks.ts";

export type ScoreMetric = "magnitude" | "wanda";

/** The weights each metric's scores are compared within (docs/methods.md). */
export const comparisonGroup = (metric: ScoreMetric): MaskGroup => (metric === "magnitude" ? "matrix" : "output");

/** |W_io|. */
export const magnitudeScores = (weight: Float32Array): Float32Array => {
  const scores = new Float32Array(weight.length);
  for (let e = 0; e < weight.length; e++) scores[e] = Math.abs(weight[e]);
  return scores;
};

/**
 * Wanda: |W_io| * ||X_i||_2, where ||X_i||_2 is input feature i's norm over all calibration
 * tokens (InputNormAccumulator.norms). Any common scale of the norms leaves every mask
 * unchanged, since the comparison is within one output neuron.
 */
export const wandaScores = (weight: Float32Array, shape: Shape2, inputNorms: ArrayLike<number>): Float32Array => {
  const [inFeatures, outFeatures] = shape;
  if (weight.length !== inFeatures * outFeatures) {
    throw new RangeError(`wandaScores: ${weight.length} weights do not fill shape [${inFeatures}, ${outFeatures}]`);
  }
  if (inputNorms.length !== inFeatures) {
    throw new RangeError(`wandaScores: ${inputNorms.length} input norms for ${inFeatures} input features`);
  }
  const scores = new Float32Array(weight.length);
  for (let i = 0; i < inFeatures; i++) {
    const norm = inputNorms[i];
    const row = i * outFeatures;
    for (let o = 0; o < outFeatures; o++) scores[row + o] = Math.abs(weight[row + o]) * norm;
  }
  return scores;
};
