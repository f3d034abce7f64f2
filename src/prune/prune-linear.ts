import type { HostLinear } from "../model/spec.ts";
import type { LinearInputStats } from "./collect.ts";
import { applyMask, nmMask, unstructuredMask, type Shape2 } from "./masks.ts";
import { comparisonGroup, magnitudeScores, wandaScores } from "./scores.ts";
import { sparseGptFactor, sparseGptPrune, type SparseGptFactor } from "./sparsegpt.ts";
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
): HostLinear => {
  const shape = linear.weight.shape as unknown as Shape2;
  const weight = linear.weight.data;
  if (metric === "sparsegpt") return sparseGptAtTargets(linear, stats, source, timings)(target);
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

/**
 * One linear pruned by SparseGPT at one target after another (EvoPress's levels): the
 * Hessian's factor is made for the first and kept for the rest, so each costs only its
 * solve. The linear is not changed.
 */
export const sparseGptAtTargets = (linear: HostLinear, stats: LinearInputStats | undefined, source: string, timings?: StageTimings): ((target: LinearTarget) => HostLinear) => {
  const shape = linear.weight.shape as unknown as Shape2;
  let factor: SparseGptFactor | undefined;
  return (target) => {
    if (!stats?.hessian) throw new Error(`${source}: SparseGPT needs the input Hessian`);
    const hessian = stats.hessian;
    // The copy handed over is consumed: the factorisation makes none of its own.
    const made = (factor ??= timed(timings, "masking", () => sparseGptFactor(hessian.hessian(), shape[0], { source, consume: { hessianAgain: () => hessian.hessian() } })));
    const r = timed(timings, "masking", () => sparseGptPrune(linear.weight.data, shape, made, target, { threshold: "exact", source }));
    return { ...linear, weight: { shape: linear.weight.shape, data: r.weight } };
  };
};
