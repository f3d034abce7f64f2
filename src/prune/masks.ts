/**
 * Keep-masks from element scores (1 = keep, 0 = prune), on host arrays.
 *
 * Layout: a linear's weight is row-major [in, out] (y = x W). What docs/methods.md and the
 * papers call a "row" of the weight (one output neuron with its C_in input weights) is
 * a COLUMN of this layout: the elements at flat indices i * out + o for i = 0..in-1.
 *
 * Order among equal scores: the element with the lower flat index counts as lower, so it
 * is pruned first. Every function here uses that same total order, which makes masks
 * deterministic and lets the one-shot and the threshold-lookup forms agree exactly.
 */
import { nativeBlas } from "../backend/native-blas.ts";

/** The set of weights that compete with each other for survival. */
export type MaskGroup =
  /** One group: the whole matrix (magnitude pruning). */
  | "matrix"
  /** One group per output neuron, i.e. per column of [in, out] (Wanda's per-row groups). */
  | "output";

export type Shape2 = readonly [inFeatures: number, outFeatures: number];

const checkShape = (what: string, length: number, shape: Shape2): void => {
  const [rows, cols] = shape;
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new RangeError(`${what}: shape [${rows}, ${cols}] must be two positive integers`);
  }
  if (length !== rows * cols) {
    throw new RangeError(`${what}: ${length} elements do not fill shape [${rows}, ${cols}]`);
  }
};

const checkScores = (what: string, scores: ArrayLike<number>): void => {
  // NaN has no place in an order; silently keeping or pruning it would hide an upstream bug.
  for (let e = 0; e < scores.length; e++) {
    if (Number.isNaN(scores[e])) throw new RangeError(`${what}: score at index ${e} is NaN`);
  }
};

const checkSparsity = (what: string, sparsity: number): void => {
  if (!(sparsity >= 0 && sparsity <= 1)) throw new RangeError(`${what}: sparsity ${sparsity} is outside [0, 1]`);
};

/** Weights pruned from a group of `size` at ratio `sparsity`: floor, as Wanda's int(C_in * s). */
export const prunedCount = (size: number, sparsity: number): number => Math.floor(size * sparsity);

/**
 * Positions (0..keys.length-1) of the k lowest keys, in no particular order; equal keys
 * are ordered by position. Quickselect: expected O(length), no full sort needed when a
 * mask is made once.
 */
export const lowestPositions = (keys: ArrayLike<number>, k: number): Uint32Array => {
  const n = keys.length;
  const idx = new Uint32Array(n);
  for (let p = 0; p < n; p++) idx[p] = p;
  if (k <= 0) return idx.subarray(0, 0);
  if (k >= n) return idx;
  const less = (a: number, b: number): boolean => keys[a] < keys[b] || (keys[a] === keys[b] && a < b);
  const swap = (a: number, b: number): void => {
    const t = idx[a];
    idx[a] = idx[b];
    idx[b] = t;
  };
  // Place the element of rank k at idx[k]; everything before it is then lower.
  let lo = 0;
  let hi = n - 1;
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    // Median of three keeps sorted or reversed inputs linear.
    if (less(idx[mid], idx[lo])) swap(lo, mid);
    if (less(idx[hi], idx[lo])) swap(lo, hi);
    if (less(idx[hi], idx[mid])) swap(mid, hi);
    const pivot = idx[mid];
    swap(mid, hi);
    let store = lo;
    for (let p = lo; p < hi; p++) {
      if (less(idx[p], pivot)) {
        swap(p, store);
        store++;
      }
    }
    swap(store, hi);
    if (store === k) break;
    if (store < k) lo = store + 1;
    else hi = store - 1;
  }
  return idx.subarray(0, k);
};

/**
 * Prunes exactly floor(groupSize * sparsity) lowest-scoring weights of every group.
 * `scores` has the weight's [in, out] layout.
 */
export const unstructuredMask = (
  scores: Float32Array,
  shape: Shape2,
  group: MaskGroup,
  sparsity: number,
  /** "js" skips the native kernel (the reference the tests hold it to). */
  route: "auto" | "js" = "auto",
): Uint8Array => {
  checkShape("unstructuredMask", scores.length, shape);
  checkSparsity("unstructuredMask", sparsity);
  checkScores("unstructuredMask", scores);
  const native = route === "auto" ? nativeBlas() : undefined;
  if (native?.lowest && scores.length < 2 ** 32) {
    // The same selection in C: the k lowest by (score, index) are one set, whoever picks them.
    const keep = new Uint8Array(scores.length);
    const k = group === "matrix" ? prunedCount(scores.length, sparsity) : prunedCount(shape[0], sparsity);
    native.lowest(scores, shape[0], shape[1], group === "output", k, keep);
    return keep;
  }
  const keep = new Uint8Array(scores.length).fill(1);
  if (group === "matrix") {
    for (const e of lowestPositions(scores, prunedCount(scores.length, sparsity))) keep[e] = 0;
    return keep;
  }
  const [inFeatures, outFeatures] = shape;
  const k = prunedCount(inFeatures, sparsity);
  // Gathering the column keeps positions = input index, so ties fall to the lower input,
  // which is also the lower flat index within the column.
  const column = new Float64Array(inFeatures);
  for (let o = 0; o < outFeatures; o++) {
    for (let i = 0; i < inFeatures; i++) column[i] = scores[i * outFeatures + o];
    for (const i of lowestPositions(column, k)) keep[i * outFeatures + o] = 0;
  }
  return keep;
};

/**
 * N:M semi-structured mask: for every output neuron (column of [in, out]), in every run of
 * m consecutive input features, the n lowest-scoring weights are pruned.
 */
export const nmMask = (scores: Float32Array, shape: Shape2, n: number, m: number): Uint8Array => {
  checkShape("nmMask", scores.length, shape);
  checkNM("nmMask", shape[0], n, m);
  checkScores("nmMask", scores);
  const [inFeatures, outFeatures] = shape;
  const keep = new Uint8Array(scores.length).fill(1);
  const run = new Float64Array(m);
  for (let o = 0; o < outFeatures; o++) {
    for (let start = 0; start < inFeatures; start += m) {
      for (let r = 0; r < m; r++) run[r] = scores[(start + r) * outFeatures + o];
      for (const r of lowestPositions(run, n)) keep[(start + r) * outFeatures + o] = 0;
    }
  }
  return keep;
};

export const checkNM = (what: string, inFeatures: number, n: number, m: number): void => {
  if (!Number.isInteger(n) || !Number.isInteger(m) || n < 0 || m < 1 || n >= m) {
    throw new RangeError(`${what}: N:M needs integers 0 <= N < M, got ${n}:${m}`);
  }
  if (inFeatures % m !== 0) {
    throw new RangeError(`${what}: ${inFeatures} input features are not divisible into groups of M = ${m}`);
  }
};

/** The weights with pruned entries set to zero (a new array). */
export const applyMask = (weights: Float32Array, keep: Uint8Array): Float32Array => {
  if (weights.length !== keep.length) {
    throw new RangeError(`applyMask: ${weights.length} weights but a mask of ${keep.length}`);
  }
  const out = new Float32Array(weights.length);
  for (let e = 0; e < weights.length; e++) out[e] = keep[e] ? weights[e] : 0;
  return out;
};

/** Number of zeros in a keep-mask. */
export const countPruned = (keep: Uint8Array): number => {
  let pruned = 0;
  for (let e = 0; e < keep.length; e++) if (!keep[e]) pruned++;
  return pruned;
};

/**
 * Every group's flat element indices, each group ascending by (score, index), groups
 * stored one after another: group g occupies order[g * groupSize, (g + 1) * groupSize).
 * It does not depend on the sparsity, so it is computed once per run ("dense" fitness).
 */
export interface SortOrder {
  readonly shape: Shape2;
  readonly group: MaskGroup;
  readonly groupSize: number;
  readonly order: Uint32Array;
}

/**
 * Float32 bit patterns mapped to unsigned integers with the same order as the floats, so
 * a radix sort can order scores. Negative floats have all bits flipped, non-negative ones
 * only the sign bit; -0 is folded into +0 first because they are equal scores.
 */
const orderedKeys = (scores: Float32Array): Uint32Array => {
  const floats = new Float32Array(scores.length);
  for (let e = 0; e < scores.length; e++) floats[e] = scores[e] + 0;
  const keys = new Uint32Array(floats.buffer);
  for (let e = 0; e < keys.length; e++) {
    const bits = keys[e];
    keys[e] = bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
  }
  return keys;
};

/** One stable counting-sort pass of `src` by bucket(element) into `dst`. */
const countingPass = (
  src: Uint32Array,
  dst: Uint32Array,
  buckets: number,
  bucketOf: (element: number) => number,
): void => {
  const start = new Uint32Array(buckets + 1);
  for (let p = 0; p < src.length; p++) start[bucketOf(src[p]) + 1]++;
  for (let b = 0; b < buckets; b++) start[b + 1] += start[b];
  for (let p = 0; p < src.length; p++) dst[start[bucketOf(src[p])]++] = src[p];
};

/**
 * Sorts every group once: LSD radix sort on the score bits (stable, so equal scores stay in
 * index order), then, for per-output groups, one more stable pass by output column. Linear
 * in the matrix size; no comparison sort over millions of elements.
 */
export const sortedOrder = (scores: Float32Array, shape: Shape2, group: MaskGroup): SortOrder => {
  checkShape("sortedOrder", scores.length, shape);
  checkScores("sortedOrder", scores);
  const size = scores.length;
  const keys = orderedKeys(scores);
  let src = new Uint32Array(size);
  for (let e = 0; e < size; e++) src[e] = e;
  let dst = new Uint32Array(size);
  for (let shift = 0; shift < 32; shift += 8) {
    countingPass(src, dst, 256, (e) => (keys[e] >>> shift) & 0xff);
    [src, dst] = [dst, src];
  }
  const [inFeatures, outFeatures] = shape;
  if (group === "output") {
    countingPass(src, dst, outFeatures, (e) => e % outFeatures);
    src = dst;
  }
  return { shape, group, groupSize: group === "matrix" ? size : inFeatures, order: src };
};

/** The mask unstructuredMask would give at this sparsity, read off a precomputed order in O(size). */
export const maskAtSparsity = (sorted: SortOrder, sparsity: number): Uint8Array => {
  checkSparsity("maskAtSparsity", sparsity);
  const { order, groupSize } = sorted;
  const keep = new Uint8Array(order.length).fill(1);
  const k = prunedCount(groupSize, sparsity);
  for (let start = 0; start < order.length; start += groupSize) {
    for (let r = 0; r < k; r++) keep[order[start + r]] = 0;
  }
  return keep;
};
