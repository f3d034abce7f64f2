import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";

/** Next-token targets of a calibration window: every position but the last scored. */
export const nextTokenTargets = (ids: Int32Array): Int32Array => {
  const targets = new Int32Array(ids.length).fill(-1);
  for (let t = 0; t + 1 < ids.length; t++) targets[t] = ids[t + 1]!;
  return targets;
};

/**
 * Fisher-trace sensitivity of every prunable linear (MSP's input): the empirical Fisher's
 * trace restricted to the linear, estimated as the mean over calibration windows of the
 * sum over its weights of (dLoss/dW)^2, with the dense model's next-token cross-entropy
 * (mean over the window's positions) as the loss. Gradients come block by block
 * (Decoder.blockwiseGradients), so a streamed model has them too. Keys are "block.linear".
 */
export const fisherTraces = async (
  decoder: Decoder,
  windows: readonly Int32Array[],
  onBlock?: (done: number, total: number) => void,
): Promise<Map<string, number>> => {
  const spec = decoder.spec;
  const sums = new Map<string, number>();
  for (let b = 0; b < spec.numLayers; b++) for (const name of spec.linears) sums.set(`${b}.${name}`, 0);
  let done = 0;
  await decoder.blockwiseGradients(
    windows.map((ids) => ({ ids, targets: nextTokenTargets(ids) })),
    (_, tensors) => spec.linears.map((name) => tensors.linears[name]!.weight),
    async (block, _window, grads) => {
      // Read asynchronously: one array of per-linear sums per block and window.
      const squares = tf.tidy(() => tf.stack(grads.map((g) => tf.sum(tf.square(g)))));
      try {
        const values = await squares.data();
        spec.linears.forEach((name, k) => sums.set(`${block}.${name}`, sums.get(`${block}.${name}`)! + values[k]!));
      } finally {
        squares.dispose();
      }
    },
    { afterBlock: () => onBlock?.(++done, spec.numLayers) },
  );
  return new Map([...sums].map(([key, sum]) => [key, sum / Math.max(1, windows.length)]));
};

/** Per-block sensitivity: the sum of its linears' traces. */
export const blockTraces = (traces: ReadonlyMap<string, number>, numBlocks: number): number[] => {
  const out = new Array<number>(numBlocks).fill(0);
  for (const [key, value] of traces) out[Number(key.split(".")[0])]! += value;
  return out;
};
