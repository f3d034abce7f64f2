/**
 * What a run knows about the dense model, computed once and never changed by pruning
 * (docs/methods.md, "Fitness and reuse"): every linear's calibration statistics (input
 * norms, and Hessians for SparseGPT), its element scores and their sort order, the
 * outlier shares OWL starts from, MRP's non-outlier ratios, and MSP's Fisher traces.
 *
 * It runs its own passes over the dense weights (a streamed forward for the statistics, a
 * trainable copy for the gradients), so no call order of a Pruner, and no installed
 * candidate, can change what it returns. The `stats` command and every allocation method
 * read the dense model through this one module.
 *
 * The passes read results back from the backend, which GPU backends only do
 * asynchronously, so they run in `prepare`; the numbers derived from them (scores, sort
 * orders, masks, outlier shares) are then computed on the host when first asked for.
 */
import * as tf from "@tensorflow/tfjs";
import type { Checkpoint } from "../checkpoint/types.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock } from "../model/spec.ts";
import { collectBlockStats, type LinearInputStats } from "./collect.ts";
import { blockTraces, fisherTraces } from "./fisher.ts";
import { maskAtSparsity, sortedOrder, type Shape2, type SortOrder } from "./masks.ts";
import { nonOutlierRatio, OWL_M, outlierShare, type PrunedWeights } from "./outliers.ts";
import type { PruneMetric } from "./prune-linear.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "./scores.ts";
import { emptyTimings, timed, type StageTimings } from "./timings.ts";

export interface DenseStatisticsOptions {
  readonly metric: PruneMetric;
  /** Calibration windows, all of one length. */
  readonly calibration: readonly Int32Array[];
  /** Windows per forward pass. */
  readonly batch?: number;
  /** Where the seconds of each stage are added (the Pruner's, so reports count them). */
  readonly timings?: StageTimings;
  readonly onBlock?: (block: number) => void;
}

interface LinearKnowledge {
  readonly stats: LinearInputStats;
  scores?: Float32Array;
  order?: SortOrder;
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

export class DenseStatistics {
  readonly timings: StageTimings;
  private inputs: Map<string, LinearInputStats>[] | undefined;
  private readonly linears = new Map<string, LinearKnowledge>();
  private shares: number[] | undefined;
  private traces: Map<string, number> | undefined;
  private readonly blockScores = new Map<number, Float32Array>();

  constructor(
    readonly checkpoint: Checkpoint,
    /** The dense weights of every block (host arrays, shared with the Pruner, never modified). */
    private readonly dense: readonly HostBlock[],
    readonly options: DenseStatisticsOptions,
  ) {
    if (options.calibration.length === 0) throw new RangeError("no calibration windows");
    this.timings = options.timings ?? emptyTimings();
  }

  get metric(): PruneMetric {
    return this.options.metric;
  }

  private get spec() {
    return this.checkpoint.spec;
  }

  shapeOf(block: number, linear: string): Shape2 {
    return this.dense[block]!.linears[linear]!.weight.shape as unknown as Shape2;
  }

  /**
   * Runs the passes that what follows needs: the calibration statistics of every linear
   * (scores, masks, outlier shares, MRP), and with `fisher` the Fisher traces too. Each
   * pass runs once per run, however often this is called.
   */
  async prepare(needs: { readonly fisher?: boolean } = {}): Promise<void> {
    this.inputs ??= await this.gather();
    if (needs.fisher) this.traces ??= await this.gatherTraces();
  }

  /** Every linear's calibration statistics, from one streamed pass over the dense model. */
  private async gather(): Promise<Map<string, LinearInputStats>[]> {
    const spec = this.spec;
    const decoder = Decoder.create(spec, this.checkpoint.readGlobals(), { numBlocks: spec.numLayers, load: (i) => this.dense[i]! }, { streamed: true });
    const seqlen = this.options.calibration[0]!.length;
    const per = Math.max(1, this.options.batch ?? 1);
    const groups: Int32Array[][] = [];
    for (let i = 0; i < this.options.calibration.length; i += per) groups.push(this.options.calibration.slice(i, i + per) as Int32Array[]);
    const all: Map<string, LinearInputStats>[] = [];
    let inputs: tf.Tensor2D[] = [];
    try {
      inputs = timed(this.timings, "forward", () =>
        groups.map((g) => {
          const ids = new Int32Array(g.length * seqlen);
          g.forEach((w, k) => ids.set(w, k * seqlen));
          return decoder.embed(ids, g.length, seqlen);
        }),
      );
      for (let i = 0; i < spec.numLayers; i++) {
        const { stats, outputs } = await collectBlockStats(decoder, i, inputs, groups.map((g) => g.length), seqlen, {
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
      decoder.dispose();
    }
    return all;
  }

  /** Fisher trace of every linear ("block.linear"), from a trainable copy of the dense model. */
  private async gatherTraces(): Promise<Map<string, number>> {
    const spec = this.spec;
    const decoder = Decoder.create(spec, this.checkpoint.readGlobals(), { numBlocks: spec.numLayers, load: (i) => this.dense[i]! }, { trainable: true });
    try {
      return await fisherTraces(decoder, this.options.calibration);
    } finally {
      decoder.dispose();
    }
  }

  private knowledge(block: number, linear: string): LinearKnowledge {
    const key = `${block}.${linear}`;
    let k = this.linears.get(key);
    if (!k) {
      if (!this.inputs) throw new Error("the dense statistics are read before prepare() gathered them (a method plugin lists what it reads in `needs`)");
      const stats = this.inputs[block]!.get(linear);
      if (!stats) throw new Error(`block ${block} has no statistics for linear ${linear}`);
      k = { stats };
      this.linears.set(key, k);
    }
    return k;
  }

  /** Calibration statistics of a dense linear's input (norms; Hessian for SparseGPT). */
  inputStatistics(block: number, linear: string): LinearInputStats {
    return this.knowledge(block, linear).stats;
  }

  /**
   * Element scores of a dense linear under the run's metric. SparseGPT's own saliency
   * changes as it prunes column by column, so its statistics use Wanda's scores: |W| times
   * the root of diag(XᵀX), the diagonal-Hessian form of the same second-order saliency.
   */
  elementScores(block: number, linear: string): Float32Array {
    const k = this.knowledge(block, linear);
    if (!k.scores) {
      const weight = this.dense[block]!.linears[linear]!.weight.data;
      k.scores = timed(this.timings, "scoring", () =>
        this.options.metric === "magnitude" ? magnitudeScores(weight) : wandaScores(weight, this.shapeOf(block, linear), k.stats.norms.norms()),
      );
    }
    return k.scores;
  }

  /**
   * Wanda scores of a dense linear whatever the run's metric: OWL's outlier shares are
   * defined on them (its released code uses them for magnitude pruning too).
   */
  wandaScores(block: number, linear: string): Float32Array {
    if (this.options.metric === "wanda") return this.elementScores(block, linear);
    const k = this.knowledge(block, linear);
    const weight = this.dense[block]!.linears[linear]!.weight.data;
    return timed(this.timings, "scoring", () => wandaScores(weight, this.shapeOf(block, linear), k.stats.norms.norms()));
  }

  private orderOf(block: number, linear: string): SortOrder {
    const k = this.knowledge(block, linear);
    if (!k.order) {
      const scores = this.elementScores(block, linear);
      const group = comparisonGroup(this.options.metric === "magnitude" ? "magnitude" : "wanda");
      k.order = timed(this.timings, "scoring", () => sortedOrder(scores, this.shapeOf(block, linear), group));
    }
    return k.order;
  }

  /** Keep-mask of a dense linear at a sparsity, by the run's metric (magnitude or Wanda groups). */
  keepMask(block: number, linear: string, sparsity: number): Uint8Array {
    const order = this.orderOf(block, linear);
    return timed(this.timings, "masking", () => maskAtSparsity(order, sparsity));
  }

  /** MRP's non-outlier ratio of block l's scores when it alone is pruned at `sparsity`. */
  nonOutlierRatio(block: number, sparsity: number, pruned: PrunedWeights = "zero"): number {
    const names = this.spec.linears;
    return nonOutlierRatio(
      names.map((n) => this.elementScores(block, n)),
      names.map((n) => this.keepMask(block, n, sparsity)),
      OWL_M,
      pruned,
    );
  }

  /** OWL's outlier share D_l of each block (M = 5), on Wanda scores. */
  outlierShares(): readonly number[] {
    this.shares ??= Array.from({ length: this.spec.numLayers }, (_, b) => outlierShare(this.spec.linears.map((name) => this.wandaScores(b, name))));
    return this.shares;
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

  /** The element scores of block l's prunable linears, concatenated in layout order. */
  blockElementScores(block: number): Float32Array {
    let all = this.blockScores.get(block);
    if (!all) {
      const parts = this.spec.linears.map((name) => this.elementScores(block, name));
      all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let offset = 0;
      for (const p of parts) {
        all.set(p, offset);
        offset += p.length;
      }
      this.blockScores.set(block, all);
    }
    return all;
  }

  /** The `stats` table: every linear with its own and its block's statistics. */
  async table(): Promise<LinearStatistics[]> {
    await this.prepare({ fisher: true });
    const spec = this.spec;
    const traces = this.linearFisherTraces();
    const shares = this.outlierShares();
    const rows: LinearStatistics[] = [];
    for (let b = 0; b < spec.numLayers; b++) {
      const nor = this.nonOutlierRatio(b, 0);
      for (const name of spec.linears) {
        const scores = this.elementScores(b, name);
        rows.push({
          block: b,
          linear: name,
          params: scores.length,
          outlierShare: outlierShare([scores], OWL_M),
          blockOutlierShare: shares[b]!,
          blockNonOutlierRatio: nor,
          fisherTrace: traces.get(`${b}.${name}`)!,
        });
      }
    }
    return rows;
  }
}
