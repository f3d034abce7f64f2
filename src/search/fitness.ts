/**
 * From a plugin's per-block sparsities to a perplexity: expand to every linear, prune with
 * the run's Pruner, score the fitness windows. Lower is better.
 */
import { blockParams, type Layout } from "../allocation/allocation.ts";
import { toAllocation, type BlockAllocation, type Pattern } from "../allocation/pattern.ts";
import { defaultBounds, type Bounds } from "../allocation/project.ts";
import type { Window } from "../data/windows.ts";
import type { DenseReference } from "../eval/kl.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../engine/genome.ts";
import type { Pruner } from "../prune/pruner.ts";
import type { DenseStatistics } from "../prune/dense-statistics.ts";
import type { BlockStatistics, MethodContext, MethodPlugin } from "./plugin.ts";
import type { FitnessMeasurePlugin } from "./fitness-measure.ts";


/** The numbers a plugin sees of the dense model, read from the run's DenseStatistics. */
export const blockStatistics = (dense: DenseStatistics): BlockStatistics => ({
  outlierShares: () => dense.outlierShares(),
  fisherTraces: () => dense.fisherTraces(),
  elementScores: (block) => dense.blockElementScores(block),
  nonOutlierRatio: (block, sparsity, pruned) => dense.nonOutlierRatio(block, sparsity, pruned),
  meanWandaScores: () => dense.wandaMeans(),
  spectralAlphas: () => dense.linearSpectralAlphas(),
});

/**
 * What the methods see of the run: sizes, target, bounds and the dense statistics, with
 * the statistics that any of `methods` needs measured first. `ranks`: this pruner will
 * mask candidates from the dense ranks next (a search scoring in this process), so the
 * sweep that scores the weights keeps them too, rather than a second sweep for them.
 */
export const methodContext = async (
  pruner: Pruner,
  target: number,
  pattern: Pattern,
  methods: readonly Pick<MethodPlugin, "needs">[],
  options: { readonly bounds?: Bounds; readonly ranks?: boolean } = {},
): Promise<MethodContext> => {
  const bounds = options.bounds ?? defaultBounds;
  const needs = new Set(methods.flatMap((m) => m.needs ?? []));
  const ranks = (options.ranks ?? false) && needs.has("scores") && pruner.masksFromRanks;
  if (needs.size > 0) await pruner.statistics.prepare({ scores: needs.has("scores"), fisher: needs.has("fisher"), ranks });
  return {
    blocks: pruner.spec.numLayers,
    metric: pruner.options.metric,
    blockParams: blockParams(pruner.layout),
    linears: pruner.layout,
    target,
    bounds,
    pattern,
    statistics: blockStatistics(pruner.statistics),
  };
};

/**
 * The context's sizes, target and bounds without any statistics: what a method's levels
 * (MethodPlugin.levels) are computed from before the run's model is built.
 */
export const sizeContext = (layout: Layout, blocks: number, target: number, pattern: Pattern, bounds: Bounds = defaultBounds): MethodContext => ({
  blocks,
  blockParams: blockParams(layout),
  linears: layout,
  target,
  bounds,
  pattern,
  statistics: {
    outlierShares: () => unmeasured(),
    fisherTraces: () => unmeasured(),
    elementScores: () => unmeasured(),
    nonOutlierRatio: () => unmeasured(),
  },
});

const unmeasured = (): never => {
  throw new Error("a method's levels are computed from the run's sizes alone, before any statistics are measured");
};

/** What a fitness measures: the pruned model's perplexity, or its KL divergence from the dense model per token. */
export type FitnessMeasure = "ppl" | "kl";
export const FITNESS_MEASURES = ["ppl", "kl"] as const satisfies readonly FitnessMeasure[];

/**
 * Perplexity of the model pruned at an allocation, or with a dense reference its
 * KL(dense || pruned) per token. Failures of one candidate (a singular Hessian, a
 * non-finite loss) become a failed Fitness, so a search records them and goes on.
 */
export const allocationFitness =
  (pruner: Pruner, windows: readonly Window[], pattern: Pattern, reference?: DenseReference, measure?: () => Promise<FitnessMeasurePlugin>) =>
  async (sparsities: BlockAllocation): Promise<Fitness> => {
    try {
      if (measure) {
        const scorer = await measure();
        await pruner.apply(toAllocation(sparsities, pruner.layout, pattern));
        const losses = await pruner.windowLosses(windows);
        return { ...fitnessOk(scorer.score(losses)), tokens: losses.reduce((n, w) => n + w.tokens, 0) };
      }
      if (reference) {
        // Before apply: adding a window's reference installs the dense model.
        await pruner.addDenseReference(windows, reference);
        await pruner.apply(toAllocation(sparsities, pruner.layout, pattern));
        const result = await pruner.kl(windows, reference);
        return { ...fitnessOk(result.kl), tokens: result.tokens };
      }
      await pruner.apply(toAllocation(sparsities, pruner.layout, pattern));
      const result = await pruner.perplexity(windows);
      // Tokens scored: what the evaluation cost, recorded in the search's history.
      return { ...fitnessOk(result.ppl), tokens: result.tokens };
    } catch (error) {
      return fitnessFailed((error as Error)?.message ?? String(error));
    }
  };
