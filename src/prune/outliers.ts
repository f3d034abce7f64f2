/**
 * Outlier statistics of element scores, the inputs of OWL and MRP (docs/methods.md).
 * OWL's outlier share of a block: D = fraction of all its linears' Wanda scores greater
 * than M times their mean (M = 5 in the paper). MRP's non-outlier ratio of a block:
 * NOR = 1 - (fraction of its surviving weights whose score exceeds M times the mean of
 * the surviving scores). Both are scale-free: multiplying every score by c > 0 changes
 * neither, so they compare blocks of different magnitudes fairly.
 */

export const OWL_M = 5;

/** Fraction of the scores (all linears of a block together) above m times their mean. */
export const outlierShare = (scores: readonly ArrayLike<number>[], m = OWL_M): number => {
  let sum = 0;
  let count = 0;
  for (const s of scores) {
    for (let i = 0; i < s.length; i++) sum += s[i]!;
    count += s.length;
  }
  if (count === 0) return 0;
  const threshold = (m * sum) / count;
  let above = 0;
  for (const s of scores) for (let i = 0; i < s.length; i++) if (s[i]! > threshold) above++;
  return above / count;
};

/**
 * How pruned weights enter MRP's non-outlier ratio:
 * - "excluded" (an option; see docs/methods.md, "MRP"): only the kept weights count, against the mean of the kept
 *   scores. Pruning removes low scores and raises that mean, so a block's ratio rises as
 *   it is pruned, and MRP keeps choosing the block it just pruned.
 * - "zero" (the default): every weight counts, a pruned one with score 0. Pruning lowers the mean, more
 *   survivors stand out as outliers and the ratio falls: the feedback that spreads MRP's
 *   steps over the blocks. The rule as the paper means it (docs/methods.md, "MRP").
 */
export type PrunedWeights = "excluded" | "zero";

/**
 * 1 - outlier share among the block's weights, where keep[i] = 0 marks a pruned weight,
 * counted as `pruned` says. A block with no weight left counts as fully redundant (1):
 * there is nothing there to protect.
 */
export const nonOutlierRatio = (
  scores: readonly ArrayLike<number>[],
  keep: readonly ArrayLike<number>[],
  m = OWL_M,
  pruned: PrunedWeights = "zero",
): number => {
  let sum = 0;
  let kept = 0;
  let all = 0;
  scores.forEach((s, k) => {
    const mask = keep[k]!;
    all += s.length;
    for (let i = 0; i < s.length; i++) {
      if (mask[i]) {
        sum += s[i]!;
        kept++;
      }
    }
  });
  if (kept === 0) return 1;
  const count = pruned === "zero" ? all : kept;
  const threshold = (m * sum) / count;
  let above = 0;
  scores.forEach((s, k) => {
    const mask = keep[k]!;
    for (let i = 0; i < s.length; i++) if (mask[i] && s[i]! > threshold) above++;
  });
  return 1 - above / count;
};
