import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";
import { HessianAccumulator, InputNormAccumulator } from "./stats.ts";
import type { StageTimings } from "./timings.ts";

/** Calibration statistics of one linear's input, gathered over all calibration tokens. */
export interface LinearInputStats {
  readonly norms: InputNormAccumulator;
  readonly hessian?: HessianAccumulator;
}

/**
 * Runs block `index` on every calibration batch, gathering each prunable linear's input
 * statistics on the backend (sums of squares, and XᵀX when Hessians are asked for), so only
 * [in] and [in, in] arrays leave it, never the activations. Returns the statistics and
 * the block's outputs, which are the next block's inputs.
 */
export const collectBlockStats = (
  decoder: Decoder,
  index: number,
  inputs: readonly tf.Tensor2D[],
  /** Windows in each input (the last batch may be smaller). */
  batches: readonly number[],
  seqlen: number,
  options: { readonly hessian: boolean; readonly timings?: StageTimings },
): { stats: Map<string, LinearInputStats>; outputs: tf.Tensor2D[] } => {
  const stats = new Map<string, LinearInputStats>();
  // The observer runs inside the forward pass: its time is statistics, the rest forward.
  let observing = 0;
  const start = performance.now();
  const outputs = inputs.map((x, k) => {
    // q, k and v read the same tensor: its statistics are computed once per batch.
    const seen = new Map<tf.Tensor, { sums: Float32Array; gram?: Float32Array }>();
    return decoder.runBlock(index, x, batches[k]!, seqlen, (name, input) => {
      const began = performance.now();
      const [rows, features] = input.shape;
      let s = seen.get(input);
      if (!s) {
        // tidy returns tensors and the arrays are read after it: tidy walks whatever it
        // returns looking for tensors, which for a [3072, 3072] array costs seconds.
        const [sums, gram] = tf.tidy(() => [tf.sum(tf.square(input), 0), ...(options.hessian ? [tf.matMul(tf.transpose(input), input)] : [])]);
        s = { sums: sums!.dataSync() as Float32Array, ...(gram ? { gram: gram.dataSync() as Float32Array } : {}) };
        tf.dispose([sums!, ...(gram ? [gram] : [])]);
        seen.set(input, s);
      }
      let entry = stats.get(name);
      if (!entry) {
        entry = { norms: new InputNormAccumulator(features), ...(options.hessian ? { hessian: new HessianAccumulator(features) } : {}) };
        stats.set(name, entry);
      }
      entry.norms.addSumSquares(s.sums, rows);
      if (s.gram) entry.hessian!.addGram(s.gram, rows);
      observing += performance.now() - began;
    });
  });
  if (options.timings) {
    options.timings.statistics += observing / 1000;
    options.timings.forward += (performance.now() - start - observing) / 1000;
  }
  return { stats, outputs };
};
