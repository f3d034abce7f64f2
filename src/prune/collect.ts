import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";
import { Activations } from "./activations.ts";
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
  inputs: Activations,
  options: { readonly hessian: boolean; readonly timings?: StageTimings },
): Promise<{ stats: Map<string, LinearInputStats>; outputs: Activations }> => {
  const { batches, seqlen } = inputs;
  const stats = new Map<string, LinearInputStats>();
  // Linears that read the same input (q, k and v; gate and up) share one accumulator: the
  // same sums, kept once (a float64 Hessian of a 11008-wide input is nearly a gigabyte).
  const shared = new Map<string, string>();
  const entryOf = (name: string, features: number): LinearInputStats => {
    let entry = stats.get(name);
    if (!entry) {
      const owner = shared.get(name);
      entry = owner ? stats.get(owner)! : { norms: new InputNormAccumulator(features), ...(options.hessian ? { hessian: new HessianAccumulator(features) } : {}) };
      stats.set(name, entry);
    }
    return entry;
  };
  // The forward only queues work on the backend; the observer keeps each linear input's
  // sums of squares there, and they are read once, after the last batch, asynchronously
  // (GPU backends have no synchronous reads). Gram matrices are read after each batch:
  // keeping a [features, features] matrix per batch would hold too much memory, and
  // summing them on the backend in float32 would change the float64 accumulation.
  // Both are added in the order the linears ran (a shared accumulator once per input), so
  // the result does not depend on when the reads complete.
  const sums: Array<{ name: string; rows: number; features: number; sums: tf.Tensor }> = [];
  const outputs = inputs.like();
  let observing = 0;
  let forward = 0;
  try {
    // The block is loaded once (streamed models upload it here) for every batch.
    await decoder.withBlock(index, async (run) => {
      for (let k = 0; k < inputs.count; k++) {
        const seen = new Map<tf.Tensor, { sums: tf.Tensor; gram?: tf.Tensor; owner: string }>();
        const grams: Array<{ name: string; rows: number; gram: tf.Tensor }> = [];
        const began = performance.now();
        let observed = 0;
        try {
          const output = await inputs.with(k, (x) =>
            run(x, batches[k]!, seqlen, (name, input) => {
              const at = performance.now();
              const [rows, features] = input.shape;
              let source = seen.get(input);
              if (source) {
                if (k === 0) shared.set(name, source.owner);
              } else {
                // Kept: the block's forward runs in a tidy that would dispose them on return.
                // tidy returns tensors and the arrays are read after it: tidy walks whatever
                // it returns looking for tensors, which for a [3072, 3072] array costs seconds.
                const [s, gram] = tf.tidy(() => [tf.sum(tf.square(input), 0), ...(options.hessian ? [tf.matMul(tf.transpose(input), input)] : [])]).map((t) => tf.keep(t));
                source = { sums: s!, ...(gram ? { gram } : {}), owner: name };
                seen.set(input, source);
              }
              entryOf(name, features);
              if (source.owner === name) {
                sums.push({ name, rows, features, sums: source.sums });
                if (source.gram) grams.push({ name, rows, gram: source.gram });
              }
              observed += performance.now() - at;
            }),
          );
          await outputs.put(k, output);
          forward += performance.now() - began - observed;
          const readStart = performance.now();
          const values = new Map<tf.Tensor, Float32Array>();
          await Promise.all([...new Set(grams.map((g) => g.gram))].map(async (t) => values.set(t, (await t.data()) as Float32Array)));
          for (const { name, rows, gram } of grams) stats.get(name)!.hessian!.addGram(values.get(gram)!, rows);
          observing += observed + performance.now() - readStart;
        } finally {
          for (const src of seen.values()) if (src.gram) src.gram.dispose();
        }
      }
    });
    const readStart = performance.now();
    const values = new Map<tf.Tensor, Float32Array>();
    await Promise.all([...new Set(sums.map((s) => s.sums))].map(async (t) => values.set(t, (await t.data()) as Float32Array)));
    for (const { name, rows, sums: t } of sums) stats.get(name)!.norms.addSumSquares(values.get(t)!, rows);
    observing += performance.now() - readStart;
  } catch (error) {
    outputs.dispose();
    throw error;
  } finally {
    tf.dispose([...new Set(sums.map((s) => s.sums))]);
  }
  if (options.timings) {
    options.timings.statistics += observing / 1000;
    options.timings.forward += forward / 1000;
  }
  return { stats, outputs };
};
