/**
 * The gradient of the dense model's next-token loss with respect to every prunable
 * linear's weight and bias, for the first-order Taylor importances of structured pruning
 * (group-importance.ts). The loss is the mean over a window's positions, and the gradient
 * is averaged over the calibration windows: the gradient of their mean loss, which
 * LLM-Pruner accumulates over its calibration batch the same way up to a constant factor
 * (a factor scales every group of a block alike, so it changes no choice).
 * The model must be created with `trainable: true`. Sums stay on the backend until the end.
 */
import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";
import type { HostLinear, HostTensor } from "../model/spec.ts";

/** Per block: each linear's gradient in its own layout ([in, out] weight, bias over out). */
export type LinearGradients = ReadonlyArray<{ readonly linears: Readonly<Record<string, HostLinear>> }>;

export const lossGradients = async (
  decoder: Decoder,
  windows: readonly Int32Array[],
  onWindow?: (done: number, total: number) => void,
): Promise<LinearGradients> => {
  if (windows.length === 0) throw new RangeError("lossGradients: no calibration windows");
  const spec = decoder.spec;
  const slots: Array<{ block: number; linear: string; part: "weight" | "bias"; variable: tf.Variable }> = [];
  for (let b = 0; b < spec.numLayers; b++) {
    const block = decoder.getBlock(b);
    for (const name of spec.linears) {
      const l = block.linears[name]!;
      slots.push({ block: b, linear: name, part: "weight", variable: l.weight as tf.Variable });
      if (l.bias) slots.push({ block: b, linear: name, part: "bias", variable: l.bias as tf.Variable });
    }
  }
  const variables = slots.map((s) => s.variable);
  let sums: tf.Tensor[] | undefined;
  try {
    for (const [w, ids] of windows.entries()) {
      const targets = new Int32Array(ids.length).fill(-1);
      for (let t = 0; t + 1 < ids.length; t++) targets[t] = ids[t + 1]!;
      const before = sums;
      sums = tf.tidy(() => {
        const { grads } = tf.variableGrads(() => decoder.lossTensor(ids, targets, 1, ids.length), variables);
        return variables.map((v, i) => (before ? tf.add(before[i]!, grads[v.name]!) : grads[v.name]!.clone()));
      });
      if (before) tf.dispose(before);
      onWindow?.(w + 1, windows.length);
    }
    const values = await Promise.all(sums!.map((t) => t.data()));
    const out = Array.from({ length: spec.numLayers }, () => ({} as Record<string, { weight?: HostTensor; bias?: HostTensor }>));
    slots.forEach((s, i) => {
      const mean = Float32Array.from(values[i]! as Float32Array, (v) => v / windows.length);
      (out[s.block]![s.linear] ??= {})[s.part] = { shape: s.variable.shape, data: mean };
    });
    return out.map((linears) => ({ linears: linears as Record<string, HostLinear> }));
  } finally {
    if (sums) tf.dispose(sums);
  }
};
