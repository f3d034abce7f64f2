/**
 * Allocation -> pruned block weights: the part of pruning that depends on the candidate.
 * Pure for a given run: the same allocation always gives the same weights, whatever was
 * pruned or measured before. Pruned blocks are cached by what decides them (the block's
 * pruned counts per linear, and in `sequential` mode the allocation of every earlier block
 * too), so a candidate that shares blocks with an earlier one only pays for those that differ.
 */
import type { Allocation, AllocationEntry, Layout } from "../allocation/allocation.ts";
import { layoutOf } from "../allocation/allocation.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, HostLinear } from "../model/spec.ts";
import type { DenseStatistics } from "./dense-statistics.ts";
import { applyMask, nmMask, prunedCount, type Shape2 } from "./masks.ts";
import { pruneModel, type CalibrationMode } from "./pipeline.ts";
import { pruneLinear, type LinearTarget, type PruneMetric } from "./prune-linear.ts";
import { SPARSEGPT_BLOCK } from "./sparsegpt.ts";
import { timed } from "./timings.ts";

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

export interface PrunedBlocksOptions {
  readonly mode: CalibrationMode;
  /** Windows per forward pass (sequential mode). */
  readonly batch?: number;
  /** Upper bound on the bytes of pruned blocks kept for reuse (default 256 MiB). */
  readonly cacheBytes?: number;
  readonly onBlock?: (block: number) => void;
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

/** Pruned blocks, each with the key that decides it (equal keys: equal weights). */
export interface KeyedBlocks {
  readonly blocks: HostBlock[];
  readonly keys: string[];
}

export class PrunedBlocks {
  readonly layout: Layout;
  private readonly cache = new Map<string, HostBlock>();
  private cachedBytes = 0;
  /** Sequential mode's own streamed model: one block resident at a time, nothing shared with the model being measured; built once. */
  private sequential: Decoder | undefined;

  constructor(
    /** The dense weights of every block (host arrays, never modified). */
    private readonly dense: readonly HostBlock[],
    readonly statistics: DenseStatistics,
    readonly options: PrunedBlocksOptions,
  ) {
    this.layout = layoutOf(statistics.checkpoint.spec);
  }

  private get source() {
    return { numBlocks: this.dense.length, load: (i: number) => this.dense[i]! };
  }

  private sequentialModel(): Decoder {
    this.sequential ??= Decoder.create(this.statistics.checkpoint.spec, this.statistics.checkpoint.readGlobals(), this.source, { streamed: true });
    return this.sequential;
  }

  private get metric(): PruneMetric {
    return this.statistics.metric;
  }

  private get timings() {
    return this.statistics.timings;
  }

  private shapeOf(block: number, linear: string): Shape2 {
    return this.dense[block]!.linears[linear]!.weight.shape as unknown as Shape2;
  }

  /** The pruned-count key of every block of an allocation, in block order. */
  private blockKeys(allocation: Allocation): string[] {
    const keys: string[][] = this.dense.map(() => []);
    for (const entry of allocation) keys[entry.block]!.push(entryKey(entry, this.shapeOf(entry.block, entry.linear), this.metric));
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

  private pruneDenseLinear(block: number, entry: AllocationEntry): HostLinear {
    const linear = this.dense[block]!.linears[entry.linear]!;
    const target = targetOf(entry);
    if (this.metric === "sparsegpt" || "n" in target) {
      if (this.metric !== "sparsegpt") {
        const scores = this.statistics.elementScores(block, entry.linear);
        const t = target as { n: number; m: number };
        return timed(this.timings, "masking", () => ({
          ...linear,
          weight: { shape: linear.weight.shape, data: applyMask(linear.weight.data, nmMask(scores, this.shapeOf(block, entry.linear), t.n, t.m)) },
        }));
      }
      return pruneLinear(linear, "sparsegpt", target, this.statistics.inputStatistics(block, entry.linear), `block ${block} linear ${entry.linear}`, this.timings);
    }
    const keep = this.statistics.keepMask(block, entry.linear, entry.sparsity);
    return timed(this.timings, "masking", () => ({ ...linear, weight: { shape: linear.weight.shape, data: applyMask(linear.weight.data, keep) } }));
  }

  /** The blocks of the model pruned at an allocation (shared with the cache: do not modify). */
  async prune(allocation: Allocation): Promise<KeyedBlocks> {
    this.checkAllocation(allocation);
    const keys = this.blockKeys(allocation);
    const byBlock = new Map<number, AllocationEntry[]>();
    for (const entry of allocation) byBlock.set(entry.block, [...(byBlock.get(entry.block) ?? []), entry]);
    if (this.options.mode === "dense") {
      await this.statistics.prepare();
      const blockKeys = keys.map((k, i) => `dense|${i}|${k}`);
      const blocks = this.dense.map((_, i) => {
        let block = this.recall(blockKeys[i]!);
        if (!block) {
          const linears = Object.fromEntries(byBlock.get(i)!.map((e) => [e.linear, this.pruneDenseLinear(i, e)]));
          block = { ...this.dense[i]!, linears: { ...this.dense[i]!.linears, ...linears } };
          this.remember(blockKeys[i]!, block);
        }
        this.options.onBlock?.(i);
        return block;
      });
      return { blocks, keys: blockKeys };
    }
    // Sequential: block i depends on the allocation of blocks 0..i, so that prefix is its key.
    const prefixKeys = keys.map((_, i) => `sequential|${keys.slice(0, i + 1).join("|")}`);
    const targets = new Map(allocation.map((e) => [`${e.block}.${e.linear}`, targetOf(e)]));
    const decoder = this.sequentialModel();
    // Every block starts dense (host references: nothing is uploaded until a block runs).
    this.dense.forEach((block, i) => decoder.setBlock(i, block));
    const blocks = await pruneModel(decoder, this.source, {
      metric: this.metric,
      mode: "sequential",
      calibration: this.statistics.options.calibration,
      ...(this.options.batch ? { batch: this.options.batch } : {}),
      target: (block, linear) => targets.get(`${block}.${linear}`)!,
      reuse: (i) => this.recall(prefixKeys[i]!),
      timings: this.timings,
      onBlock: (i) => this.options.onBlock?.(i),
    });
    blocks.forEach((block, i) => this.remember(prefixKeys[i]!, block));
    return { blocks, keys: prefixKeys };
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
        expected: prunedWeights(entry, this.shapeOf(entry.block, entry.linear), this.metric) / data.length,
        achieved: zeros / data.length,
        ...(entry.n !== undefined ? { n: entry.n, m: entry.m } : {}),
      };
    });
  }

  /** Drops the cache and the sequential model's tensors. */
  dispose(): void {
    this.cache.clear();
    this.cachedBytes = 0;
    this.sequential?.dispose();
    this.sequential = undefined;
  }
}
