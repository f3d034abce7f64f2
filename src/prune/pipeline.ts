import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "../model/decoder.ts";
import type { HostBlock } from "../model/spec.ts";
import { collectBlockStats } from "./collect.ts";
import { pruneLinear, type LinearTarget, type PruneMetric } from "./prune-linear.ts";
import { timed, type StageTimings } from "./timings.ts";

/** The dense blocks pruning starts from, as float32 host arrays. */
export interface DenseBlocks {
  readonly numBlocks: number;
  load(index: number): HostBlock;
}

export const CALIBRATION_MODES = ["sequential", "dense"] as const;
export type CalibrationMode = (typeof CALIBRATION_MODES)[number];

export interface PruneRequest {
  readonly metric: PruneMetric;
  /** The target of every (block, linear): the allocation being applied. */
  readonly target: (block: number, linear: string) => LinearTarget;
  readonly mode: CalibrationMode;
  /** Calibration windows, all of one length. */
  readonly calibration: readonly Int32Array[];
  /** Windows per forward pass. */
  readonly batch?: number;
  readonly onBlock?: (block: number, seconds: { statistics: number; pruning: number }) => void;
  /**
   * A block already pruned at this allocation from the same inputs (the same allocation of
   * every earlier block): it is installed as it is, and only run forward. Sequential mode only:
   * in dense mode every block is pruned from dense inputs anyway.
   */
  readonly reuse?: (block: number) => HostBlock | undefined;
  readonly timings?: StageTimings;
}

/**
 * The block-by-block pruning pipeline. Calibration windows are embedded once; then, for
 * each block, the inputs of its linears are measured, every linear is pruned, and the block
 * is replaced in the model. In `sequential` mode (the standard protocol) block i's inputs
 * come from the already-pruned blocks 0..i-1, so the block is re-run with its pruned
 * weights to feed block i+1; in `dense` mode every block sees the dense model's
 * activations. Only one block's activations are alive at a time.
 */
export const pruneModel = async (decoder: Decoder, source: DenseBlocks, request: PruneRequest): Promise<HostBlock[]> => {
  const seqlen = request.calibration[0]?.length ?? 0;
  if (seqlen === 0) throw new RangeError("no calibration windows");
  const per = Math.max(1, request.batch ?? 1);
  const groups: Int32Array[][] = [];
  for (let i = 0; i < request.calibration.length; i += per) groups.push(request.calibration.slice(i, i + per) as Int32Array[]);
  const concat = (g: Int32Array[]) => {
    const ids = new Int32Array(g.length * seqlen);
    g.forEach((w, k) => ids.set(w, k * seqlen));
    return ids;
  };
  let inputs = timed(request.timings, "forward", () => groups.map((g) => decoder.embed(concat(g), g.length, seqlen)));
  const pruned: HostBlock[] = [];
  try {
    for (let i = 0; i < decoder.numBlocks; i++) {
      const t0 = performance.now();
      const reused = request.mode === "sequential" ? request.reuse?.(i) : undefined;
      if (reused) {
        decoder.setBlock(i, reused);
        pruned.push(reused);
        const next = timed(request.timings, "forward", () => inputs.map((x, k) => decoder.runBlock(i, x, groups[k]!.length, seqlen)));
        tf.dispose(inputs);
        inputs = next;
        request.onBlock?.(i, { statistics: (performance.now() - t0) / 1000, pruning: 0 });
        continue;
      }
      const { stats, outputs } = await collectBlockStats(decoder, i, inputs, groups.map((g) => g.length), seqlen, {
        hessian: request.metric === "sparsegpt",
        ...(request.timings ? { timings: request.timings } : {}),
      });
      const t1 = performance.now();
      const dense = source.load(i);
      const block: HostBlock = {
        ...dense,
        linears: Object.fromEntries(
          Object.entries(dense.linears).map(([name, l]) => [
            name,
            pruneLinear(l, request.metric, request.target(i, name), stats.get(name), `block ${i} linear ${name}`, request.timings),
          ]),
        ),
      };
      decoder.setBlock(i, block);
      pruned.push(block);
      const t2 = performance.now();
      let next = outputs;
      if (request.mode === "sequential") {
        tf.dispose(outputs);
        next = timed(request.timings, "forward", () => inputs.map((x, k) => decoder.runBlock(i, x, groups[k]!.length, seqlen)));
      }
      tf.dispose(inputs);
      inputs = next;
      request.onBlock?.(i, { statistics: (t1 - t0) / 1000, pruning: (t2 - t1) / 1000 });
    }
  } finally {
    tf.dispose(inputs);
  }
  return pruned;
};
