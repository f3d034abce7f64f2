/**
 * What a run knows about the dense model, computed once and never changed by pruning
 * (docs/methods.md, "Fitness and reuse"): every linear's calibration statistics (input
 * norms, and Hessians for SparseGPT), the ranks its masks are read from, the outlier
 * shares OWL starts from, MRP's non-outlier ratios, the element scores DSA reduces, and
 * MSP's Fisher traces.
 *
 * Nothing here holds the model: the calibration pass streams the dense blocks from the
 * checkpoint, and a sweep then reads each block once more to compute its scores, ranks
 * and shares. What stays is small (per-feature norms, a few numbers per block, a sample
 * of each block's scores) except the ranks, which a plan for a large model keeps in files.
 * A block of more than SAMPLE_WEIGHTS prunable weights is represented in `elementScores`
 * and `nonOutlierRatio` by a fixed sample of that many of its weights, evenly spaced in
 * layout order (with their ranks); smaller blocks by all of them, exactly.
 *
 * The passes read results back from the backend, which GPU backends only do
 * asynchronously, so they run in `prepare`; everything else is then synchronous.
 */
import { blockSourceOf } from "../checkpoint/open.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { Decoder } from "../model/decoder.ts";
import { linearShapes } from "../model/spec.ts";
import type { Activations, ActivationPlace } from "./activations.ts";
import { collectBlockStats, type LinearInputStats } from "./collect.ts";
import { embedCalibration } from "./pipeline.ts";
import { blockTraces, fisherTraces } from "./fisher.ts";
import type { Shape2 } from "./masks.ts";
import { nonOutlierRatio, OWL_M, outlierShare, type PrunedWeights } from "./outliers.ts";
import type { PruneMetric } from "./prune-linear.ts";
import { groupSize, keepFromRanks, memoryRanks, prunedInGroup, ranksOf, type RankGroup, type Ranks, type RankStore } from "./ranks.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "./scores.ts";
import { powerLawAlpha, squaredSingularValues } from "./spectra.ts";
import { emptyTimings, timed, type StageTimings } from "./timings.ts";

/** Weights of a block that represent it in element scores and MRP's ratios (all of a smaller block). */
export const SAMPLE_WEIGHTS = 2 ** 19;

/**
 * The passes over the dense model a method may need: the calibration forward that gathers
 * every linear's statistics, the sweep that scores its weights, the weight spectra
 * (AlphaPruning's, from the weights alone) and the Fisher traces (a gradient pass).
 */
export type DensePass = "statistics" | "scores" | "spectra" | "fisher";

export interface DenseStatisticsOptions {
  readonly metric: PruneMetric;
  /** Calibration windows, all of one length. */
  readonly calibration: readonly Int32Array[];
  /** Windows per forward pass. */
  readonly batch?: number;
  /** Where the seconds of each stage are added (the Pruner's, so reports count them). */
  readonly timings?: StageTimings;
  /** A pass over the dense model as it goes: `(pass, 0, blocks)` when it starts, then each block it finishes. */
  readonly onPass?: (pass: DensePass, done: number, total: number) => void;
  /** How masks compete (default: unstructured within the metric's group). */
  readonly rankGroup?: RankGroup;
  /** Where ranks are kept (default: memory). */
  readonly ranks?: RankStore;
  /** Keep every linear's Hessian for the run (SparseGPT pruning of candidates from dense statistics). */
  readonly keepHessians?: boolean;
  /** Run the passes with every block resident (the model fits) rather than streamed. */
  readonly resident?: boolean;
  /** Where the calibration hidden states wait between blocks (default: on the backend), and the folder of those on disk. */
  readonly activations?: ActivationPlace;
  readonly scratch?: string;
}

/** One row of the `stats` table: a linear, with its block's statistics beside it. */
export interface LinearStatistics {
  readonly block: number;
  readonly linear: string;
  readonly params: number;
  /** Share of this linear's element scores (the run's metric) above M times their mean. */
  readonly outlierShare: number;
  /** OWL's D of the whole block: on Wanda scores, as OWL defines it, whatever the metric. */
  readonly blockOutlierShare: number;
  /** MRP's non-outlier ratio of the dense block, on the run's metric scores. */
  readonly blockNonOutlierRatio: number;
  /** Mean over calibration windows of the sum of squared loss gradients over the weights. */
  readonly fisherTrace: number;
}

/** A block's weights as DSA and MRP see them: scores (the run's metric) with their ranks. */
interface BlockSample {
  /** Per linear in layout order: the sampled scores and their ranks in their groups. */
  readonly scores: Float32Array[];
  readonly ranks: Uint32Array[];
  /** All of them concatenated in layout order. */
  readonly all: Float32Array;
}

interface BlockKnowledge {
  readonly sample: BlockSample;
  /** OWL's D on Wanda scores (M = 5). */
  readonly share: number;
  /** Each linear's own outlier share on the run's metric scores. */
  readonly linearShares: readonly number[];
  /** Mean Wanda score over all the block's prunable weights (DLP's layer score). */
  readonly wandaMean: number;
}

export class DenseStatistics {
  readonly timings: StageTimings;
  private inputs: Map<string, LinearInputStats>[] | undefined;
  private blocks: BlockKnowledge[] | undefined;
  private traces: Map<string, number> | undefined;
  private alphas: readonly number[] | undefined;
  private readonly rankStore: RankStore;
  private ranksReady = false;

  constructor(
    readonly checkpoint: Checkpoint,
    readonly options: DenseStatisticsOptions,
  ) {
    if (options.calibration.length === 0) throw new RangeError("no calibration windows");
    this.timings = options.timings ?? emptyTimings();
    this.rankStore = options.ranks ?? memoryRanks();
  }

  get metric(): PruneMetric {
    return this.options.metric;
  }

  private get spec() {
    return this.checkpoint.spec;
  }

  /** The comparison groups of masks: the run's pattern, else the metric's group (Wanda's for SparseGPT's statistics). */
  get rankGroup(): RankGroup {
    return this.options.rankGroup ?? { kind: "unstructured", group: comparisonGroup(this.metric === "magnitude" ? "magnitude" : "wanda") };
  }

  shapeOf(block: number, linear: string): Shape2 {
    return linearShapes(this.spec, block)[linear] as Shape2;
  }

  /** The metric's own groups, which MRP's ratios and the samples use whatever the pattern. */
  private get metricGroup(): RankGroup {
    return { kind: "unstructured", group: comparisonGroup(this.metric === "magnitude" ? "magnitude" : "wanda") };
  }

  /**
   * Runs the passes that what follows needs: the calibration statistics of every linear,
   * then with `scores` the sweep that computes shares, samples and (with `ranks`) ranks,
   * and with `fisher` the Fisher traces. Each pass runs once per run, however often this
   * is called.
   */
  async prepare(needs: { readonly scores?: boolean; readonly ranks?: boolean; readonly fisher?: boolean } = {}): Promise<void> {
    this.inputs ??= await this.gather();
    if ((needs.scores && !this.blocks) || (needs.ranks && !this.ranksReady)) this.sweep(needs.ranks ?? false);
    if (needs.fisher) this.traces ??= await this.gatherTraces();
  }

  /** Every linear's calibration statistics, from one pass over the dense model. */
  private async gather(): Promise<Map<string, LinearInputStats>[]> {
    const spec = this.spec;
    const decoder = Decoder.create(spec, this.checkpoint.globalSource(), blockSourceOf(this.checkpoint), {
      streamed: !(this.options.resident ?? false),
      source: this.checkpoint.path,
    });
    const all: Map<string, LinearInputStats>[] = [];
    let inputs: Activations | undefined;
    this.options.onPass?.("statistics", 0, spec.numLayers);
    try {
      const start = performance.now();
      inputs = await embedCalibration(decoder, this.options.calibration, this.options.batch ?? 1, this.options.activations ?? "device", this.options.scratch);
      this.timings.forward += (performance.now() - start) / 1000;
      let ahead = decoder.prefetch(0);
      for (let i = 0; i < spec.numLayers; i++) {
        await ahead;
        ahead = decoder.prefetch(i + 1);
        const { stats, outputs } = await collectBlockStats(decoder, i, inputs, {
          hessian: this.metric === "sparsegpt" && (this.options.keepHessians ?? false),
          timings: this.timings,
        });
        inputs.dispose();
        inputs = outputs;
        all.push(stats);
        this.options.onPass?.("statistics", i + 1, spec.numLayers);
      }
      await ahead;
    } finally {
      inputs?.dispose();
      decoder.dispose();
    }
    return all;
  }

  /**
   * A pass over the dense model that hands each block's calibration statistics, Hessians
   * included, to `onBlock` and keeps none of them: what building SparseGPT's levels needs,
   * one block's Hessians at a time.
   */
  async eachBlockWithHessians(onBlock: (block: number, stats: Map<string, LinearInputStats>) => Promise<void>): Promise<void> {
    const spec = this.spec;
    const decoder = Decoder.create(spec, this.checkpoint.globalSource(), blockSourceOf(this.checkpoint), { streamed: true, source: this.checkpoint.path });
    let inputs: Activations | undefined;
    try {
      inputs = await embedCalibration(decoder, this.options.calibration, this.options.batch ?? 1, this.options.activations ?? "device", this.options.scratch);
      let ahead = decoder.prefetch(0);
      for (let i = 0; i < spec.numLayers; i++) {
        await ahead;
        ahead = decoder.prefetch(i + 1);
        const { stats, outputs } = await collectBlockStats(decoder, i, inputs, { hessian: true, timings: this.timings });
        inputs.dispose();
        inputs = outputs;
        await onBlock(i, stats);
      }
      await ahead;
    } finally {
      inputs?.dispose();
      decoder.dispose();
    }
  }

  /**
   * One read of every dense block: scores under the run's metric (and Wanda's for OWL),
   * ranks when asked, outlier shares and the block's sample. A block's scores are alive
   * only while it is swept.
   */
  private sweep(withRanks: boolean): void {
    const spec = this.spec;
    const blocks: BlockKnowledge[] = [];
    this.options.onPass?.("scores", 0, spec.numLayers);
    for (let b = 0; b < spec.numLayers; b++) {
      const dense = this.checkpoint.readBlock(b);
      const metricScores: Float32Array[] = [];
      const wanda: Float32Array[] = [];
      const sampleRanks: Uint32Array[] = [];
      const sampled: Float32Array[] = [];
      const sizes = spec.linears.map((name) => dense.linears[name]!.weight.data.length);
      const total = sizes.reduce((a, c) => a + c, 0);
      const picks = sampleIndices(total);
      let offset = 0;
      spec.linears.forEach((name, k) => {
        const weight = dense.linears[name]!.weight.data;
        const shape = this.shapeOf(b, name);
        const norms = this.inputStatistics(b, name).norms.norms();
        const scores = timed(this.timings, "scoring", () => (this.metric === "magnitude" ? magnitudeScores(weight) : wandaScores(weight, shape, norms)));
        metricScores.push(scores);
        wanda.push(this.metric === "wanda" ? scores : timed(this.timings, "scoring", () => wandaScores(weight, shape, norms)));
        const ranks = timed(this.timings, "scoring", () => ranksOf(scores, shape, this.metricGroup));
        const group = this.rankGroup;
        const key = groupKey(group);
        if (withRanks && !this.rankStore.has(b, `${key}/${name}`)) {
          this.rankStore.put(b, `${key}/${name}`, group.kind === "nm" ? timed(this.timings, "scoring", () => ranksOf(scores, shape, group)) : ranks);
        }
        // This linear's part of the block's sample: indices in [offset, offset + size).
        const mine = picks ? picks.filter((p) => p >= offset && p < offset + sizes[k]!).map((p) => p - offset) : undefined;
        sampled.push(mine ? Float32Array.from(mine, (i) => scores[i]!) : scores);
        sampleRanks.push(mine ? Uint32Array.from(mine, (i) => ranks[i]!) : Uint32Array.from(ranks));
        offset += sizes[k]!;
      });
      const all = new Float32Array(sampled.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of sampled) {
        all.set(p, at);
        at += p.length;
      }
      let wandaSum = 0;
      for (const scores of wanda) for (let i = 0; i < scores.length; i++) wandaSum += scores[i]!;
      blocks.push({
        sample: { scores: sampled, ranks: sampleRanks, all },
        share: outlierShare(wanda),
        linearShares: metricScores.map((s) => outlierShare([s], OWL_M)),
        wandaMean: total > 0 ? wandaSum / total : 0,
      });
      this.options.onPass?.("scores", b + 1, spec.numLayers);
    }
    this.blocks ??= blocks;
    if (withRanks) this.ranksReady = true;
  }

  /** Fisher trace of every linear ("block.linear"), block by block from the dense checkpoint. */
  private async gatherTraces(): Promise<Map<string, number>> {
    const decoder = Decoder.create(this.spec, this.checkpoint.globalSource(), blockSourceOf(this.checkpoint), {
      streamed: !(this.options.resident ?? false),
      source: this.checkpoint.path,
    });
    try {
      this.options.onPass?.("fisher", 0, this.spec.numLayers);
      return await fisherTraces(decoder, this.options.calibration, this.options.onPass ? (done, total) => this.options.onPass!("fisher", done, total) : undefined);
    } finally {
      decoder.dispose();
    }
  }

  private knowledge(block: number): BlockKnowledge {
    if (!this.blocks) throw new Error("the dense scores are read before prepare({ scores: true }) computed them (a method plugin lists what it reads in `needs`)");
    const k = this.blocks[block];
    if (!k) throw new RangeError(`block ${block} does not exist`);
    return k;
  }

  /** Calibration statistics of a dense linear's input (norms; Hessian for SparseGPT when kept). */
  inputStatistics(block: number, linear: string): LinearInputStats {
    if (!this.inputs) throw new Error("the dense statistics are read before prepare() gathered them (a method plugin lists what it reads in `needs`)");
    const stats = this.inputs[block]?.get(linear);
    if (!stats) throw new Error(`block ${block} has no statistics for linear ${linear}`);
    return stats;
  }

  /**
   * Ranks of a dense linear's weights in their comparison groups: the run's groups
   * (`rankGroup`), computed for every linear by `prepare({ ranks: true })`, or another
   * kind (an N:M pattern of another M), computed for this linear when first asked.
   */
  ranks(block: number, linear: string, group: RankGroup = this.rankGroup): Ranks {
    const key = `${groupKey(group)}/${linear}`;
    if (!this.rankStore.has(block, key)) {
      if (groupKey(group) === groupKey(this.rankGroup) && !this.ranksReady) throw new Error("ranks are read before prepare({ ranks: true }) computed them");
      const weight = this.checkpoint.readBlock(block).linears[linear]!.weight.data;
      const shape = this.shapeOf(block, linear);
      const scores = this.metric === "magnitude" ? magnitudeScores(weight) : wandaScores(weight, shape, this.inputStatistics(block, linear).norms.norms());
      this.rankStore.put(block, key, timed(this.timings, "scoring", () => ranksOf(scores, shape, group)));
    }
    return this.rankStore.get(block, key);
  }

  /** The comparison groups of a target: N of M for a pattern, the run's groups otherwise. */
  groupOf(target: { readonly sparsity: number } | { readonly n: number; readonly m: number }): RankGroup {
    return "n" in target ? { kind: "nm", m: target.m } : this.rankGroup.kind === "nm" ? this.metricGroup : this.rankGroup;
  }

  /** Keep-mask of a dense linear at a sparsity (or N:M), from its ranks. */
  keepMask(block: number, linear: string, target: { readonly sparsity: number } | { readonly n: number; readonly m: number }): Uint8Array {
    const group = this.groupOf(target);
    const ranks = this.ranks(block, linear, group);
    const k = prunedInGroup(groupSize(this.shapeOf(block, linear), group), target);
    return timed(this.timings, "masking", () => keepFromRanks(ranks, k));
  }

  /** MRP's non-outlier ratio of block l's scores when it alone is pruned at `sparsity` (on its sample for large blocks). */
  nonOutlierRatio(block: number, sparsity: number, pruned: PrunedWeights = "zero"): number {
    const { sample } = this.knowledge(block);
    const group = this.metricGroup;
    const masks = this.spec.linears.map((name, k) => keepFromRanks(sample.ranks[k]!, prunedInGroup(groupSize(this.shapeOf(block, name), group), { sparsity })));
    return nonOutlierRatio(sample.scores, masks, OWL_M, pruned);
  }

  /** OWL's outlier share D_l of each block (M = 5), on Wanda scores. */
  outlierShares(): readonly number[] {
    return Array.from({ length: this.spec.numLayers }, (_, b) => this.knowledge(b).share);
  }

  /** Fisher trace of every linear ("block.linear"); `prepare({ fisher: true })` measures them. */
  linearFisherTraces(): ReadonlyMap<string, number> {
    if (!this.traces) throw new Error("the Fisher traces are read before prepare({ fisher: true }) measured them (a method plugin lists what it reads in `needs`)");
    return this.traces;
  }

  /** Fisher trace of each block (the sum over its linears). */
  fisherTraces(): readonly number[] {
    return blockTraces(this.linearFisherTraces(), this.spec.numLayers);
  }

  /** Mean Wanda score of each block over all its prunable weights (DLP). */
  wandaMeans(): readonly number[] {
    return Array.from({ length: this.spec.numLayers }, (_, b) => this.knowledge(b).wandaMean);
  }

  /**
   * The heavy-tail exponent α of every prunable linear's weight spectrum, in layout order
   * (AlphaPruning; src/prune/spectra.ts). From the weights alone, measured on first use
   * and kept for the run.
   */
  linearSpectralAlphas(): readonly number[] {
    if (!this.alphas) {
      this.options.onPass?.("spectra", 0, this.spec.numLayers);
      const alphas: number[] = [];
      for (let b = 0; b < this.spec.numLayers; b++) {
        const dense = this.checkpoint.readBlock(b);
        for (const name of this.spec.linears) {
          const [rows, cols] = this.shapeOf(b, name);
          alphas.push(timed(this.timings, "scoring", () => powerLawAlpha(squaredSingularValues(dense.linears[name]!.weight.data, rows, cols))));
        }
        this.options.onPass?.("spectra", b + 1, this.spec.numLayers);
      }
      this.alphas = alphas;
    }
    return this.alphas;
  }

  /** The element scores of block l's prunable linears, concatenated in layout order (its sample for large blocks). */
  blockElementScores(block: number): Float32Array {
    return this.knowledge(block).sample.all;
  }

  /** The `stats` table: every linear with its own and its block's statistics. */
  async table(): Promise<LinearStatistics[]> {
    await this.prepare({ scores: true, fisher: true });
    const spec = this.spec;
    const traces = this.linearFisherTraces();
    const rows: LinearStatistics[] = [];
    for (let b = 0; b < spec.numLayers; b++) {
      const k = this.knowledge(b);
      const nor = this.nonOutlierRatio(b, 0);
      spec.linears.forEach((name, j) => {
        const [inFeatures, outFeatures] = this.shapeOf(b, name);
        rows.push({
          block: b,
          linear: name,
          params: inFeatures * outFeatures,
          outlierShare: k.linearShares[j]!,
          blockOutlierShare: k.share,
          blockNonOutlierRatio: nor,
          fisherTrace: traces.get(`${b}.${name}`)!,
        });
      });
    }
    return rows;
  }

  dispose(): void {
    this.rankStore.dispose();
  }
}

const groupKey = (group: RankGroup): string => (group.kind === "nm" ? `nm${group.m}` : group.group);

/** Evenly spaced indices of a block's weights in layout order, or undefined when all are taken. */
const sampleIndices = (total: number): Int32Array | undefined => {
  if (total <= SAMPLE_WEIGHTS) return undefined;
  return Int32Array.from({ length: SAMPLE_WEIGHTS }, (_, j) => Math.floor((j * total) / SAMPLE_WEIGHTS));
};
