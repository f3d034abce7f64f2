/**
 * Allocation -> pruned blocks: the part of pruning that depends on the candidate. Pure for
 * a given run: the same allocation always gives the same weights, whatever was pruned or
 * measured before.
 *
 * Three routes, by what the run needs:
 *  - masked (dense-mode fitness with magnitude or Wanda): a block is the dense block as the
 *    checkpoint holds it with each linear's mask applied from the run's ranks while it is
 *    converted for upload. Nothing is materialised: a candidate costs one read of the model,
 *    whatever its size.
 *  - dense (dense mode otherwise: SparseGPT from the run's Hessians, and prunes that are
 *    exported): each block pruned from the dense statistics, on its own.
 *  - sequential: the block-by-block pipeline (pipeline.ts), block i calibrated on the
 *    already-pruned blocks 0..i-1.
 * The last two hand each pruned block to the run's store, which keeps it in the export's
 * dtype, in memory or on disk. Blocks are cached by what decides them (the block's pruned
 * counts, and in sequential mode the allocation of every earlier block too), so a candidate
 * that shares blocks with an earlier one only pays for those that differ.
 */
import type { Allocation, AllocationEntry, Layout } from "../allocation/allocation.ts";
import { layoutOf } from "../allocation/allocation.ts";
import { blockSourceOf } from "../checkpoint/open.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { Decoder } from "../model/decoder.ts";
import { isHostTensor, mapBlock, type HostBlock, type SourceBlock, type TensorLike } from "../model/spec.ts";
import type { ActivationPlace } from "./activations.ts";
import type { DenseStatistics } from "./dense-statistics.ts";
import { prunedCount, type Shape2 } from "./masks.ts";
import { pruneModel, type CalibrationMode } from "./pipeline.ts";
import { pruneLinear, pruneLinearsSharingFactors, type LinearTarget, type PruneMetric } from "./prune-linear.ts";
import type { LevelDatabase } from "./levels.ts";
import type { PrunedStore } from "./pruned-store.ts";
import { groupSize, prunedInGroup, zeroBelowRank } from "./ranks.ts";
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
  /** Every allocation goes through the pipeline into the store, also in dense mode (prunes that are exported). */
  readonly materialise?: boolean;
  /** Where pipeline-pruned blocks are kept. */
  readonly store: PrunedStore;
  readonly activations?: ActivationPlace;
  /** Where calibration states placed on disk go. */
  readonly scratch?: string;
  /** SparseGPT's levels, made once: dense-mode SparseGPT candidates are read from them. */
  readonly levels?: LevelDatabase;
  /** Says what building the levels costs, and its progress. */
  readonly log?: (line: string) => void;
}

export const targetOf = (entry: AllocationEntry): LinearTarget =>
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
export const entryKey = (entry: AllocationEntry, shape: Shape2, metric: PruneMetric): string =>
  entry.n !== undefined && entry.m !== undefined ? `${entry.n}:${entry.m}` : String(prunedWeights(entry, shape, metric));

const blockBytes = (block: HostBlock): number => Object.values(block.linears).reduce((sum, l) => sum + l.weight.data.byteLength, 0);

const zerosOf = (data: Float32Array): number => {
  let zeros = 0;
  for (let e = 0; e < data.length; e++) if (data[e] === 0) zeros++;
  return zeros;
};

/** Pruned blocks, each with the key that decides it (equal keys: equal weights). */
export interface KeyedBlocks {
  readonly blocks: SourceBlock[];
  readonly keys: string[];
}

interface Cached {
  readonly block: HostBlock;
  /** Zero weights of each linear. */
  readonly zeros: Readonly<Record<string, number>>;
}

export class PrunedBlocks {
  readonly layout: Layout;
  private readonly cache = new Map<string, Cached>();
  private cachedBytes = 0;
  /** Sequential mode's own streamed model: nothing shared with the model being measured; built once. */
  private sequential: Decoder | undefined;
  /** Zero weights of every linear ("block.linear") of the last allocation pruned through the pipeline. */
  private readonly zeros = new Map<string, number>();
  private levelsBuilt: Promise<void> | undefined;

  constructor(
    readonly checkpoint: Checkpoint,
    readonly statistics: DenseStatistics,
    readonly options: PrunedBlocksOptions,
  ) {
    this.layout = layoutOf(checkpoint.spec);
  }

  private get spec() {
    return this.checkpoint.spec;
  }

  private sequentialModel(): Decoder {
    this.sequential ??= Decoder.create(this.spec, this.checkpoint.globalSource(), blockSourceOf(this.checkpoint), { streamed: true, source: this.checkpoint.path });
    return this.sequential;
  }

  private get metric(): PruneMetric {
    return this.statistics.metric;
  }

  private get timings() {
    return this.statistics.timings;
  }

  private shapeOf(block: number, linear: string): Shape2 {
    return this.statistics.shapeOf(block, linear);
  }

  /** Whether candidates are only masked as they are uploaded (nothing kept in the store). */
  get masked(): boolean {
    return this.options.mode === "dense" && this.metric !== "sparsegpt" && this.options.materialise !== true;
  }

  /** Factors the run's levels now (once), if it reads candidates from them; `onFactor` follows it (LevelDatabase.build). */
  async prepareLevels(log?: (line: string) => void, onFactor?: (done: number, total: number) => void): Promise<void> {
    if (this.fromLevels) await (this.levelsBuilt ??= this.options.levels!.build(this.statistics, log ?? this.options.log, onFactor));
  }

  /** Whether dense-mode SparseGPT candidates are read from the run's levels. */
  get fromLevels(): boolean {
    return this.options.levels !== undefined && this.options.mode === "dense" && this.metric === "sparsegpt" && this.options.materialise !== true;
  }

  /** The pruned-count key of every block of an allocation, in block order. */
  private blockKeys(allocation: Allocation): string[] {
    const keys: string[][] = Array.from({ length: this.spec.numLayers }, () => []);
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

  private remember(key: string, entry: Cached): void {
    const limit = this.options.cacheBytes ?? 256 * 2 ** 20;
    const bytes = blockBytes(entry.block);
    if (bytes > limit) return;
    this.cache.set(key, entry);
    this.cachedBytes += bytes;
    for (const [old, b] of this.cache) {
      if (this.cachedBytes <= limit) break;
      this.cache.delete(old);
      this.cachedBytes -= blockBytes(b.block);
    }
  }

  private recall(key: string): Cached | undefined {
    const entry = this.cache.get(key);
    if (entry) {
      // Most recently used last: Map order is the eviction order.
      this.cache.delete(key);
      this.cache.set(key, entry);
    }
    return entry;
  }

  /** Block i of the dense checkpoint with each linear's mask applied, from the run's ranks, as it is converted. */
  private maskedBlock(i: number, entries: readonly AllocationEntry[]): SourceBlock {
    const dense = this.checkpoint.readBlockSource(i);
    const linears: Record<string, { weight: TensorLike; bias?: TensorLike }> = { ...dense.linears };
    for (const entry of entries) {
      const l = dense.linears[entry.linear]!;
      const target = targetOf(entry);
      const group = this.statistics.groupOf(target);
      const k = prunedInGroup(groupSize(this.shapeOf(i, entry.linear), group), target);
      const weight = l.weight;
      linears[entry.linear] = {
        ...l,
        weight: {
          shape: weight.shape,
          fill: (into: Float32Array) => {
            if (isHostTensor(weight)) into.set(weight.data);
            else weight.fill(into);
            const ranks = this.statistics.ranks(i, entry.linear, group);
            timed(this.timings, "masking", () => zeroBelowRank(into, ranks, k));
          },
        },
      };
    }
    return { ...dense, linears };
  }

  /** The blocks of the model pruned at an allocation, as the decoder uploads them. */
  async prune(allocation: Allocation): Promise<KeyedBlocks> {
    this.checkAllocation(allocation);
    const keys = this.blockKeys(allocation);
    const byBlock = new Map<number, AllocationEntry[]>();
    for (const entry of allocation) byBlock.set(entry.block, [...(byBlock.get(entry.block) ?? []), entry]);
    if (this.masked) {
      await this.statistics.prepare({ ranks: true });
      const blocks = keys.map((_, i) => {
        this.options.onBlock?.(i);
        return this.maskedBlock(i, byBlock.get(i)!);
      });
      return { blocks, keys: keys.map((k, i) => `dense|${i}|${k}`) };
    }
    const store = this.options.store;
    const levels = this.options.levels;
    if (this.fromLevels && levels) await (this.levelsBuilt ??= levels.build(this.statistics, this.options.log));
    if (this.fromLevels && levels && allocation.every((e) => !("n" in targetOf(e)) && levels.holds(e.block, e.linear, e.sparsity))) {
      const blocks = keys.map((_, i) => {
        const dense = this.checkpoint.readBlockSource(i);
        const linears: Record<string, { weight: TensorLike; bias?: TensorLike }> = { ...dense.linears };
        for (const e of byBlock.get(i)!) linears[e.linear] = { ...dense.linears[e.linear]!, weight: levels.source(i, e.linear, e.sparsity, dense.linears[e.linear]!.weight.shape) };
        this.options.onBlock?.(i);
        return { ...dense, linears };
      });
      return { blocks, keys: keys.map((k, i) => `levels|${i}|${k}`) };
    }
    if (this.options.mode === "dense" && (this.options.materialise || this.fromLevels)) {
      // A prune that is exported, or an allocation off the levels (a baseline's, a grid's
      // candidates): each block's statistics from dense inputs, held one block at a time.
      const blockKeys = keys.map((k, i) => `dense|${i}|${k}`);
      const targets = new Map(allocation.map((e) => [`${e.block}.${e.linear}`, targetOf(e)]));
      await this.pipeline(targets, blockKeys, "dense");
      return { blocks: keys.map((_, i) => store.source(i)), keys: blockKeys };
    }
    if (this.options.mode === "dense") {
      await this.statistics.prepare();
      const blockKeys = keys.map((k, i) => `dense|${i}|${k}`);
      keys.forEach((_, i) => {
        const cached = this.recall(blockKeys[i]!);
        if (cached) this.keepCached(i, cached);
        else {
          const dense = this.checkpoint.readBlock(i);
          const linears: Record<string, HostBlock["linears"][string]> = {};
          const entries = new Map(byBlock.get(i)!.map((e) => [e.linear, e]));
          // SparseGPT factors each input's kept Hessian once for the block (q, k, v share one).
          pruneLinearsSharingFactors([...entries.keys()], (name) => this.statistics.inputStatistics(i, name).hessian, (name, factors) => {
            const stats = this.statistics.inputStatistics(i, name);
            linears[name] = pruneLinear(dense.linears[name]!, this.metric, targetOf(entries.get(name)!), stats, `block ${i} linear ${name}`, this.timings, false, factors);
          });
          this.keepPruned(i, { ...dense, linears: { ...dense.linears, ...linears } }, blockKeys[i]!, true);
        }
        this.options.onBlock?.(i);
      });
      return { blocks: keys.map((_, i) => store.source(i)), keys: blockKeys };
    }
    // Sequential: block i depends on the allocation of blocks 0..i, so that prefix is its key.
    const prefixKeys = keys.map((_, i) => `sequential|${keys.slice(0, i + 1).join("|")}`);
    const targets = new Map(allocation.map((e) => [`${e.block}.${e.linear}`, targetOf(e)]));
    await this.pipeline(targets, prefixKeys, "sequential");
    return { blocks: keys.map((_, i) => store.source(i)), keys: prefixKeys };
  }

  /** Stores a freshly pruned block, counts its zeros, and caches it when the cache may hold it. */
  private keepPruned(i: number, pruned: HostBlock, key: string, cache: boolean): void {
    const store = this.options.store;
    store.put(i, pruned);
    const cacheable = cache && (this.options.cacheBytes ?? 256 * 2 ** 20) > 0;
    const kept = store.read(i);
    const zeros: Record<string, number> = {};
    for (const [name, l] of Object.entries(kept.linears)) {
      zeros[name] = zerosOf(l.weight.data);
      this.zeros.set(`${i}.${name}`, zeros[name]!);
    }
    if (cacheable) this.remember(key, { block: kept, zeros });
  }

  private keepCached(i: number, entry: Cached): void {
    this.options.store.put(i, entry.block);
    for (const [name, zeros] of Object.entries(entry.zeros)) this.zeros.set(`${i}.${name}`, zeros);
  }

  private async pipeline(targets: Map<string, LinearTarget>, prefixKeys: readonly string[], mode: CalibrationMode): Promise<void> {
    const decoder = this.sequentialModel();
    // Every block starts dense: the source's own blocks.
    for (let i = 0; i < this.spec.numLayers; i++) decoder.restoreBlock(i);
    const store = this.options.store;
    const reused = new Map<number, Cached>();
    await pruneModel(decoder, { numBlocks: this.spec.numLayers, load: (i) => this.checkpoint.readBlock(i) }, {
      metric: this.metric,
      mode,
      calibration: this.statistics.options.calibration,
      ...(this.options.batch ? { batch: this.options.batch } : {}),
      ...(this.options.activations ? { activations: this.options.activations } : {}),
      ...(this.options.scratch ? { scratch: this.options.scratch } : {}),
      target: (block, linear) => targets.get(`${block}.${linear}`)!,
      // Read from the file for this call alone: pruning may overwrite it.
      denseIsFresh: true,
      reuse: (i) => {
        const cached = this.recall(prefixKeys[i]!);
        if (cached) reused.set(i, cached);
        return cached?.block;
      },
      keep: (i, pruned) => {
        const cached = reused.get(i);
        if (cached) this.keepCached(i, cached);
        else this.keepPruned(i, pruned, prefixKeys[i]!, true);
        return store.source(i);
      },
      timings: this.timings,
      onBlock: (i) => this.options.onBlock?.(i),
    });
  }

  /**
   * Requested and achieved sparsity of every linear of the allocation last pruned: zeros
   * counted as blocks were stored, or (masked candidates) by `count` on the blocks as installed.
   */
  outcomes(allocation: Allocation, count?: (block: number, linear: string) => number): LinearOutcome[] {
    return allocation.map((entry) => {
      const shape = this.shapeOf(entry.block, entry.linear);
      const size = shape[0] * shape[1];
      const zeros = this.masked ? count?.(entry.block, entry.linear) : this.zeros.get(`${entry.block}.${entry.linear}`);
      if (zeros === undefined) throw new Error(`block ${entry.block} linear ${entry.linear} has not been pruned`);
      return {
        block: entry.block,
        linear: entry.linear,
        params: entry.params,
        requested: entry.sparsity,
        expected: prunedWeights(entry, shape, this.metric) / size,
        achieved: zeros / size,
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

/** Every tensor of a block in host memory (weights still in a file are read). */
export const materialise = (block: SourceBlock): HostBlock =>
  mapBlock(block, (t) => {
    if (isHostTensor(t)) return t;
    const data = new Float32Array(t.shape.reduce((a, b) => a * b, 1));
    t.fill(data);
    return { shape: t.shape, data };
  });
