/**
 * Applies allocations to one model, again and again: the layer beneath the prune command,
 * ATP's grid and every search (docs/methods.md, "Fitness and reuse"). It is three parts:
 *  - DenseStatistics: what the run knows about the dense model, computed once;
 *  - PrunedBlocks: allocation -> pruned blocks, pure, with a cache;
 *  - the installed model: a decoder holding the blocks of the last allocation applied
 *    (or the dense ones), which perplexity measures. It keeps its blocks resident or
 *    streams them from the checkpoint (and the pruned ones from the run's store), as the
 *    run's memory plan says; the numbers are the same either way.
 * Statistics and pruned weights never depend on what is installed, so the order of calls
 * cannot change a result.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Allocation, Layout } from "../allocation/allocation.ts";
import { blockSourceOf } from "../checkpoint/open.ts";
import type { Checkpoint, StorageDtype } from "../checkpoint/types.ts";
import type { Window } from "../data/windows.ts";
import { klDivergence, type DenseReference, type KlResult } from "../eval/kl.ts";
import { perplexity, windowLosses, type PerplexityResult } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, SourceBlock } from "../model/spec.ts";
import type { ActivationPlace } from "./activations.ts";
import { DenseStatistics, type DensePass } from "./dense-statistics.ts";
import type { CalibrationMode } from "./pipeline.ts";
import type { PruneMetric } from "./prune-linear.ts";
import { entryKey, materialise, PrunedBlocks, type LinearOutcome } from "./pruned-blocks.ts";
import { LevelDatabase, type LevelsRequest } from "./levels.ts";
import { layoutOf } from "../allocation/allocation.ts";
import { linearShapes } from "../model/spec.ts";
import type { Shape2 } from "./masks.ts";
import { diskStore, memoryStore, type PrunedStore } from "./pruned-store.ts";
import { diskRanks, memoryRanks, type RankGroup } from "./ranks.ts";
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
  /** Each block pruned (a candidate's, a prune's). */
  readonly onBlock?: (block: number) => void;
  /** A pass over the dense model as it goes (DenseStatistics). */
  readonly onPass?: (pass: DensePass, done: number, total: number) => void;
  /** How masks compete: the run's N:M pattern, else unstructured within the metric's group. */
  readonly rankGroup?: RankGroup;
  /**
   * Prune every allocation into the store, also in dense mode (a prune that is evaluated and
   * exported); otherwise dense-mode candidates are only masked as they are uploaded.
   */
  readonly materialise?: boolean;
  /** The dtype pruned blocks are kept (and exported) in (default: the checkpoint's). */
  readonly dtype?: StorageDtype;
  /** Stream the evaluated model's blocks instead of keeping them resident. */
  readonly streamed?: boolean;
  /** Upload each head chunk when it is used (very large vocabularies under a tight plan). */
  readonly streamedHead?: boolean;
  /** Tokens a pass over many windows may hold. */
  readonly passTokens?: number;
  /** A scratch folder for pruned blocks and ranks that the plan keeps on disk; absent: in memory. */
  readonly scratch?: string;
  /** Where calibration hidden states wait between blocks. */
  readonly activations?: ActivationPlace;
  /**
   * SparseGPT's levels (levels.ts): dense-mode SparseGPT candidates are read from linears
   * pruned at the sparsities the method can reach (each when first asked for, from its
   * input's factor), instead of from every linear's Hessian kept for the run.
   */
  readonly levels?: Omit<LevelsRequest, "keyOf">;
  /** Lines about long preparations (factoring the levels). */
  readonly log?: (line: string) => void;
}

export class Pruner {
  readonly timings: StageTimings = emptyTimings();
  readonly statistics: DenseStatistics;
  private readonly blocks: PrunedBlocks;
  private readonly decoder: Decoder;
  private readonly store: PrunedStore;
  /** Key of the block each decoder slot holds now ("" = dense). */
  private readonly installed: string[];
  /** The blocks of the allocation last applied, as they were installed. */
  private last: SourceBlock[] = [];
  private readonly scratchDir: string | undefined;

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly options: PrunerOptions,
  ) {
    const spec = checkpoint.spec;
    // Each Pruner its own folder in the scratch space (worker threads share the space).
    if (options.scratch) mkdirSync(options.scratch, { recursive: true });
    const scratch = options.scratch ? mkdtempSync(join(options.scratch, "pruner-")) : undefined;
    this.scratchDir = scratch;
    this.statistics = new DenseStatistics(checkpoint, {
      metric: options.metric,
      calibration: options.calibration,
      timings: this.timings,
      // Dense-mode SparseGPT candidates are pruned from the run's Hessians; an exported prune
      // gathers each block's own, one block at a time.
      keepHessians: options.mode === "dense" && options.metric === "sparsegpt" && !options.materialise && !options.levels,
      ranks: scratch ? diskRanks(join(scratch, "ranks")) : memoryRanks(),
      ...(options.rankGroup ? { rankGroup: options.rankGroup } : {}),
      ...(options.batch ? { batch: options.batch } : {}),
      ...(options.onPass ? { onPass: options.onPass } : {}),
      ...(options.activations ? { activations: options.activations } : {}),
      ...(scratch ? { scratch } : {}),
    });
    const dtype = options.dtype ?? checkpoint.storageDtype;
    this.store = scratch ? diskStore(join(scratch, "pruned"), dtype) : memoryStore(dtype);
    const layout = layoutOf(spec);
    const levels = options.levels
      ? new LevelDatabase(checkpoint, layout, dtype, {
          ...options.levels,
          keyOf: (block, linear, sparsity) => entryKey({ ...layout.find((s) => s.block === block && s.linear === linear)!, sparsity }, linearShapes(spec, block)[linear] as Shape2, options.metric),
        })
      : undefined;
    this.blocks = new PrunedBlocks(checkpoint, this.statistics, {
      mode: options.mode,
      store: this.store,
      ...(levels ? { levels } : {}),
      ...(options.log ? { log: options.log } : {}),
      ...(options.materialise ? { materialise: true } : {}),
      ...(options.batch ? { batch: options.batch } : {}),
      ...(options.cacheBytes !== undefined ? { cacheBytes: options.cacheBytes } : {}),
      ...(options.onBlock ? { onBlock: options.onBlock } : {}),
      ...(options.activations ? { activations: options.activations } : {}),
      ...(scratch ? { scratch } : {}),
    });
    this.decoder = Decoder.create(spec, checkpoint.globalSource(), blockSourceOf(checkpoint), {
      streamed: options.streamed ?? false,
      ...(options.streamedHead ? { streamedHead: true } : {}),
      ...(options.passTokens ? { passTokens: options.passTokens } : {}),
      source: checkpoint.path,
    });
    this.installed = new Array<string>(spec.numLayers).fill("");
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

  /** Whether candidates are masked from the dense ranks as they are uploaded (dense mode, magnitude or Wanda, nothing exported). */
  get masksFromRanks(): boolean {
    return this.blocks.masked;
  }

  /** The dtype pruned blocks are kept and exported in. */
  get dtype(): StorageDtype {
    return this.store.dtype;
  }

  /**
   * The allocation rounded to whole weights: equal keys prune every linear identically, so
   * a search may cache fitness by it.
   */
  allocationKey(allocation: Allocation): string {
    return this.blocks.allocationKey(allocation);
  }

  /** Factors SparseGPT's levels now when the run reads candidates from them (it says what they cost on disk). */
  prepareLevels(log?: (line: string) => void, onFactor?: (done: number, total: number) => void): Promise<void> {
    return this.blocks.prepareLevels(log, onFactor);
  }

  /** Puts the dense weights back into every block. */
  restoreDense(): void {
    this.installed.forEach((key, i) => {
      if (key === "") return;
      this.decoder.restoreBlock(i);
      this.installed[i] = "";
    });
  }

  /** Prunes the model with an allocation and installs the pruned weights for `perplexity`. */
  async apply(allocation: Allocation): Promise<void> {
    const { blocks, keys } = await this.blocks.prune(allocation);
    this.last = blocks;
    blocks.forEach((block, i) => {
      // Equal keys prune identically: the block installed already holds these weights.
      if (this.installed[i] === keys[i]) return;
      this.decoder.setBlock(i, block);
      this.installed[i] = keys[i]!;
    });
  }

  /** Block i of the allocation last applied, as float32 host arrays (pruned through the store). */
  prunedBlock(i: number): HostBlock {
    return this.store.read(i);
  }

  /**
   * Every block of the allocation last applied, as installed, in host memory (small models
   * and tests: this holds the whole pruned model).
   */
  prunedBlocks(): HostBlock[] {
    return this.last.map((b) => materialise(b));
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

  /** Each window's summed NLL and scored tokens on the model as installed (a user's fitness measure reads them). */
  async windowLosses(windows: readonly Window[]): Promise<{ nll: number; tokens: number }[]> {
    const start = performance.now();
    try {
      return await windowLosses(this.decoder, windows);
    } finally {
      this.timings.evaluation += (performance.now() - start) / 1000;
    }
  }

  /**
   * Adds the dense distributions of windows `reference` does not hold yet, with the dense
   * blocks installed for it (call before `apply`: it may restore the dense model).
   */
  async addDenseReference(windows: readonly Window[], reference: DenseReference): Promise<void> {
    if (windows.every((w) => reference.has(w))) return;
    this.restoreDense();
    // All the windows, not only the missing ones: the reference keeps every window it is
    // given when it makes room, so none this evaluation reads is dropped.
    await reference.add(this.decoder, windows);
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

  /** Requested and achieved sparsity of every linear of the allocation last applied. */
  outcomes(allocation: Allocation): LinearOutcome[] {
    const counted = new Map<number, HostBlock>();
    return this.blocks.outcomes(allocation, (block, linear) => {
      if (!counted.has(block)) counted.set(block, materialise(this.last[block]!));
      const data = counted.get(block)!.linears[linear]!.weight.data;
      let zeros = 0;
      for (let e = 0; e < data.length; e++) if (data[e] === 0) zeros++;
      return zeros;
    });
  }

  dispose(): void {
    this.decoder.dispose();
    this.blocks.dispose();
    this.store.dispose();
    this.statistics.dispose();
    if (this.scratchDir) rmSync(this.scratchDir, { recursive: true, force: true });
  }
}
