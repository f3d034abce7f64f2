/**
 * SparseGPT (Frantar & Alistarh, 2023): fasterprune of the reference sparsegpt.py, step for
 * step, in float64 on host arrays.
 *
 * Layout: sparsegpt.py holds W as [out, in] and walks its COLUMNS, which are input
 * features. Our weight is [in, out] (y = x W), so each of its columns is one of our ROWS:
 * row i (contiguous, `out` values) holds input feature i's weight into every output
 * neuron. "Column block i1..i2" of the reference is our row block i1..i2, and the
 * reference's per-row (per output neuron) quantities are per column o here.
 */
import { DataError } from "../errors.ts";
import { nativeBlas, type NativeBlas } from "../backend/native-blas.ts";
import { checkNM, lowestPositions, type Shape2 } from "./masks.ts";

/** Unstructured at a ratio, or N:M (the reference's prunen/prunem, which then ignores the ratio). */
export type SparseGptTarget = { readonly sparsity: number } | { readonly n: number; readonly m: number };

export interface SparseGptOptions {
  /** Input features per block (sparsegpt.py's blocksize); the default is 128. */
  readonly blocksize?: number;
  /** Damping as a fraction of mean(diag H) (sparsegpt.py's percdamp); the default is 0.01. */
  readonly percdamp?: number;
  /**
   * How many entries of a block an unstructured target prunes.
   * - "reference" (default): sparsegpt.py's rule, thresh = sorted(tmp)[floor(numel * s)],
   *   prune tmp <= thresh. That prunes floor(numel * s) + 1 entries of each block (more on
   *   ties), so even s = 0 prunes one weight per block, as the reference does.
   * - "exact": the floor(numel * s) lowest entries of each block; equal scores go to the
   *   lower flat index of our [in, out] layout. Use it where pruned counts must match an
   *   allocation to the weight.
   */
  readonly threshold?: "reference" | "exact";
  /** Names the layer in error messages. */
  readonly source?: string;
  /**
   * Float64 linear algebra: "native" (LAPACK's factorisations and BLAS's dgemm for the
   * lazy updates; the default when the native kernel is built) or "js" (this file's own
   * loops, the reference the native route is tested against).
   */
  readonly linalg?: "native" | "js";
  /**
   * The Hessian given may be overwritten (it is the caller's own copy): no copy of an
   * [in, in] float64 matrix is made (nearly a gigabyte for an 11008-wide input).
   * `hessianAgain` gives a fresh copy should a factorisation need retrying with more damping.
   */
  readonly consume?: { readonly hessianAgain: () => Float64Array };
}

export interface SparseGptResult {
  /** Updated weights, [in, out], zero where pruned. */
  readonly weight: Float32Array;
  /** 1 = kept, 0 = pruned, [in, out]. */
  readonly keep: Uint8Array;
  /** sparsegpt.py's reported error: sum of (w - q)^2 / [Hinv]_ii^2 / 2 over pruned entries. */
  readonly loss: number;
  /** The damping added to the diagonal of H. */
  readonly damping: number;
}

let defaultLinalg: "native" | "js" = "native";

/**
 * The route every call without its own `linalg` takes ("native" falls back to "js" where
 * the kernel is not built). For benchmarks that time both routes on the same pipeline.
 */
export const setSparseGptLinalg = (route: "native" | "js"): void => {
  defaultLinalg = route;
};

/** Input features per block (sparsegpt.py's blocksize default). */
export const SPARSEGPT_BLOCK = 128;
const DEFAULT_BLOCKSIZE = SPARSEGPT_BLOCK;
const DEFAULT_PERCDAMP = 0.01;
/**
 * sparsegpt.py stops with an error when H + damp I is not positive definite. Mathematically
 * it always is (H is a Gram matrix and damp > 0), so a failure means rounding in a nearly
 * singular H; we then retry with 10x the damping (at least 10x the default 1% of the mean
 * diagonal), up to this many times, before giving up. The damping used is reported.
 */
const DAMPING_RETRIES = 3;

/** In-place lower Cholesky factor of a symmetric n x n matrix; false when not positive definite. */
const choleskyLower = (a: Float64Array, n: number): boolean => {
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let pivot = a[rj + j];
    for (let k = 0; k < j; k++) pivot -= a[rj + k] * a[rj + k];
    if (!(pivot > 0) || !Number.isFinite(pivot)) return false;
    const ljj = Math.sqrt(pivot);
    a[rj + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let t = a[ri + j];
      for (let k = 0; k < j; k++) t -= a[ri + k] * a[rj + k];
      a[ri + j] = t / ljj;
    }
  }
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) a[i * n + j] = 0;
  return true;
};

/** (L L^T)^-1 = L^-T L^-1 from a lower Cholesky factor: torch.cholesky_inverse. */
const choleskyInverse = (l: Float64Array, n: number): Float64Array => {
  const linv = new Float64Array(n * n);
  const acc = new Float64Array(n);
  // Row i of L^-1: (e_i - sum_{k<i} L_ik (row k of L^-1)) / L_ii, accumulated row-wise.
  for (let i = 0; i < n; i++) {
    acc.fill(0, 0, i);
    for (let k = 0; k < i; k++) {
      const lik = l[i * n + k];
      if (lik === 0) continue;
      const rk = k * n;
      for (let j = 0; j <= k; j++) acc[j] += lik * linv[rk + j];
    }
    const lii = l[i * n + i];
    for (let j = 0; j < i; j++) linv[i * n + j] = -acc[j] / lii;
    linv[i * n + i] = 1 / lii;
  }
  const inv = new Float64Array(n * n);
  // sum over k of (row k of L^-1)^T (row k of L^-1), lower triangle, then mirrored.
  for (let k = 0; k < n; k++) {
    const rk = k * n;
    for (let a = 0; a <= k; a++) {
      const v = linv[rk + a];
      if (v === 0) continue;
      const ra = a * n;
      for (let b = 0; b <= a; b++) inv[ra + b] += v * linv[rk + b];
    }
  }
  for (let a = 0; a < n; a++) for (let b = 0; b < a; b++) inv[b * n + a] = inv[a * n + b];
  return inv;
};

/**
 * The same factor through LAPACK, in two factorisations' work instead of three: with P the
 * order-reversing permutation and P A P = L L^T (one Cholesky of the reversed matrix),
 * A^-1 = (P L^-T P)(P L^-1 P), so U = P L^-1 P is the upper Cholesky factor of A^-1 (upper
 * because reversing both orders turns a lower triangle into an upper one). Reversing a
 * square matrix's flat array reverses both its rows and its columns. LAPACK is column-major:
 * our row-major symmetric matrix reads as itself, and LAPACK's upper triangle ("U") is our
 * lower one, so dpotrf("U") leaves L in our lower triangle and dtrtri("U") its inverse there;
 * reversed, our upper triangle holds U.
 */
const inverseUpperCholeskyLapack = (blas: NativeBlas, a: Float64Array, n: number): Float64Array | null => {
  a.reverse();
  if (blas.dpotrf("U", n, a) !== 0 || blas.dtrtri("U", n, a) !== 0) return null;
  a.reverse();
  for (let i = 0; i < n; i++) a.fill(0, i * n, i * n + i);
  for (const v of a) if (!Number.isFinite(v)) return null;
  return a;
};

/**
 * Upper Cholesky factor U of (H + damp I)^-1 (H^-1 = U^T U), by the reference's route:
 * Cholesky of H, inverse, Cholesky again. Null when a factorisation fails. With the native
 * kernel, LAPACK does it (the JavaScript route below is the reference it is tested against).
 */
const inverseUpperCholesky = (h: Float64Array, n: number, damp: number, blas: NativeBlas | undefined, inPlace = false): Float64Array | null => {
  const a = inPlace ? h : h.slice();
  for (let i = 0; i < n; i++) a[i * n + i] += damp;
  if (blas) return inverseUpperCholeskyLapack(blas, a, n);
  if (!choleskyLower(a, n)) return null;
  const inv = choleskyInverse(a, n);
  if (!choleskyLower(inv, n)) return null;
  const upper = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) upper[i * n + j] = inv[j * n + i];
  return upper;
};

const checkInputs = (
  weight: Float32Array,
  shape: Shape2,
  hessian: Float64Array,
  target: SparseGptTarget,
  blocksize: number,
  percdamp: number,
  factorGiven = false,
): void => {
  const [inFeatures, outFeatures] = shape;
  if (!Number.isInteger(inFeatures) || !Number.isInteger(outFeatures) || inFeatures < 1 || outFeatures < 1) {
    throw new RangeError(`sparseGptPrune: shape [${inFeatures}, ${outFeatures}] must be two positive integers`);
  }
  if (weight.length !== inFeatures * outFeatures) {
    throw new RangeError(`sparseGptPrune: ${weight.length} weights do not fill shape [${inFeatures}, ${outFeatures}]`);
  }
  if (!factorGiven && hessian.length !== inFeatures * inFeatures) {
    throw new RangeError(`sparseGptPrune: a Hessian of ${hessian.length} values for ${inFeatures} input features`);
  }
  if (!Number.isInteger(blocksize) || blocksize < 1) {
    throw new RangeError(`sparseGptPrune: blocksize ${blocksize} must be a positive integer`);
  }
  if (!(percdamp >= 0) || !Number.isFinite(percdamp)) {
    throw new RangeError(`sparseGptPrune: percdamp ${percdamp} must be a finite number >= 0`);
  }
  if ("sparsity" in target) {
    if (!(target.sparsity >= 0 && target.sparsity < 1)) {
      throw new RangeError(`sparseGptPrune: sparsity ${target.sparsity} is outside [0, 1)`);
    }
  } else {
    checkNM("sparseGptPrune", inFeatures, target.n, target.m);
    // The reference takes N:M groups relative to each block's start; a block that is not a
    // whole number of groups would cut groups in two (and makes sparsegpt.py's topk fail).
    if (blocksize % target.m !== 0) {
      throw new RangeError(`sparseGptPrune: blocksize ${blocksize} is not a multiple of M = ${target.m}`);
    }
  }
};

/** Marks (pruned[row * out + o] = 1) the entries an unstructured target prunes in rows i1..i2. */
const markBlock = (
  w: Float64Array,
  upper: Float64Array,
  shape: Shape2,
  i1: number,
  i2: number,
  sparsity: number,
  threshold: "reference" | "exact",
  pruned: Uint8Array,
): void => {
  const [inFeatures, outFeatures] = shape;
  const base = i1 * outFeatures;
  // tmp = W1^2 / diag(Hinv1)^2 over the whole block, in our [in, out] flat order.
  const tmp = new Float64Array((i2 - i1) * outFeatures);
  for (let i = i1; i < i2; i++) {
    const d = upper[i * inFeatures + i];
    for (let o = 0; o < outFeatures; o++) {
      const v = w[i * outFeatures + o];
      tmp[(i - i1) * outFeatures + o] = (v * v) / (d * d);
    }
  }
  const k = Math.floor(tmp.length * sparsity);
  if (threshold === "exact") {
    for (const p of lowestPositions(tmp, k)) pruned[base + p] = 1;
    return;
  }
  // min() only guards rounding of numel * s up to numel, where the reference would fail.
  const thresh = tmp.slice().sort()[Math.min(k, tmp.length - 1)];
  for (let p = 0; p < tmp.length; p++) if (tmp[p] <= thresh) pruned[base + p] = 1;
};

/** N:M marks of the group of rows r..r+m-1, per output neuron, from the current weights. */
const markGroupNM = (
  w: Float64Array,
  upper: Float64Array,
  shape: Shape2,
  r: number,
  n: number,
  m: number,
  pruned: Uint8Array,
): void => {
  const [inFeatures, outFeatures] = shape;
  const run = new Float64Array(m);
  for (let o = 0; o < outFeatures; o++) {
    for (let g = 0; g < m; g++) {
      const i = r + g;
      const d = upper[i * inFeatures + i];
      const v = w[i * outFeatures + o];
      run[g] = (v * v) / (d * d);
    }
    for (const g of lowestPositions(run, n)) pruned[(r + g) * outFeatures + o] = 1;
  }
};

/**
 * What SparseGPT derives from a linear's Hessian alone, whatever it prunes to: the upper
 * Cholesky factor of the damped inverse, the damping it took, and the inputs never seen
 * active. One factor serves every sparsity of the linear (EvoPress's levels prune each
 * linear at many), so the O(in^3) factorisation is paid once, not once a level.
 */
export interface SparseGptFactor {
  readonly inFeatures: number;
  /** U with (H + damping I)^-1 = U^T U, row-major [in, in]. */
  readonly upper: Float64Array;
  readonly damping: number;
  /** Inputs with a zero diagonal in H: their weights are zeroed, as they cannot affect the output. */
  readonly dead: readonly number[];
}

/**
 * The factor of `hessian` (H = (2/n) sum x x^T, row-major [in, in]); the Hessian is not
 * modified unless `consume` says it may be.
 */
export const sparseGptFactor = (hessian: Float64Array, inFeatures: number, options: Pick<SparseGptOptions, "percdamp" | "source" | "linalg" | "consume"> = {}): SparseGptFactor => {
  const percdamp = options.percdamp ?? DEFAULT_PERCDAMP;
  const source = options.source ?? "SparseGPT layer";
  const blas = (options.linalg ?? defaultLinalg) === "js" ? undefined : nativeBlas();
  if (options.linalg === "native" && !blas) throw new RangeError("sparseGptPrune: the native kernel is not built");
  for (let e = 0; e < hessian.length; e++) {
    if (!Number.isFinite(hessian[e])) {
      throw new DataError({ file: source, problem: `the Hessian has a non-finite entry at index ${e}` });
    }
  }
  const dead: number[] = [];
  // Inputs never seen active: give them a unit diagonal so H stays invertible (their
  // weights are zeroed by the solve).
  const prepared = (h: Float64Array): { h: Float64Array; meanDiag: number } => {
    let diagSum = 0;
    dead.length = 0;
    for (let i = 0; i < inFeatures; i++) {
      if (h[i * inFeatures + i] === 0) {
        h[i * inFeatures + i] = 1;
        dead.push(i);
      }
      diagSum += h[i * inFeatures + i];
    }
    return { h, meanDiag: diagSum / inFeatures };
  };
  // A consumed Hessian is factorised where it lies; otherwise a copy is (the reference's route).
  const consume = options.consume;
  const { h, meanDiag } = prepared(consume ? hessian : hessian.slice());
  let damping = percdamp * meanDiag;
  let upper = inverseUpperCholesky(h, inFeatures, damping, blas, consume !== undefined);
  // A Gram matrix has a positive mean diagonal here (dead entries became 1); anything else
  // is not a Hessian of this kind, and more damping would only hide that.
  for (let retry = 0; upper === null && meanDiag > 0 && retry < DAMPING_RETRIES; retry++) {
    damping = Math.max(damping, DEFAULT_PERCDAMP * meanDiag) * 10;
    upper = consume ? inverseUpperCholesky(prepared(consume.hessianAgain()).h, inFeatures, damping, blas, true) : inverseUpperCholesky(h, inFeatures, damping, blas);
  }
  if (upper === null) {
    throw new DataError({
      file: source,
      problem: `the Hessian is not positive definite even with ${damping} added to its diagonal`,
    });
  }
  return { inFeatures, upper, damping, dead };
};

/**
 * Prunes one linear with SparseGPT. `hessian` is H = (2/n) sum x x^T, row-major [in, in]
 * (HessianAccumulator.hessian()); it is not modified. Or, in its place, the linear's
 * factor (sparseGptFactor), for a linear pruned at several sparsities.
 */
export const sparseGptPrune = (
  weight: Float32Array,
  shape: Shape2,
  hessian: Float64Array | SparseGptFactor,
  target: SparseGptTarget,
  options: SparseGptOptions = {},
): SparseGptResult => {
  const blocksize = options.blocksize ?? DEFAULT_BLOCKSIZE;
  const percdamp = options.percdamp ?? DEFAULT_PERCDAMP;
  const threshold = options.threshold ?? "reference";
  const source = options.source ?? "SparseGPT layer";
  const blas = (options.linalg ?? defaultLinalg) === "js" ? undefined : nativeBlas();
  if (options.linalg === "native" && !blas) throw new RangeError("sparseGptPrune: the native kernel is not built");
  const given = hessian instanceof Float64Array ? undefined : hessian;
  if (given && given.inFeatures !== shape[0]) throw new RangeError(`sparseGptPrune: a factor of ${given.inFeatures} input features for shape [${shape[0]}, ${shape[1]}]`);
  checkInputs(weight, shape, given ? new Float64Array(0) : (hessian as Float64Array), target, blocksize, percdamp, given !== undefined);
  const [inFeatures, outFeatures] = shape;
  for (let e = 0; e < weight.length; e++) {
    if (!Number.isFinite(weight[e])) {
      throw new DataError({ file: source, problem: `the weight has a non-finite entry at index ${e}` });
    }
  }
  const factor = given ?? sparseGptFactor(hessian as Float64Array, inFeatures, options);
  const { upper } = factor;
  const w = Float64Array.from(weight);
  for (const i of factor.dead) w.fill(0, i * outFeatures, (i + 1) * outFeatures);

  const pruned = new Uint8Array(weight.length);
  let loss = 0;
  for (let i1 = 0; i1 < inFeatures; i1 += blocksize) {
    const i2 = Math.min(i1 + blocksize, inFeatures);
    if ("sparsity" in target) markBlock(w, upper, shape, i1, i2, target.sparsity, threshold, pruned);
    // Err1 of the reference: every row's scaled pruning error (zero where kept), for the lazy update.
    const err = new Float64Array((i2 - i1) * outFeatures);
    for (let i = i1; i < i2; i++) {
      if (!("sparsity" in target) && (i - i1) % target.m === 0) markGroupNM(w, upper, shape, i, target.n, target.m, pruned);
      const d = upper[i * inFeatures + i];
      const row = i * outFeatures;
      const errRow = (i - i1) * outFeatures;
      for (let o = 0; o < outFeatures; o++) {
        if (!pruned[row + o]) continue;
        const e = w[row + o] / d;
        err[errRow + o] = e;
        loss += (e * e) / 2;
        w[row + o] = 0;
      }
      // Spread this row's error over the block's remaining rows (W1[:, i:] -= err1 Hinv1[i, i:]);
      // row i itself then equals q, which is already stored. A rank-1 update: BLAS's where
      // the native kernel is built.
      if (blas) {
        if (i + 1 < i2) {
          blas.dgemm(false, false, i2 - i - 1, outFeatures, 1, -1, upper.subarray(i * inFeatures + i + 1), 1, err.subarray(errRow), outFeatures, 1, w.subarray((i + 1) * outFeatures), outFeatures);
        }
        continue;
      }
      for (let j = i + 1; j < i2; j++) {
        const u = upper[i * inFeatures + j];
        if (u === 0) continue;
        const nextRow = j * outFeatures;
        for (let o = 0; o < outFeatures; o++) w[nextRow + o] -= err[errRow + o] * u;
      }
    }
    // Lazy batch update of every later row: W[:, i2:] -= Err1 Hinv[i1:i2, i2:]; in our layout
    // rows i2.. of w (n - i2 x out) -= U[i1:i2, i2:]^T (n - i2 x bs) times err (bs x out).
    if (blas) {
      if (i2 < inFeatures) {
        blas.dgemm(true, false, inFeatures - i2, outFeatures, i2 - i1, -1, upper.subarray(i1 * inFeatures + i2), inFeatures,
          err, outFeatures, 1, w.subarray(i2 * outFeatures), outFeatures);
      }
      continue;
    }
    for (let i = i1; i < i2; i++) {
      const errRow = (i - i1) * outFeatures;
      for (let k = i2; k < inFeatures; k++) {
        const u = upper[i * inFeatures + k];
        if (u === 0) continue;
        const targetRow = k * outFeatures;
        for (let o = 0; o < outFeatures; o++) w[targetRow + o] -= err[errRow + o] * u;
      }
    }
  }

  const keep = new Uint8Array(weight.length);
  for (let e = 0; e < keep.length; e++) keep[e] = pruned[e] ? 0 : 1;
  return { weight: Float32Array.from(w), keep, loss, damping: factor.damping };
};
