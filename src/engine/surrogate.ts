/**
 * A linear surrogate of fitness, fitted online: ridge regression of a candidate's score
 * (centred within its stage, since every stage draws its own minibatch) on its features
 * relative to its parent's. Staged selection uses it to pre-screen children, so only the
 * ones it predicts best spend tokens. Model-agnostic: features are whatever numbers the
 * genome gives (EvoPress: its per-linear levels).
 */

export interface Observation {
  /** Features of the candidate minus its parent's. */
  readonly x: readonly number[];
  /** Its score minus the mean score of its stage. */
  readonly y: number;
}

/**
 * Weights w minimising |X w - y|^2 + lambda |w|^2 (no intercept: y is centred), by
 * Gaussian elimination with partial pivoting on the d x d normal equations. Undefined
 * without observations.
 */
export const fitRidge = (observations: readonly Observation[], lambda = 1): number[] | undefined => {
  if (observations.length === 0) return undefined;
  const d = observations[0]!.x.length;
  const a = Array.from({ length: d }, (_, i) => Array.from({ length: d + 1 }, (_, j) => (i === j ? lambda : 0)));
  for (const { x, y } of observations) {
    if (x.length !== d) throw new RangeError(`an observation has ${x.length} features, not ${d}`);
    for (let i = 0; i < d; i++) {
      const xi = x[i]!;
      if (xi === 0) continue;
      const row = a[i]!;
      for (let j = 0; j < d; j++) row[j]! += xi * x[j]!;
      row[d]! += xi * y;
    }
  }
  for (let col = 0; col < d; col++) {
    let pivot = col;
    for (let r = col + 1; r < d; r++) if (Math.abs(a[r]![col]!) > Math.abs(a[pivot]![col]!)) pivot = r;
    [a[col], a[pivot]] = [a[pivot]!, a[col]!];
    const p = a[col]![col]!;
    // lambda > 0 keeps the system positive definite, so p > 0.
    for (let r = 0; r < d; r++) {
      if (r === col) continue;
      const f = a[r]![col]! / p;
      if (f === 0) continue;
      for (let j = col; j <= d; j++) a[r]![j]! -= f * a[col]![j]!;
    }
  }
  return a.map((row, i) => row[d]! / row[i]!);
};

export const predict = (weights: readonly number[], x: readonly number[]): number => x.reduce((s, v, i) => s + v * weights[i]!, 0);
