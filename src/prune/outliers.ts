/**
 * Outlier statistics of element scores, the inputs of OWL and MRP (METHODS.md).
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
 * 1 - outlier share among the weights still kept (keep[i] = 1). A block with no weight
 * left counts as fully redundant (1): there is nothing there to protect.
 */
export const nonOutlierRatio = (scores: readonly ArrayLike<number>[], keep: readonly ArrayLike<number>[], m = OWL_M): number => {
  let sum = 0;
  let count = 0;
  scores.forEach((s, k) => {
    const mask = keep[k]!;
    for (let i = 0; i < s.length; i++) {
      if (mask[i]) {
        sum += s[i]!;
        count++;
      }
    }
  });
  if (count === 0) return 1;
  const threshold = (m * sum) / count;
  let above = 0;
  scores.forEach((s, k) => {
    const mask = keep[k]!;
    for (let i = 0; i < s.length; i++) if (mask[i] && s[i]! > threshold) above++;
  });
  return 1 - above / count;
};
