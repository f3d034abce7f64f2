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
export const collectBlockStats = async (
  decoder: Decoder,
  index: number,
  inputs: readonly tf.Tensor2D[],
  /** Windows in each input (the last batch may be smaller). */
  batches: readonly number[],
  seqlen: number,
  options: { readonly hessian: boolean; readonly timings?: StageTimings },
): Promise<{ stats: Map<string, LinearInputStats>; outputs: tf.Tensor2D[] }> => {
  const stats = new Map<string, LinearInputStats>();
  // The observer runs inside the forward pass: its time is statistics, the rest forward.
  let observing = 0;
  let forward = 0;
  const outputs: tf.Tensor2D[] = [];
  try {
    for (let k = 0; k < inputs.length; k++) {
      // The forward is synchronous and only queues work on the backend; the observer keeps
      // each linear input's sums (and Gram matrix) there. They are read once the batch has
      // run, asynchronously (GPU backends have no synchronous reads), and added in the order
      // the linears ran, so the result does not depend on when the reads complete.
      // q, k and v read the same tensor: its statistics are computed once per batch.
      const seen = new Map<tf.Tensor, { sums: tf.Tensor; gram?: tf.Tensor }>();
      const order: Array<{ name: string; rows: number; features: number; source: { sums: tf.Tensor; gram?: tf.Tensor } }> = [];
      const began = performance.now();
      let observed = 0;
      try {
        outputs.push(
          decoder.runBlock(index, inputs[k]!, batches[k]!, seqlen, (name, input) => {
            const at = performance.now();
            const [rows, features] = input.shape;
            let source = seen.get(input);
            if (!source) {
              // tidy returns tensors and the arrays are read after it: tidy walks whatever it
              // returns looking for tensors, which for a [3072, 3072] array costs seconds.
              // Kept: the block's forward runs in a tidy that would dispose them on return.
              const [sums, gram] = tf.tidy(() => [tf.sum(tf.square(input), 0), ...(options.hessian ? [tf.matMul(tf.transpose(input), input)] : [])]).map((t) => tf.keep(t));
              source = { sums: sums!, ...(gram ? { gram } : {}) };
              seen.set(input, source);
            }
            order.push({ name, rows, features, source });
            observed += performance.now() - at;
          }),
        );
        forward += performance.now() - began - observed;
        const readStart = performance.now();
        const sources = [...seen.values()];
        const read = new Map<tf.Tensor, Float32Array>();
        await Promise.all(
          sources.flatMap((src) => [src.sums, ...(src.gram ? [src.gram] : [])]).map(async (t) => read.set(t, (await t.data()) as Float32Array)),
        );
        for (const { name, rows, features, source } of order) {
          let entry = stats.get(name);
          if (!entry) {
            entry = { norms: new InputNormAccumulator(features), ...(options.hessian ? { hessian: new HessianAccumulator(features) } : {}) };
            stats.set(name, entry);
          }
          entry.norms.addSumSquares(read.get(source.sums)!, rows);
          if (source.gram) entry.hessian!.addGram(read.get(source.gram)!, rows);
        }
        observing += observed + performance.now() - readStart;
      } finally {
        for (const src of seen.values()) tf.dispose([src.sums, ...(src.gram ? [src.gram] : [])]);
      }
    }
  } catch (error) {
    tf.dispose(outputs);
    throw error;
  }
  if (options.timings) {
    options.timings.statistics += observing / 1000;
    options.timings.forward += forward / 1000;
  }
  return { stats, outputs };
};
