/**
 * Applies allocations to one model, again and again: the layer beneath the prune command,
 * ATP's grid and every search (docs/methods.md, "Fitness and reuse"). It is three parts:
 *  - DenseStatistics: what the run knows about the dense model, computed once;
 *  - PrunedBlocks: allocation -> pruned block weights, pure, with a cache;
 *  - the installed model: a decoder holding the blocks of the last allocation applied
 *    (or the dense ones), which perplexity measures.
 * Statistics and pruned weights never depend on what is installed, so the order of calls
 * cannot change a result.
 */
import type { Allocation, Layout } from "../allocation/allocation.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import type { Window } from "../data/windows.ts";
import { klDivergence, type DenseReference, type KlResult } from "../eval/kl.ts";
import { perplexity, type PerplexityResult } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock } from "../model/spec.ts";
import { DenseStatistics } from "./dense-statistics.ts";
import type { CalibrationMode } from "./pipeline.ts";
import type { PruneMetric } from "./prune-linear.ts";
import { PrunedBlocks, type LinearOutcome } from "./pruned-blocks.ts";
import { emptyTimings, type StageTimings } from "./timings.ts";

export type { LinearOutcome } from "./pruned-blocks.ts";

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

export class Pruner {
  readonly timings: StageTimings = emptyTimings();
  readonly statistics: DenseStatistics;
  private readonly blocks: PrunedBlocks;
  private readonly dense: HostBlock[];
  private readonly decoder: Decoder;
  /** Key of the block each decoder slot holds now ("" = dense). */
  private readonly installed: string[];

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly options: PrunerOptions,
  ) {
    const spec = checkpoint.spec;
    this.dense = Array.from({ length: spec.numLayers }, (_, i) => checkpoint.readBlock(i));
    this.statistics = new DenseStatistics(checkpoint, this.dense, {
      metric: options.metric,
      calibration: options.calibration,
      timings: this.timings,
      ...(options.batch ? { batch: options.batch } : {}),
      ...(options.onBlock ? { onBlock: options.onBlock } : {}),
    });
    this.blocks = new PrunedBlocks(this.dense, this.statistics, {
      mode: options.mode,
      ...(options.batch ? { batch: options.batch } : {}),
      ...(options.cacheBytes !== undefined ? { cacheBytes: options.cacheBytes } : {}),
      ...(options.onBlock ? { onBlock: options.onBlock } : {}),
    });
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

  get layout(): Layout {
    return this.blocks.layout;
  }

  /**
   * The allocation rounded to whole weights: equal keys prune every linear identically, so
   * a search may cache fitness by it.
   */
  allocationKey(allocation: Allocation): string {
    return this.blocks.allocationKey(allocation);
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

  /**
   * Prunes the model with an allocation and installs the pruned weights for `perplexity`.
   * Returns the pruned blocks (shared with the cache: do not modify).
   */
  async apply(allocation: Allocation): Promise<HostBlock[]> {
    const { blocks, keys } = await this.blocks.prune(allocation);
    blocks.forEach((block, i) => this.install(i, keys[i]!, block));
    return blocks;
  }

  /** Perplexity of the model as installed (after `apply`, the pruned model). */
  async perplexity(windows: readonly Window[], options: { batch?: number; onProgress?: (done: number, total: number) => void } = {}): Promise<PerplexityResult> {
    const start = performance.now();
    try {
      return await perplexity(this.decoder, windows, options);
    } finally {
      this.timings.evaluation += (performance.now() - start) / 1000;
    }
  }

  /**
   * Adds the dense distributions of windows `reference` does not hold yet, with the dense
   * blocks installed for it (call before `apply`: it may restore the dense model).
   */
  async addDenseReference(windows: readonly Window[], reference: DenseReference): Promise<void> {
    const missing = windows.filter((w) => !reference.has(w));
    if (missing.length === 0) return;
    this.restoreDense();
    await reference.add(this.decoder, missing);
  }

  /** KL(dense || model as installed) per token; the windows' dense reference added first. */
  async kl(windows: readonly Window[], reference: DenseReference): Promise<KlResult> {
    const start = performance.now();
    try {
      return await klDivergence(this.decoder, windows, reference);
    } finally {
      this.timings.evaluation += (performance.now() - start) / 1000;
    }
  }

  /** Requested and achieved sparsity of every linear of the pruned blocks. */
  outcomes(allocation: Allocation, blocks: readonly HostBlock[]): LinearOutcome[] {
    return this.blocks.outcomes(allocation, blocks);
  }

  dispose(): void {
    this.decoder.dispose();
    this.blocks.dispose();
  }
}
