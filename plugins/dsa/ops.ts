/**
 * The operators DSA expressions are built from, as tables name -> implementation. A
 * search-space file enables any subset of these names; the schema checks names against
 * these tables, so a new op set is a JSON file and a new op is one table entry.
 *
 * Element vectors hold hundreds of thousands to millions of scores per block, so pre
 * ops work in place on one Float64 buffer, and every reduction of a pre chain comes out
 * of the same two fused passes over it (plus in-place selection for quantiles).
 * Non-finite values are allowed to flow through: the caller maps NaN to 0 and clamps
 * ±Inf once, on the per-block scalars.
 */

/** An element-wise op, applied in place to buffer[0..n). */
export type PreOp = (buffer: Float64Array, n: number) => void;

/** Mean and population standard deviation (two passes, for accuracy). */
const meanStd = (buffer: Float64Array, n: number): { readonly mean: number; readonly std: number } => {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += buffer[i];
  const mean = sum / n;
  let squares = 0;
  for (let i = 0; i < n; i++) {
    const d = buffer[i] - mean;
    squares += d * d;
  }
  return { mean, std: Math.sqrt(squares / n) };
};

export const preOps: Readonly<Record<string, PreOp>> = Object.freeze({
  identity: () => {},
  abs: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = Math.abs(b[i]);
  },
  // docs/methods.md: non-positive entries become 1 first, so log never sees 0 or a negative.
  log: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = Math.log((b[i] <= 0 ? 1 : b[i]) + 1e-6);
  },
  abslog: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = Math.log(b[i] === 0 ? 1 : Math.abs(b[i]));
  },
  square: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = b[i] * b[i];
  },
  exp: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = Math.exp(b[i]);
  },
  // A constant vector has no deviations to standardise: every entry becomes 0.
  zscore: (b, n) => {
    const { mean, std } = meanStd(b, n);
    if (std === 0) b.fill(0, 0, n);
    else for (let i = 0; i < n; i++) b[i] = (b[i] - mean) / std;
  },
  sigmoid: (b, n) => {
    for (let i = 0; i < n; i++) {
      const x = b[i];
      // Written per sign so exp never overflows.
      b[i] = x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
    }
  },
  tanh: (b, n) => {
    for (let i = 0; i < n; i++) b[i] = Math.tanh(b[i]);
  },
  // Halved differences keep max - min finite near ±Number.MAX_VALUE; constant -> 0.
  minmax: (b, n) => {
    let low = Infinity;
    let high = -Infinity;
    for (let i = 0; i < n; i++) {
      if (b[i] < low) low = b[i];
      if (b[i] > high) high = b[i];
    }
    if (high === low) {
      b.fill(0, 0, n);
      return;
    }
    const span = high / 2 - low / 2;
    for (let i = 0; i < n; i++) b[i] = (b[i] / 2 - low / 2) / span;
  },
});

/** What the fused passes over a vector measure; reductions read from it. */
export interface Moments {
  readonly n: number;
  readonly mean: number;
  /** Population variance. */
  readonly variance: number;
  readonly meanAbs: number;
  readonly sumSquares: number;
  readonly meanLogAbs: number;
  readonly min: number;
  readonly max: number;
  /** Third and fourth central moments, divided by n. */
  readonly m3: number;
  readonly m4: number;
  /** Entropy of softmax(x), in nats. */
  readonly entropy: number;
}

export type Reduction =
  | {
      readonly kind: "moments";
      readonly value: (m: Moments) => number;
      /** Extra per-element work the value needs: log|x| sums, or softmax sums. */
      readonly uses?: "logs" | "softmax";
    }
  | { readonly kind: "quantile"; readonly p: number };

const quantile = (p: number): Reduction => ({ kind: "quantile", p });

export const reductions: Readonly<Record<string, Reduction>> = Object.freeze({
  mean: { kind: "moments", value: (m) => m.mean },
  variance: { kind: "moments", value: (m) => m.variance },
  std: { kind: "moments", value: (m) => Math.sqrt(m.variance) },
  l1: { kind: "moments", value: (m) => m.meanAbs },
  // Frobenius norm, as the DSA paper's l2 of a whole block.
  l2: { kind: "moments", value: (m) => Math.sqrt(m.sumSquares) },
  // Of |x|, so negative scores (after a log pre op) have one; a zero entry gives 0.
  geomean: { kind: "moments", value: (m) => Math.exp(m.meanLogAbs), uses: "logs" },
  entropy: { kind: "moments", value: (m) => m.entropy, uses: "softmax" },
  max: { kind: "moments", value: (m) => m.max },
  min: { kind: "moments", value: (m) => m.min },
  // Excess (Fisher) kurtosis; a constant vector has neither tails nor asymmetry: 0.
  kurtosis: { kind: "moments", value: (m) => (m.variance > 0 ? m.m4 / (m.variance * m.variance) - 3 : 0) },
  skewness: { kind: "moments", value: (m) => (m.variance > 0 ? m.m3 / Math.pow(m.variance, 1.5) : 0) },
  median: quantile(0.5),
  q10: quantile(0.1),
  q25: quantile(0.25),
  q75: quantile(0.75),
  q90: quantile(0.9),
});

/** Scalar transforms; out-of-domain inputs give NaN or ±Inf, cleaned by the caller. */
export const transformOps: Readonly<Record<string, (x: number) => number>> = Object.freeze({
  identity: (x) => x,
  sin: Math.sin,
  cos: Math.cos,
  tan: Math.tan,
  asin: Math.asin,
  acos: Math.acos,
  atan: Math.atan,
  exp: Math.exp,
  log: Math.log,
  abs: Math.abs,
  sigmoid: (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x))),
  tanh: Math.tanh,
  // max(x, 0) + log1p(exp(-|x|)) never overflows.
  softplus: (x) => Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x))),
  square: (x) => x * x,
  sqrt: Math.sqrt,
  reciprocal: (x) => 1 / x,
});

/**
 * The two fused passes. Logarithms and exponentials cost more than everything else in
 * them, so they run only when a geometric mean or an entropy is asked for.
 */
const computeMoments = (b: Float64Array, n: number, withLogs: boolean, withSoftmax: boolean): Moments => {
  let sum = 0;
  let sumAbs = 0;
  let sumSquares = 0;
  let sumLogAbs = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = b[i];
    sum += x;
    const a = Math.abs(x);
    sumAbs += a;
    sumSquares += x * x;
    if (withLogs) sumLogAbs += Math.log(a);
    if (x < min) min = x;
    if (x > max) max = x;
    if (x !== x) min = max = NaN;
  }
  const mean = sum / n;
  let m2 = 0;
  let m3 = 0;
  let m4 = 0;
  // Shifted by the maximum, softmax's normaliser Z = sum exp(x - max) lies in [1, n].
  let z = 0;
  let weighted = 0;
  for (let i = 0; i < n; i++) {
    const d = b[i] - mean;
    const d2 = d * d;
    m2 += d2;
    m3 += d2 * d;
    m4 += d2 * d2;
    if (!withSoftmax) continue;
    const shifted = b[i] - max;
    const e = Math.exp(shifted);
    z += e;
    // exp(-Inf) * -Inf would be NaN; such an entry has probability 0 and adds nothing.
    if (e > 0) weighted += e * shifted;
  }
  return {
    n,
    mean,
    variance: m2 / n,
    meanAbs: sumAbs / n,
    sumSquares,
    meanLogAbs: sumLogAbs / n,
    min: n > 0 ? min : NaN,
    max: n > 0 ? max : NaN,
    m3: m3 / n,
    m4: m4 / n,
    entropy: Math.log(z) - weighted / z,
  };
};

const swap = (b: Float64Array, i: number, j: number): void => {
  const t = b[i];
  b[i] = b[j];
  b[j] = t;
};

/**
 * Puts the k-th smallest of b[from..to) at index k, smaller ones before it and larger
 * ones after (Hoare quickselect, median-of-three pivot). Inputs crafted to defeat the
 * pivot rule fall back to a native sort after 2 log2(n) + 8 rounds, so the worst case
 * stays O(n log n). Requires no NaN in the range.
 */
export const select = (b: Float64Array, k: number, from: number, to: number): void => {
  let left = from;
  let right = to - 1;
  let budget = 2 * Math.ceil(Math.log2(to - from + 1)) + 8;
  while (right > left) {
    if (budget-- === 0) {
      b.subarray(left, right + 1).sort();
      return;
    }
    const middle = left + ((right - left) >> 1);
    if (b[middle] < b[left]) swap(b, middle, left);
    if (b[right] < b[left]) swap(b, right, left);
    if (b[right] < b[middle]) swap(b, right, middle);
    const pivot = b[middle];
    let i = left;
    let j = right;
    while (i <= j) {
      while (b[i] < pivot) i++;
      while (b[j] > pivot) j--;
      if (i <= j) {
        swap(b, i, j);
        i++;
        j--;
      }
    }
    if (k <= j) right = j;
    else if (k >= i) left = i;
    else return;
  }
};

/**
 * Every named reduction of b[0..n), in the order of `names`. Destroys the buffer's order
 * (quantiles are selected in place), so this is the buffer's last use.
 */
export const reduceAll = (b: Float64Array, n: number, names: readonly string[]): number[] => {
  const chosen = names.map((name) => reductions[name]);
  const moments = chosen.some((r) => r.kind === "moments")
    ? computeMoments(
        b,
        n,
        chosen.some((r) => r.kind === "moments" && r.uses === "logs"),
        chosen.some((r) => r.kind === "moments" && r.uses === "softmax"),
      )
    : undefined;
  const values = chosen.map((r) => (r.kind === "moments" ? r.value(moments!) : NaN));
  let hasNaN = false;
  for (let i = 0; i < n && !hasNaN; i++) hasNaN = b[i] !== b[i];
  if (n === 0 || hasNaN) return values;
  // Ascending order lets each selection work on the part right of the previous one:
  // after selecting index k, everything from k on is >= b[k].
  const wanted = chosen
    .map((r, index) => ({ r, index }))
    .filter((e): e is { r: { kind: "quantile"; p: number }; index: number } => e.r.kind === "quantile")
    .sort((a, c) => a.r.p - c.r.p);
  let from = 0;
  for (const { r, index } of wanted) {
    // Linear interpolation between order statistics, as numpy's default quantile.
    const position = r.p * (n - 1);
    const k = Math.floor(position);
    select(b, k, from, n);
    from = k;
    const lower = b[k];
    let upper = lower;
    if (position > k) {
      upper = Infinity;
      for (let i = k + 1; i < n; i++) if (b[i] < upper) upper = b[i];
    }
    values[index] = position > k ? lower + (position - k) * (upper - lower) : lower;
  }
  return values;
};
