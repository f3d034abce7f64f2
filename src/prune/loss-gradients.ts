/**
 * The gradient of the dense model's next-token loss with respect to every prunable
 * linear's weight and bias, for the first-order Taylor importances of structured pruning
 * (group-importance.ts). The loss is the mean over a window's positions, and the gradient
 * is averaged over the calibration windows: the gradient of their mean loss, which
 * LLM-Pruner accumulates over its calibration batch the same way up to a constant factor
 * (a factor scales every group of a block alike, so it changes no choice).
 * Gradients come block by block (Decoder.blockwiseGradients): a block's sum over the
 * windows stays on the backend until the block is done, then it is handed over and freed,
 * so a streamed model larger than memory has them too.
 */
import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";
import type { HostLinear, HostTensor } from "../model/spec.ts";
import { nextTokenTargets } from "./fisher.ts";

/** One block's gradients, each linear's in its own layout ([in, out] weight, bias over out). */
export interface BlockGradients {
  readonly linears: Readonly<Record<string, HostLinear>>;
}

/** Per block. */
export type LinearGradients = ReadonlyArray<BlockGradients>;

/** The mean loss gradient of each block, handed to `each` as the block is done (blocks from the last to the first). */
export const eachBlockGradients = async (
  decoder: Decoder,
  windows: readonly Int32Array[],
  each: (block: number, gradients: BlockGradients) => void | Promise<void>,
): Promise<void> => {
  if (windows.length === 0) throw new RangeError("lossGradients: no calibration windows");
  const spec = decoder.spec;
  const slots: Array<{ linear: string; part: "weight" | "bias"; shape: readonly number[] }> = [];
  let sums: tf.Tensor[] | undefined;
  try {
    await decoder.blockwiseGradients(
      windows.map((ids) => ({ ids, targets: nextTokenTargets(ids) })),
      (_, tensors) => {
        slots.length = 0;
        const picked: tf.Tensor[] = [];
        for (const name of spec.linears) {
          const l = tensors.linears[name]!;
          slots.push({ linear: name, part: "weight", shape: l.weight.shape });
          picked.push(l.weight);
          if (l.bias) {
            slots.push({ linear: name, part: "bias", shape: l.bias.shape });
            picked.push(l.bias);
          }
        }
        return picked;
      },
      (_, __, grads) => {
        const before = sums;
        sums = tf.tidy(() => grads.map((g, k) => (before ? tf.add(before[k]!, g) : g.clone())));
        if (before) tf.dispose(before);
      },
      {
        afterBlock: async (block) => {
          const done = sums!;
          sums = undefined;
          try {
            const values = await Promise.all(done.map((t) => t.data()));
            const linears: Record<string, { weight?: HostTensor; bias?: HostTensor }> = {};
            slots.forEach((s, k) => {
              (linears[s.linear] ??= {})[s.part] = { shape: s.shape, data: Float32Array.from(values[k]! as Float32Array, (v) => v / windows.length) };
            });
            await each(block, { linears: linears as Record<string, HostLinear> });
          } finally {
            tf.dispose(done);
          }
        },
      },
    );
  } finally {
    if (sums) tf.dispose(sums);
  }
};

/** Every block's mean loss gradient at once (small models; a streamed run takes them block by block). */
export const lossGradients = async (decoder: Decoder, windows: readonly Int32Array[]): Promise<LinearGradients> => {
  const out: BlockGradients[] = new Array(decoder.spec.numLayers);
  await eachBlockGradients(decoder, windows, (block, gradients) => void (out[block] = gradients));
  return out;
};
