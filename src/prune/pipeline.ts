import type { Decoder } from "../model/decoder.ts";
import type { HostBlock, SourceBlock } from "../model/spec.ts";
import { Activations, type ActivationPlace } from "./activations.ts";
import { collectBlockStats } from "./collect.ts";
import { pruneLinear, pruneLinearsSharingFactors, type LinearTarget, type PruneMetric } from "./prune-linear.ts";
import type { StageTimings } from "./timings.ts";

/** The dense blocks pruning starts from, as float32 host arrays (read from the checkpoint when asked). */
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
  /**
   * Where each pruned block goes (a store that rounds it to the export's dtype, or spills it
   * to disk): what it returns is installed in the decoder and, in sequential mode, feeds
   * the next block. Without it the pruned blocks are installed as they are and returned.
   */
  readonly keep?: (block: number, pruned: HostBlock) => SourceBlock;
  /** Calibration hidden states on the backend (default), on the host or on disk (in `scratch`), uploaded group by group. */
  readonly activations?: ActivationPlace;
  readonly scratch?: string;
  /** `source.load` returns a fresh copy each time, which pruning may overwrite. */
  readonly denseIsFresh?: boolean;
  readonly timings?: StageTimings;
}

/** The calibration windows in groups of `batch`, embedded. */
export const embedCalibration = async (decoder: Decoder, calibration: readonly Int32Array[], batch: number, place: ActivationPlace, scratch?: string): Promise<Activations> => {
  const seqlen = calibration[0]?.length ?? 0;
  if (seqlen === 0) throw new RangeError("no calibration windows");
  const per = Math.max(1, batch);
  const groups: Int32Array[][] = [];
  for (let i = 0; i < calibration.length; i += per) groups.push(calibration.slice(i, i + per) as Int32Array[]);
  const out = Activations.empty(place, groups.map((g) => g.length), seqlen, decoder.spec.hiddenSize, scratch);
  try {
    for (const [k, g] of groups.entries()) {
      const ids = new Int32Array(g.length * seqlen);
      g.forEach((w, j) => ids.set(w, j * seqlen));
      await out.put(k, decoder.embed(ids, g.length, seqlen));
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
};

/** Block i run on every group (the block acquired once), as the next block's inputs. */
export const runBlockOn = async (decoder: Decoder, i: number, inputs: Activations): Promise<Activations> => {
  const out = inputs.like();
  try {
    await decoder.withBlock(i, async (run) => {
      for (let k = 0; k < inputs.count; k++) await out.put(k, await inputs.with(k, (x) => run(x, inputs.batches[k]!, inputs.seqlen)));
    });
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
};

/**
 * The block-by-block pruning pipeline. Calibration windows are embedded once; then, for
 * each block, the inputs of its linears are measured, every linear is pruned, and the block
 * is replaced in the model. In `sequential` mode (the standard protocol) block i's inputs
 * come from the already-pruned blocks 0..i-1, so the block is re-run with its pruned
 * weights to feed block i+1; in `dense` mode every block sees the dense model's
 * activations. Only one block's activations are alive at a time, and only one block's
 * weights: the dense block is read when it is pruned, and the pruned one handed to `keep`.
 * The decoder must hold the dense blocks (from block 0 on) when this starts.
 */
export const pruneModel = async (decoder: Decoder, source: DenseBlocks, request: PruneRequest): Promise<HostBlock[]> => {
  const embedStart = performance.now();
  let inputs = await embedCalibration(decoder, request.calibration, request.batch ?? 1, request.activations ?? "device", request.scratch);
  if (request.timings) request.timings.forward += (performance.now() - embedStart) / 1000;
  const pruned: HostBlock[] = [];
  const install = (i: number, block: HostBlock): void => {
    if (request.keep) decoder.setBlock(i, request.keep(i, block));
    else {
      decoder.setBlock(i, block);
      pruned.push(block);
    }
  };
  try {
    let ahead = decoder.prefetch(0);
    for (let i = 0; i < decoder.numBlocks; i++) {
      await ahead;
      ahead = decoder.prefetch(i + 1);
      const t0 = performance.now();
      const reused = request.mode === "sequential" ? request.reuse?.(i) : undefined;
      if (reused) {
        install(i, reused);
        const start = performance.now();
        const next = await runBlockOn(decoder, i, inputs);
        if (request.timings) request.timings.forward += (performance.now() - start) / 1000;
        inputs.dispose();
        inputs = next;
        request.onBlock?.(i, { statistics: (performance.now() - t0) / 1000, pruning: 0 });
        continue;
      }
      const { stats, outputs } = await collectBlockStats(decoder, i, inputs, {
        hessian: request.metric === "sparsegpt",
        ...(request.timings ? { timings: request.timings } : {}),
      });
      const t1 = performance.now();
      let block: HostBlock;
      try {
        // The dense block is read fresh and pruned linear by linear in its own arrays (Wanda
        // and magnitude zero them in place; SparseGPT's result replaces each as it is made),
        // so a block is held about once, not twice.
        const dense = source.load(i);
        const linears: Record<string, HostBlock["linears"][string]> = { ...dense.linears };
        pruneLinearsSharingFactors(Object.keys(linears), (name) => stats.get(name)?.hessian, (name, factors) => {
          linears[name] = pruneLinear(linears[name]!, request.metric, request.target(i, name), stats.get(name), `block ${i} linear ${name}`, request.timings, request.denseIsFresh ?? false, factors);
          // A linear's statistics (its Hessian) are not needed once it is pruned.
          stats.delete(name);
        });
        block = { ...dense, linears };
        install(i, block);
      } catch (e) {
        outputs.dispose();
        throw e;
      }
      const t2 = performance.now();
      let next = outputs;
      if (request.mode === "sequential") {
        outputs.dispose();
        const start = performance.now();
        next = await runBlockOn(decoder, i, inputs);
        if (request.timings) request.timings.forward += (performance.now() - start) / 1000;
      }
      inputs.dispose();
      inputs = next;
      request.onBlock?.(i, { statistics: (t1 - t0) / 1000, pruning: (t2 - t1) / 1000 });
    }
    await ahead;
  } finally {
    inputs.dispose();
  }
  return pruned;
};
