import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";

/**
 * Fisher-trace sensitivity of every prunable linear (MSP's input): the empirical Fisher's
 * trace restricted to the linear, estimated as the mean over calibration windows of the
 * sum over its weights of (dLoss/dW)^2, with the dense model's next-token cross-entropy
 * (mean over the window's positions) as the loss. The model must be created with
 * `trainable: true` so that its weights are variables. Keys are "block.linear".
 */
export const fisherTraces = async (
  decoder: Decoder,
  windows: readonly Int32Array[],
  onWindow?: (done: number, total: number) => void,
): Promise<Map<string, number>> => {
  const spec = decoder.spec;
  const names: string[] = [];
  const variables: tf.Variable[] = [];
  for (let b = 0; b < spec.numLayers; b++) {
    const block = decoder.getBlock(b);
    for (const name of spec.linears) {
      names.push(`${b}.${name}`);
      variables.push(block.linears[name]!.weight as tf.Variable);
    }
  }
  const sums = new Float64Array(names.length);
  for (const [w, ids] of windows.entries()) {
    const targets = new Int32Array(ids.length).fill(-1);
    for (let t = 0; t + 1 < ids.length; t++) targets[t] = ids[t + 1]!;
    const squares = tf.tidy(() => {
      const { grads } = tf.variableGrads(() => decoder.lossTensor(ids, targets, 1, ids.length), variables);
      return tf.stack(variables.map((v) => tf.sum(tf.square(grads[v.name]!))));
    });
    // Read outside the tidy, asynchronously: one array of per-linear sums per window.
    try {
      (await squares.data()).forEach((v, i) => (sums[i]! += v));
    } finally {
      squares.dispose();
    }
    onWindow?.(w + 1, windows.length);
  }
  return new Map(names.map((n, i) => [n, sums[i]! / Math.max(1, windows.length)]));
};

/** Per-block sensitivity: the sum of its linears' traces. */
export const blockTraces = (traces: ReadonlyMap<string, number>, numBlocks: number): number[] => {
  const out = new Array<number>(numBlocks).fill(0);
  for (const [key, value] of traces) out[Number(key.split(".")[0])]! += value;
  return out;
};
