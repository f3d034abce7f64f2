/**
 * The empirical spectral density (ESD) of a weight matrix and the heavy-tail exponent of
 * its power-law tail, as AlphaPruning measures them (docs/methods.md, "AlphaPruning"):
 * the eigenvalues of W^T W (the squared singular values of W), then a power law fitted to
 * the tail above x_min, x_min chosen among the eigenvalues near the ESD's peak by the
 * smallest Kolmogorov-Smirnov distance.
 *
 * The eigenvalues come from the Gram matrix of the smaller side (n x n, n = min(rows,
 * cols)), reduced to tridiagonal form by Householder reflections and diagonalised by the
 * implicit QL method, in float64: about 4/3 n^3 + n^2 m operations, which is quick for the
 * models this project runs and slow (minutes per matrix) at n = 4096.
 */

/** Squared singular values of a rows x cols row-major matrix, ascending. */
export const squaredSingularValues = (data: ArrayLike<number>, rows: number, cols: number): Float64Array => {
  if (data.length !== rows * cols) throw new RangeError(`a ${rows} x ${cols} matrix needs ${rows * cols} values, got ${data.length}`);
  const n = Math.min(rows, cols);
  const m = Math.max(rows, cols);
  // Row i of the smaller side as a contiguous float64 vector of length m.
  const side = new Float64Array(n * m);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      if (rows <= cols) side[r * m + c] = data[r * cols + c]!;
      else side[c * m + r] = data[r * cols + c]!;
    }
  }
  const gram = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      const a = i * m;
      const b = j * m;
      for (let k = 0; k < m; k++) s += side[a + k]! * side[b + k]!;
      gram[i * n + j] = s;
      gram[j * n + i] = s;
    }
  }
  return symmetricEigenvalues(gram, n);
};

/** Eigenvalues of a symmetric n x n matrix (row-major, overwritten), ascending. */
export const symmetricEigenvalues = (a: Float64Array, n: number): Float64Array => {
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  tridiagonalise(a, n, d, e);
  diagonalise(d, e, n);
  return d.sort();
};

/** Householder reduction to tridiagonal form: diagonal d, sub-diagonal e (e[i] couples i-1 and i). */
const tridiagonalise = (a: Float64Array, n: number, d: Float64Array, e: Float64Array): void => {
  const at = (i: number, j: number) => i * n + j;
  for (let i = n - 1; i > 0; i--) {
    const l = i - 1;
    let h = 0;
    if (l > 0) {
      let scale = 0;
      for (let k = 0; k <= l; k++) scale += Math.abs(a[at(i, k)]!);
      if (scale === 0) {
        e[i] = a[at(i, l)]!;
      } else {
        for (let k = 0; k <= l; k++) {
          a[at(i, k)]! /= scale;
          h += a[at(i, k)]! * a[at(i, k)]!;
        }
        let f = a[at(i, l)]!;
        let g = f >= 0 ? -Math.sqrt(h) : Math.sqrt(h);
        e[i] = scale * g;
        h -= f * g;
        a[at(i, l)] = f - g;
        f = 0;
        for (let j = 0; j <= l; j++) {
          g = 0;
          for (let k = 0; k <= j; k++) g += a[at(j, k)]! * a[at(i, k)]!;
          for (let k = j + 1; k <= l; k++) g += a[at(k, j)]! * a[at(i, k)]!;
          e[j] = g / h;
          f += e[j]! * a[at(i, j)]!;
        }
        const hh = f / (h + h);
        for (let j = 0; j <= l; j++) {
          const fj = a[at(i, j)]!;
          const gj = e[j]! - hh * fj;
          e[j] = gj;
          for (let k = 0; k <= j; k++) a[at(j, k)]! -= fj * e[k]! + gj * a[at(i, k)]!;
        }
      }
    } else {
      e[i] = a[at(i, l)]!;
    }
    d[i] = h;
  }
  e[0] = 0;
  for (let i = 0; i < n; i++) d[i] = a[at(i, i)]!;
};

/** Implicit QL with Wilkinson shifts on a symmetric tridiagonal matrix; d ends as its eigenvalues. */
const diagonalise = (d: Float64Array, e: Float64Array, n: number): void => {
  for (let i = 1; i < n; i++) e[i - 1] = e[i]!;
  if (n > 0) e[n - 1] = 0;
  for (let l = 0; l < n; l++) {
    let iterations = 0;
    let m: number;
    do {
      for (m = l; m < n - 1; m++) {
        const dd = Math.abs(d[m]!) + Math.abs(d[m + 1]!);
        if (Math.abs(e[m]!) <= Number.EPSILON * dd) break;
      }
      if (m !== l) {
        if (iterations++ === 100) throw new Error("the eigenvalues did not converge");
        let g = (d[l + 1]! - d[l]!) / (2 * e[l]!);
        let r = Math.hypot(g, 1);
        g = d[m]! - d[l]! + e[l]! / (g + (g >= 0 ? Math.abs(r) : -Math.abs(r)));
        let s = 1;
        let c = 1;
        let p = 0;
        let i: number;
        for (i = m - 1; i >= l; i--) {
          const f = s * e[i]!;
          const b = c * e[i]!;
          r = Math.hypot(f, g);
          e[i + 1] = r;
          if (r === 0) {
            d[i + 1]! -= p;
            e[m] = 0;
            break;
          }
          s = f / r;
          c = g / r;
          g = d[i + 1]! - p;
          r = (d[i]! - g) * s + 2 * c * b;
          p = s * r;
          d[i + 1] = g + p;
          g = c * r - b;
        }
        if (r === 0 && i >= l) continue;
        d[l]! -= p;
        e[l] = g;
        e[m] = 0;
      }
    } while (m !== l);
  }
};

/** Bins of the histogram that finds the ESD's peak (AlphaPruning's default). */
const PEAK_BINS = 100;

/**
 * The power-law exponent α of an ESD's tail, as AlphaPruning's `net_esd_estimator` with
 * `fix_fingers='xmin_peak'` fits it: for each candidate x_min = λ_i, the maximum-likelihood
 * α = 1 + n / (Σ_{k>=i} ln λ_k - n ln λ_i) over the n = N - i eigenvalues from λ_i up, and
 * its Kolmogorov-Smirnov distance D = max_k |1 - (λ_k / x_min)^(1-α) - k / n|; the α of the
 * smallest D wins. Candidates stop above 1.5 times the left edge of the fullest of 100
 * histogram bins of log10 λ (the ESD's peak); the reference's lower cut compares λ with
 * log10(0.95 x_peak), a logarithm, and is kept as written. Eigenvalues at or below 0
 * (a rank-deficient matrix) are dropped first; fewer than two leave α = 0, as the
 * reference's zero-initialised search does.
 */
export const powerLawAlpha = (ascending: ArrayLike<number>): number => {
  const eigs = Array.from(ascending).filter((v) => v > 0);
  const count = eigs.length;
  if (count < 2) return 0;
  const logs = eigs.map(Math.log);
  const log10s = eigs.map(Math.log10);
  const low = log10s[0]!;
  const high = log10s[count - 1]!;
  const counts = new Array<number>(PEAK_BINS).fill(0);
  for (const v of log10s) counts[high > low ? Math.min(PEAK_BINS - 1, Math.floor(((v - low) / (high - low)) * PEAK_BINS)) : 0]! += 1;
  let peak = 0;
  for (let b = 1; b < PEAK_BINS; b++) if (counts[b]! > counts[peak]!) peak = b;
  const peakEdge = 10 ** (low + ((high - low) * peak) / PEAK_BINS);
  const lowest = Math.log10(0.95 * peakEdge);
  const highest = 1.5 * peakEdge;
  // Suffix sums of the logs, so each candidate's α is O(1).
  const tail = new Float64Array(count + 1);
  for (let k = count - 1; k >= 0; k--) tail[k] = tail[k + 1]! + logs[k]!;
  // As the reference: every candidate starts at α = 0, D = 1; the first smallest D wins.
  const alphas = new Float64Array(count - 1);
  const distances = new Float64Array(count - 1).fill(1);
  for (let i = 0; i < count - 1; i++) {
    const xmin = eigs[i]!;
    if (xmin < lowest) continue;
    if (xmin > highest) break;
    const n = count - i;
    const alpha = 1 + n / (tail[i]! - n * logs[i]!);
    alphas[i] = alpha;
    if (alpha > 1) {
      let distance = 0;
      for (let k = 0; k < n; k++) distance = Math.max(distance, Math.abs(1 - (eigs[i + k]! / xmin) ** (1 - alpha) - k / n));
      distances[i] = distance;
    }
  }
  let best = 0;
  for (let i = 1; i < count - 1; i++) if (distances[i]! < distances[best]!) best = i;
  return alphas[best]!;
};
