/**
 * Applies allocations to one model, again and again: the layer beneath the prune command,
 * ATP's grid and every search. What does not depend on the candidate is computed once per
 * run (docs/methods.md, "Fitness and reuse"):
 *  - the dense weights, read from the checkpoint once;
 *  - in `dense` mode, every linear's calibration statistics from the dense model, its
 *    element scores and their sort order, so pruning at a ratio is a threshold lookup;
 *  - pruned blocks, cached by what decides them (the block's pruned counts per linear, and
 *    in `sequential` mode the allocation of every earlier block too), so a candidate that
 *    shares blocks with an earlier one only pays for the blocks that differ.
 */
import * as tf from "@tensorflow/tfjs";
import type { Allocation, AllocationEntry, Layout } from "../allocation/allocation.ts";
import { layoutOf } from "../allocation/allocation.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import type { Window } from "../data/windows.ts";
import { perplexity, type PerplexityResult } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, HostLinear } from "../model/spec.ts";
import { collectBlockStats, type LinearInputStats } from "./collect.ts";
import { applyMask, maskAtSparsity, nmMask, prunedCount, sortedOrder, type Shape2, type SortOrder } from "./masks.ts";
import { nonOutlierRatio, OWL_M, type PrunedWeights } from "./outliers.ts";
import { pruneModel, type CalibrationMode } from "./pipeline.ts";
import { pruneLinear, type LinearTarget, type PruneMetric } from "./prune-linear.ts";
import { SPARSEGPT_BLOCK } from "./sparsegpt.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "./scores.ts";
import { emptyTimings, timed, type StageTimings } from "./timings.ts";

export interface PrunerOptions {
  readonly metric: PruneMetric;
  readonly mode: CalibrationMode;
  /** Calibration windows, all of one length. */
  readonly calibration: readonly Int32Array[];
  /** Windows per forward pass. */
  readonly batch?: number;
  /** Upper bound on the bytes of pruned blocks kept for reuse (default 256 MiB). */
  readonly cacheBytes?: number;
  readonly onBlock?: (block: number) => void;
}

/** What one linear ended up with, for reports: the requested and the achieved sparsity. */
export interface LinearOutcome {
  readonly block: number;
  readonly linear: string;
  readonly params: number;
  readonly requested: number;
  /** What the mask rule prunes at that ratio: whole weights, floor per comparison group. */
  readonly expected: number;
  /** Zero weights after pruning / all weights. */
  readonly achieved: number;
  readonly n?: number;
  readonly m?: number;
}

const targetOf = (entry: AllocationEntry): LinearTarget =>
  entry.n !== undefined && entry.m !== undefined ? { n: entry.n, m: entry.m } : { sparsity: entry.sparsity };

/**
 * Whole weights the mask rule prunes for an entry of shape [in, out]: N per M for a
 * pattern; otherwise the floor of the ratio times each comparison group's size, summed:
 * the matrix (magnitude), each output neuron (Wanda), or each block of SparseGPT_BLOCK
 * input features across all outputs (SparseGPT's exact rule).
 */
const prunedWeights = (entry: AllocationEntry, [rows, cols]: Shape2, metric: PruneMetric): number => {
  if (entry.n !== undefined && entry.m !== undefined) return (entry.params / entry.m) * entry.n;
  if (metric === "magnitude") return prunedCount(rows * cols, entry.sparsity);
  if (metric === "wanda") return prunedCount(rows, entry.sparsity) * cols;
  let total = 0;
  for (let i = 0; i < rows; i += SPARSEGPT_BLOCK) total += prunedCount(Math.min(SPARSEGPT_BLOCK, rows - i) * cols, entry.sparsity);
  return total;
};

/** Two entries with the same key prune identically (each group's count is monotone in the ratio). */
const entryKey = (entry: AllocationEntry, shape: Shape2, metric: PruneMetric): string =>
  entry.n !== undefined && entry.m !== undefined ? `${entry.n}:${entry.m}` : String(prunedWeights(entry, shape, metric));

const blockBytes = (block: HostBlock): number =>
  Object.values(block.linears).reduce((sum, l) => sum + l.weight.data.byteLength, 0);

/** Dense-model knowledge of one linear, computed once per run in `dense` mode. */
interface DenseLinear {
  readonly stats: LinearInputStats;
  scores?: Float32Array;
  order?: SortOrder;
}

export class Pruner {
  readonly layout: Layout;
  readonly timings: StageTimings = emptyTimings();
  private readonly decoder: Decoder;
  private readonly dense: HostBlock[];
  private denseStats: Map<string, LinearInputStats>[] | undefined;
  private readonly denseLinears = new Map<string, DenseLinear>();
  /** Key of the block each decoder slot holds now ("" = dense). */
  private readonly installed: string[];
  private readonly cache = new Map<string, HostBlock>();
  private cachedBytes = 0;

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly options: PrunerOptions,
  ) {
    const spec = checkpoint.spec;
    this.layout = layoutOf(spec);
    this.dense = Array.from({ length: spec.numLayers }, (_, i) => checkpoint.readBlock(i));
    this.decoder = Decoder.create(spec, checkpoint.readGlobals(), { numBlocks: spec.numLayers, load: (i) => this.dense[i]! });
    this.installed = this.dense.map(() => "");
  }

  static create(checkpoint: Checkpoint, options: PrunerOptions): Pruner {
    if (options.calibration.length === 0) throw new RangeError("no calibration windows");
    return new Pruner(checkpoint, options);
  }

  get spec() {
    return this.checkpoint.spec;
  }

  /** The dense model's per-linear calibration statistics, gathered once. */
  private statsOfDense(): Map<string, LinearInputStats>[] {
    if (this.denseStats) return this.denseStats;
    this.restoreDense();
    const seqlen = this.options.calibration[0]!.length;
    const per = Math.max(1, this.options.batch ?? 1);
    const groups: Int32Array[][] = [];
    for (let i = 0; i < this.options.calibration.length; i += per) groups.push(this.options.calibration.slice(i, i + per) as Int32Array[]);
    let inputs = timed(this.timings, "forward", () =>
      groups.map((g) => {
        const ids = new Int32Array(g.length * seqlen);
        g.forEach((w, k) => ids.set(w, k * seqlen));
        return this.decoder.embed(ids, g.length, seqlen);
      }),
    );
    const all: Map<string, LinearInputStats>[] = [];
    try {
      for (let i = 0; i < this.spec.numLayers; i++) {
        const { stats, outputs } = collectBlockStats(this.decoder, i, inputs, groups.map((g) => g.length), seqlen, {
          hessian: this.options.metric === "sparsegpt",
          timings: this.timings,
        });
        tf.dispose(inputs);
        inputs = outputs;
        all.push(stats);
        this.options.onBlock?.(i);
      }
    } finally {
      tf.dispose(inputs);
    }
    this.denseStats = all;
    return all;
  }

  private denseLinear(block: number, linear: string): DenseLinear {
    const key = `${block}.${linear}`;
    let d = this.denseLinears.get(key);
    if (!d) {
      const stats = this.statsOfDense()[block]!.get(linear);
      if (!stats) throw new Error(`block ${block} has no statistics for linear ${linear}`);
      d = { stats };
      this.denseLinears.set(key, d);
    }
    return d;
  }

  private shapeOf(block: number, linear: string): Shape2 {
    return this.dense[block]!.linears[linear]!.weight.shape as unknown as Shape2;
  }

  /**
   * Element scores of a dense linear under the run's metric. SparseGPT's own saliency
   * changes as it prunes column by column, so its statistics use Wanda's scores: |W| times
   * the root of diag(XᵀX), the diagonal-Hessian form of the same second-order saliency.
   */
  elementScores(block: number, linear: string): Float32Array {
    const d = this.denseLinear(block, linear);
    if (!d.scores) {
      const weight = this.dense[block]!.linears[linear]!.weight.data;
      d.scores = timed(this.timings, "scoring", () =>
        this.options.metric === "magnitude" ? magnitudeScores(weight) : wandaScores(weight, this.shapeOf(block, linear), d.stats.norms.norms()),
      );
    }
    return d.scores;
  }

  /**
   * Wanda scores of a dense linear whatever the run's metric: OWL's outlier shares are
   * defined on them (its released code uses them for magnitude pruning too).
   */
  wandaScores(block: number, linear: string): Float32Array {
    if (this.options.metric === "wanda") return this.elementScores(block, linear);
    const d = this.denseLinear(block, linear);
    const weight = this.dense[block]!.linears[linear]!.weight.data;
    return timed(this.timings, "scoring", () => wandaScores(weight, this.shapeOf(block, linear), d.stats.norms.norms()));
  }

  private orderOf(block: number, linear: string): SortOrder {
    const d = this.denseLinear(block, linear);
    if (!d.order) {
      const scores = this.elementScores(block, linear);
      const group = comparisonGroup(this.options.metric === "magnitude" ? "magnitude" : "wanda");
      d.order = timed(this.timings, "scoring", () => sortedOrder(scores, this.shapeOf(block, linear), group));
    }
    return d.order;
  }

  /** Keep-mask of a dense linear at a sparsity, by the run's metric (magnitude or Wanda groups). */
  keepMask(block: number, linear: string, sparsity: number): Uint8Array {
    const order = this.orderOf(block, linear);
    return timed(this.timings, "masking", () => maskAtSparsity(order, sparsity));
  }

  /** MRP's non-outlier ratio of block l's scores when it alone is pruned at `sparsity`. */
  nonOutlierRatio(block: number, sparsity: number, pruned: PrunedWeights = "excluded"): number {
    const names = this.spec.linears;
    return nonOutlierRatio(
      names.map((n) => this.elementScores(block, n)),
      names.map((n) => this.keepMask(block, n, sparsity)),
      OWL_M,
      pruned,
    );
  }

  /** The pruned-count key of every block of an allocation, in block order. */
  private blockKeys(allocation: Allocation): string[] {
    const keys: string[][] = this.dense.map(() => []);
    for (const entry of allocation) keys[entry.block]!.push(entryKey(entry, this.shapeOf(entry.block, entry.linear), this.options.metric));
    return keys.map((k) => k.join(","));
  }

  /**
   * The allocation rounded to whole weights: equal keys prune every linear identically, so
   * a search may cache fitness by it.
   */
  allocationKey(allocation: Allocation): string {
    this.checkAllocation(allocation);
    return this.blockKeys(allocation).join("|");
  }

  private checkAllocation(allocation: Allocation): void {
    if (allocation.length !== this.layout.length) {
      throw new RangeError(`the allocation has ${allocation.length} entries; the model has ${this.layout.length} prunable linears`);
    }
    allocation.forEach((entry, k) => {
      const slot = this.layout[k]!;
      if (entry.block !== slot.block || entry.linear !== slot.linear) {
        throw new RangeError(`allocation entry ${k} is block ${entry.block} ${entry.linear}; expected block ${slot.block} ${slot.linear}`);
      }
    });
  }

  private remember(key: string, block: HostBlock): void {
    const limit = this.options.cacheBytes ?? 256 * 2 ** 20;
    const bytes = blockBytes(block);
    if (bytes > limit) return;
    this.cache.set(key, block);
    this.cachedBytes += bytes;
    for (const [old, b] of this.cache) {
      if (this.cachedBytes <= limit) break;
      this.cache.delete(old);
      this.cachedBytes -= blockBytes(b);
    }
  }

  private recall(key: string): HostBlock | undefined {
    const block = this.cache.get(key);
    if (block) {
      // Most recently used last: Map order is the eviction order.
      this.cache.delete(key);
      this.cache.set(key, block);
    }
    return block;
  }

  private install(i: number, key: string, block: HostBlock): void {
    if (this.installed[i] === key) return;
    this.decoder.setBlock(i, block);
    this.installed[i] = key;
  }

  /** Puts the dense weights back into every block. */
  restoreDense(): void {
    this.dense.forEach((block, i) => this.install(i, "", block));
  }

  private pruneDenseLinear(block: number, entry: AllocationEntry): HostLinear {
    const linear = this.dense[block]!.linears[entry.linear]!;
    const target = targetOf(entry);
    if (this.options.metric === "sparsegpt" || "n" in target) {
      const d = this.denseLinear(block, entry.linear);
      if (this.options.metric !== "sparsegpt") {
        const scores = this.elementScores(block, entry.linear);
        const t = target as { n: number; m: number };
        return timed(this.timings, "masking", () => ({
          ...linear,
          weight: { shape: linear.weight.shape, data: applyMask(linear.weight.data, nmMask(scores, this.shapeOf(block, entry.linear), t.n, t.m)) },
        }));
      }
      return pruneLinear(linear, "sparsegpt", target, d.stats, `block ${block} linear ${entry.linear}`, this.timings);
    }
    const keep = this.keepMask(block, entry.linear, entry.sparsity);
    return timed(this.timings, "masking", () => ({ ...linear, weight: { shape: linear.weight.shape, data: applyMask(linear.weight.data, keep) } }));
  }

  /**
   * Prunes the model with an allocation and leaves the pruned weights in place for
   * `perplexity`. Returns the pruned blocks (shared with the cache: do not modify).
   */
  apply(allocation: Allocation): HostBlock[] {
    this.checkAllocation(allocation);
    const keys = this.blockKeys(allocation);
    const byBlock = new Map<number, AllocationEntry[]>();
    for (const entry of allocation) byBlock.set(entry.block, [...(byBlock.get(entry.block) ?? []), entry]);
    if (this.options.mode === "dense") {
      return this.dense.map((_, i) => {
        const key = `dense|${i}|${keys[i]}`;
        let block = this.recall(key);
        if (!block) {
          const linears = Object.fromEntries(byBlock.get(i)!.map((e) => [e.linear, this.pruneDenseLinear(i, e)]));
          block = { ...this.dense[i]!, linears: { ...this.dense[i]!.linears, ...linears } };
          this.remember(key, block);
        }
        this.install(i, key, block);
        this.options.onBlock?.(i);
        return block;
      });
    }
    // Sequential: block i depends on the allocation of blocks 0..i, so that prefix is its key.
    const prefixKey = (i: number) => `sequential|${keys.slice(0, i + 1).join("|")}`;
    const targets = new Map(allocation.map((e) => [`${e.block}.${e.linear}`, targetOf(e)]));
    this.restoreDense();
    // pruneModel replaces blocks as it goes: until it returns, no slot's content is known.
    this.installed.fill("?");
    const blocks = pruneModel(this.decoder, { numBlocks: this.spec.numLayers, load: (i) => this.dense[i]! }, {
      metric: this.options.metric,
      mode: "sequential",
      calibration: this.options.calibration,
      ...(this.options.batch ? { batch: this.options.batch } : {}),
      target: (block, linear) => targets.get(`${block}.${linear}`)!,
      reuse: (i) => this.recall(prefixKey(i)),
      timings: this.timings,
      onBlock: (i) => this.options.onBlock?.(i),
    });
    blocks.forEach((block, i) => {
      this.remember(prefixKey(i), block);
      this.installed[i] = prefixKey(i);
    });
    return blocks;
  }

  /** Perplexity of the model as it stands (after `apply`, the pruned model). */
  perplexity(windows: readonly Window[], options: { batch?: number; onProgress?: (done: number, total: number) => void } = {}): PerplexityResult {
    return timed(this.timings, "evaluation", () => perplexity(this.decoder, windows, options));
  }

  /** Requested and achieved sparsity of every linear of the pruned blocks. */
  outcomes(allocation: Allocation, blocks: readonly HostBlock[]): LinearOutcome[] {
    return allocation.map((entry) => {
      const data = blocks[entry.block]!.linears[entry.linear]!.weight.data;
      let zeros = 0;
      for (let e = 0; e < data.length; e++) if (data[e] === 0) zeros++;
      return {
        block: entry.block,
        linear: entry.linear,
        params: entry.params,
        requested: entry.sparsity,
        expected: prunedWeights(entry, this.shapeOf(entry.block, entry.linear), this.options.metric) / data.length,
        achieved: zeros / data.length,
        ...(entry.n !== undefined ? { n: entry.n, m: entry.m } : {}),
      };
    });
  }

  dispose(): void {
    this.decoder.dispose();
    this.cache.clear();
  }
}
