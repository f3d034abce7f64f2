import type { HostLinear } from "../model/spec.ts";
import type { LinearInputStats } from "./collect.ts";
import { applyMask, nmMask, unstructuredMask, type Shape2 } from "./masks.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "./scores.ts";
import { sparseGptFactor, sparseGptPrune, type SparseGptFactor } from "./sparsegpt.ts";
import type { HessianAccumulator } from "./stats.ts";
import { timed, type StageTimings } from "./timings.ts";

export type PruneMetric = "magnitude" | "wanda" | "sparsegpt";
export const PRUNE_METRICS = ["magnitude", "wanda", "sparsegpt"] as const satisfies readonly PruneMetric[];

/** What one linear must become: a fraction pruned, or an N:M pattern. */
export type LinearTarget = { readonly sparsity: number } | { readonly n: number; readonly m: number };

/**
 * Prunes one linear with the chosen metric. Magnitude and Wanda only zero weights;
 * SparseGPT also updates the survivors to compensate. SparseGPT's mask is chosen with the
 * exact floor rule per column block, so every linear has the sparsity its allocation asks.
 */
export const pruneLinear = (
  linear: HostLinear,
  metric: PruneMetric,
  target: LinearTarget,
  stats: LinearInputStats | undefined,
  source: string,
  timings?: StageTimings,
  /** The linear's arrays are the caller's own copy, which magnitude and Wanda may zero in place. */
  inPlace = false,
  /**
   * SparseGPT's factors by the Hessian they came from: linears reading one input (q, k and
   * v; gate and up) share its Hessian, so the first factors it and the others reuse it.
   */
  factors?: Map<HessianAccumulator, SparseGptFactor>,
): HostLinear => {
  const shape = linear.weight.shape as unknown as Shape2;
  const weight = linear.weight.data;
  if (metric === "sparsegpt") return sparseGptLinear(linear, stats, target, source, timings, factors);
  if (metric === "wanda" && !stats) throw new Error(`${source}: Wanda needs the input norms`);
  const scores = timed(timings, "scoring", () => (metric === "wanda" ? wandaScores(weight, shape, stats!.norms.norms()) : magnitudeScores(weight)));
  return timed(timings, "masking", () => {
    const keep = "sparsity" in target ? unstructuredMask(scores, shape, comparisonGroup(metric), target.sparsity) : nmMask(scores, shape, target.n, target.m);
    if (inPlace) {
      // The caller's own copy: zeroed where it lies, no second array of the linear's size.
      for (let e = 0; e < weight.length; e++) if (!keep[e]) weight[e] = 0;
      return linear;
    }
    return { ...linear, weight: { shape: linear.weight.shape, data: applyMask(weight, keep) } };
  });
};

/** One linear pruned by SparseGPT: its Hessian factored (sparseGptFactor), then solved for the target. The linear is not changed. */
const sparseGptLinear = (
  linear: HostLinear,
  stats: LinearInputStats | undefined,
  target: LinearTarget,
  source: string,
  timings?: StageTimings,
  factors?: Map<HessianAccumulator, SparseGptFactor>,
): HostLinear => {
  const shape = linear.weight.shape as unknown as Shape2;
  if (!stats?.hessian) throw new Error(`${source}: SparseGPT needs the input Hessian`);
  const hessian = stats.hessian;
  // The copy handed over is consumed: the factorisation makes none of its own.
  const factor =
    factors?.get(hessian) ?? timed(timings, "masking", () => sparseGptFactor(hessian.hessian(), shape[0], { source, consume: { hessianAgain: () => hessian.hessian() } }));
  factors?.set(hessian, factor);
  const r = timed(timings, "masking", () => sparseGptPrune(linear.weight.data, shape, factor, target, { threshold: "exact", source }));
  return { ...linear, weight: { shape: linear.weight.shape, data: r.weight } };
};

/**
 * Prunes some linears of one block in the order given, each by `prune(name, factors)`,
 * with one map of SparseGPT factors for the block: the first linear reading an input
 * factors its Hessian, the others reuse it, and the factor is dropped once the last linear
 * reading that input is pruned, so a block holds no more factors than it needs at once.
 */
export const pruneLinearsSharingFactors = (
  names: readonly string[],
  hessianOf: (name: string) => HessianAccumulator | undefined,
  prune: (name: string, factors: Map<HessianAccumulator, SparseGptFactor>) => void,
): void => {
  // Read before any prune: a caller may drop a linear's statistics as soon as it is pruned.
  const hessians = names.map(hessianOf);
  const factors = new Map<HessianAccumulator, SparseGptFactor>();
  names.forEach((name, k) => {
    prune(name, factors);
    const hessian = hessians[k];
    if (hessian && !hessians.slice(k + 1).includes(hessian)) factors.delete(hessian);
  });
};
