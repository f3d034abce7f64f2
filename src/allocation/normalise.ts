/**
 * Turning per-block statistics into finite, comparable numbers: the min-max rescaling
 * that DSA and MSP apply before a statistic becomes a sparsity offset, the cleaning of
 * non-finite values that must never crash a search, and MSP's Fisher-seeded vectors.
 */

/**
 * NaN becomes `nanValue`; ±Inf is clamped to the largest / smallest finite value present
 * (after the NaN replacement), so an overflowing block ties with the most extreme finite
 * one instead of flattening every other block to 0 in a later min-max. With no finite
 * value at all, +Inf -> 1 and -Inf -> -1 keep their order.
 */
export const clampNonFinite = (values: readonly number[], nanValue: number): number[] => {
  const clean = values.map((v) => (Number.isNaN(v) ? nanValue : v));
  let low = Infinity;
  let high = -Infinity;
  for (const v of clean) {
    if (Number.isFinite(v)) {
      if (v < low) low = v;
      if (v > high) high = v;
    }
  }
  if (low > high) return clean.map((v) => (v === Infinity ? 1 : v === -Infinity ? -1 : v));
  return clean.map((v) => (v === Infinity ? high : v === -Infinity ? low : v));
};

/**
 * Rescales finite values to [0, 1]; all-equal values carry no ranking, so they all map to
 * 0. Halving before subtracting keeps `high - low` finite even for ±Number.MAX_VALUE.
 */
export const minmax = (values: readonly number[]): number[] => {
  let low = Infinity;
  let high = -Infinity;
  for (const v of values) {
    if (v < low) low = v;
    if (v > high) high = v;
  }
  if (!(high > low)) return values.map(() => 0);
  const span = high / 2 - low / 2;
  return values.map((v) => Math.min(1, Math.max(0, (v / 2 - low / 2) / span)));
};

export type TraceNormalisation = "log" | "minmax";

/**
 * MSP's normalised sensitivity t̂ in [0, 1]. "log" compresses the orders of magnitude that
 * Fisher traces span across depth before rescaling. A trace that is zero, negative or NaN
 * carries no evidence of sensitivity, so it ranks with the least sensitive block; +Inf
 * ranks with the most sensitive one (the project's choice; traces measured on a healthy
 * model are finite and positive).
 */
export const normaliseTraces = (traces: readonly number[], normalisation: TraceNormalisation): number[] => {
  const positive = traces.filter((t) => t > 0 && Number.isFinite(t));
  const smallest = positive.length > 0 ? Math.min(...positive) : 1;
  const largest = positive.length > 0 ? Math.max(...positive) : 1;
  const cleaned = traces.map((t) => (t === Infinity ? largest : t > 0 ? t : smallest));
  return minmax(normalisation === "log" ? cleaned.map(Math.log) : cleaned);
};

/**
 * MSP's Fisher-seeded vector s_l = S + λ(mean t̂ - t̂_l): more sensitive blocks are pruned
 * less. The plain mean is the paper's formula; the caller projects the result, which
 * makes the parameter-weighted mean exact.
 */
export const fisherSeed = (normalised: readonly number[], target: number, lambda: number): number[] => {
  let mean = 0;
  for (const t of normalised) mean += t / normalised.length;
  return normalised.map((t) => target + lambda * (mean - t));
};
