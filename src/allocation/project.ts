/**
 * Projection onto the valid allocations: weighted mean equal to the target, every entry
 * inside [lo, hi]. Every allocation method ends here, so the global sparsity is exact
 * whatever heuristic produced the vector.
 *
 * The distance is the parameter-weighted Euclidean norm, sum_i w_i (y_i - x_i)^2. Its
 * minimiser is a common shift followed by a clamp, y_i = clamp(x_i + tau, lo, hi), which
 * (a) moves every parameter's sparsity by the same amount, so no block is favoured
 * because it is small or large, (b) keeps the order of the entries whatever the weights,
 * and (c) is exactly OWL's and ATP's own "shift so the mean is S" when nothing clamps.
 * The unweighted norm would instead shift each entry by tau * w_i, pushing big layers
 * around more than small ones for no reason the papers give.
 */

export interface Bounds {
  readonly lo: number;
  readonly hi: number;
}

/** The configured bounds of docs/methods.md: a block may stay dense but never be emptied. */
export const defaultBounds: Bounds = { lo: 0, hi: 0.99 };

/** Largest |weighted mean - target| the projection leaves behind. */
const meanTolerance = 1e-12;

export const weightedMean = (values: readonly number[], weights: readonly number[]): number => {
  let sum = 0;
  let total = 0;
  for (let i = 0; i < values.length; i++) {
    sum += weights[i] * values[i];
    total += weights[i];
  }
  return sum / total;
};

const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));

const checkArguments = (
  x: readonly number[],
  weights: readonly number[],
  target: number,
  { lo, hi }: Bounds,
): void => {
  if (!Number.isFinite(lo) || !Number.isFinite(hi) || lo > hi) {
    throw new RangeError(`bounds [${lo}, ${hi}] are not a finite interval`);
  }
  if (!Number.isFinite(target) || target < lo || target > hi) {
    throw new RangeError(`target ${target} is outside the bounds [${lo}, ${hi}]: no allocation can reach it`);
  }
  if (x.length === 0) throw new RangeError("cannot project an empty vector");
  if (weights.length !== x.length) {
    throw new RangeError(`${x.length} values but ${weights.length} weights`);
  }
  let total = 0;
  for (const w of weights) {
    if (!Number.isFinite(w) || w < 0) throw new RangeError(`weight ${w} is not a finite non-negative number`);
    total += w;
  }
  if (!(total > 0) || !Number.isFinite(total)) {
    throw new RangeError(`the weights sum to ${total}; they must sum to a positive finite number`);
  }
};

/**
 * Non-finite entries become finite ones with the same rank: NaN carries no preference,
 * so it starts at the target; +Inf asks for as much as possible, so it sits one full
 * bound-width above every finite entry and therefore reaches hi whenever any finite entry
 * is off lo (symmetrically for -Inf). It only leaves its bound when the target forces it.
 */
const finiteSurrogates = (x: readonly number[], target: number, { lo, hi }: Bounds): number[] => {
  const withNaN = x.map((v) => (Number.isNaN(v) ? target : v));
  const finite = withNaN.filter(Number.isFinite);
  const width = hi - lo;
  const top = finite.length > 0 ? Math.max(...finite) : target;
  const bottom = finite.length > 0 ? Math.min(...finite) : target;
  // Guard against overflow when the finite entries are already near Number.MAX_VALUE.
  const above = Number.isFinite(top + width) ? top + width : Number.MAX_VALUE;
  const below = Number.isFinite(bottom - width) ? bottom - width : -Number.MAX_VALUE;
  return withNaN.map((v) => (v === Infinity ? above : v === -Infinity ? below : v));
};

/**
 * The shift tau with sum_i w_i clamp(x_i + tau) = target * sum_i w_i. That sum is a
 * non-decreasing piecewise-linear function of tau whose kinks are lo - x_i and hi - x_i:
 * binary-search the kinks for the segment holding the target, then interpolate, which is
 * exact on a linear piece.
 */
const solveShift = (x: readonly number[], weights: readonly number[], target: number, { lo, hi }: Bounds): number => {
  let total = 0;
  for (const w of weights) total += w;
  const goal = target * total;
  const reached = (tau: number): number => {
    let sum = 0;
    for (let i = 0; i < x.length; i++) sum += weights[i] * clamp(x[i] + tau, lo, hi);
    return sum;
  };
  const kinks: number[] = [];
  for (let i = 0; i < x.length; i++) {
    if (weights[i] > 0) kinks.push(lo - x[i], hi - x[i]);
  }
  kinks.sort((a, b) => a - b);
  // At the first kink every weighted entry is at lo, at the last one at hi, and
  // lo <= target <= hi, so the goal lies between them.
  let left = 0;
  let right = kinks.length - 1;
  if (reached(kinks[left]) >= goal) return kinks[left];
  if (reached(kinks[right]) <= goal) return kinks[right];
  while (right - left > 1) {
    const middle = (left + right) >> 1;
    if (reached(kinks[middle]) <= goal) left = middle;
    else right = middle;
  }
  const a = kinks[left];
  const b = kinks[right];
  const fa = reached(a);
  const fb = reached(b);
  const share = fb > fa ? (goal - fa) / (fb - fa) : 0;
  // Written as a convex combination so that kinks near ±MAX_VALUE cannot overflow.
  return a * (1 - share) + b * share;
};

/**
 * The entries at y = clamp(x + tau), computed so that rounding cannot creep in where the
 * answer is exact: free entries are placed relative to their own weighted mean
 * (m + (x_i - mean_free)), so equal inputs come out exactly equal, a vector with nothing
 * clamped keeps exactly the target mean up to one rounding, and entries of huge
 * magnitude do not lose the shift to cancellation.
 */
const applyShift = (
  x: readonly number[],
  weights: readonly number[],
  target: number,
  { lo, hi }: Bounds,
  tau: number,
): number[] => {
  const free: number[] = [];
  let freeWeight = 0;
  let clampedExcess = 0;
  for (let i = 0; i < x.length; i++) {
    const shifted = x[i] + tau;
    if (shifted <= lo) clampedExcess += weights[i] * (target - lo);
    else if (shifted >= hi) clampedExcess += weights[i] * (target - hi);
    else {
      free.push(i);
      freeWeight += weights[i];
    }
  }
  if (!(freeWeight > 0)) return x.map((v) => clamp(v + tau, lo, hi));
  const reference = x[free[0]];
  let offset = 0;
  for (const i of free) offset += (weights[i] * (x[i] - reference)) / freeWeight;
  const freeMean = reference + offset;
  const freeTarget = target + clampedExcess / freeWeight;
  return x.map((v) => {
    const shifted = v + tau;
    if (shifted <= lo) return lo;
    if (shifted >= hi) return hi;
    return clamp(freeTarget + (v - freeMean), lo, hi);
  });
};

const isValid = (y: readonly number[], weights: readonly number[], target: number, { lo, hi }: Bounds): boolean =>
  y.every((v) => v >= lo && v <= hi) &&
  Math.abs(weightedMean(y, weights) - target) <= meanTolerance * Math.max(1, Math.abs(lo), Math.abs(hi));

/**
 * Projects x onto { y : sum(w y) / sum(w) = target, lo <= y <= hi } in the w-weighted
 * Euclidean norm. A vector that is already valid comes back unchanged (as a copy).
 * Throws RangeError for a target outside the bounds or malformed weights.
 */
export const projectToTarget = (
  x: readonly number[],
  weights: readonly number[],
  target: number,
  bounds: Bounds = defaultBounds,
): number[] => {
  checkArguments(x, weights, target, bounds);
  let y = finiteSurrogates(x, target, bounds);
  if (isValid(y, weights, target, bounds)) return y;
  // Should rounding still leave the mean off (entries far outside the bounds), projecting
  // again starts from values inside the bounds, where the arithmetic is well scaled.
  for (let pass = 0; pass < 3; pass++) {
    y = applyShift(y, weights, target, bounds, solveShift(y, weights, target, bounds));
    if (isValid(y, weights, target, bounds)) break;
  }
  return y;
};
