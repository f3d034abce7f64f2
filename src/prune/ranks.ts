/**
 * Masks as ranks: every weight's position in its comparison group's order (by score, equal
 * scores by index, as masks.ts orders them). Pruning k weights of a group is then "zero
 * every weight of rank < k", one comparison per weight, whatever the sparsity: a search
 * turns a dense block into a candidate's pruned block while it is converted for upload,
 * without sorting anything again. Ranks take 1, 2 or 4 bytes a weight (by group size), and
 * live in memory or, for models larger than memory, in files of a scratch folder.
 */
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { nativeBlas } from "../backend/native-blas.ts";
import { checkNM, prunedCount, sortedOrder, type MaskGroup, type Shape2 } from "./masks.ts";

export type Ranks = Uint8Array | Uint16Array | Uint32Array;

/** How weights compete: unstructured within the metric's group, or N of every M consecutive inputs. */
export type RankGroup = { readonly kind: "unstructured"; readonly group: MaskGroup } | { readonly kind: "nm"; readonly m: number };

const arrayFor = (largest: number, length: number): Ranks =>
  largest <= 0xff ? new Uint8Array(length) : largest <= 0xffff ? new Uint16Array(length) : new Uint32Array(length);

/** The size of one comparison group of a [in, out] weight. */
export const groupSize = (shape: Shape2, group: RankGroup): number =>
  group.kind === "nm" ? group.m : group.group === "matrix" ? shape[0] * shape[1] : shape[0];

/** Every weight's rank within its group; `scores` has the weight's [in, out] layout. */
export const ranksOf = (scores: Float32Array, shape: Shape2, group: RankGroup, route: "auto" | "js" = "auto"): Ranks => {
  const [inFeatures, outFeatures] = shape;
  const native = route === "auto" ? nativeBlas() : undefined;
  if (group.kind === "unstructured" && native?.ranks && scores.length < 2 ** 32) {
    const size = groupSize(shape, group);
    // The native kernel writes 2 or 4 bytes; 1-byte groups (tiny matrices) go the JavaScript way.
    if (size > 0xff) {
      const ranks = size <= 0x10000 ? new Uint16Array(scores.length) : new Uint32Array(scores.length);
      native.ranks(scores, inFeatures, outFeatures, group.group === "output", ranks);
      return ranks;
    }
  }
  if (group.kind === "unstructured") {
    const { order, groupSize: size } = sortedOrder(scores, shape, group.group);
    const ranks = arrayFor(size - 1, order.length);
    for (let start = 0; start < order.length; start += size) for (let r = 0; r < size; r++) ranks[order[start + r]!] = r;
    return ranks;
  }
  const m = group.m;
  checkNM("ranksOf", inFeatures, 0, m);
  const ranks = arrayFor(m - 1, scores.length);
  for (let o = 0; o < outFeatures; o++) {
    for (let start = 0; start < inFeatures; start += m) {
      // A run's rank of each weight: how many of the run come before it (lower score, or equal and earlier).
      for (let a = 0; a < m; a++) {
        const sa = scores[(start + a) * outFeatures + o]!;
        let rank = 0;
        for (let b = 0; b < m; b++) {
          const sb = scores[(start + b) * outFeatures + o]!;
          if (sb < sa || (sb === sa && b < a)) rank++;
        }
        ranks[(start + a) * outFeatures + o] = rank;
      }
    }
  }
  return ranks;
};

/** Weights a group loses: N for a pattern, the floor rule otherwise. */
export const prunedInGroup = (size: number, target: { readonly sparsity: number } | { readonly n: number; readonly m: number }): number =>
  "n" in target ? target.n : prunedCount(size, target.sparsity);

/** Zeroes every weight of rank below k, in place. */
export const zeroBelowRank = (weights: Float32Array, ranks: Ranks, k: number): void => {
  if (weights.length !== ranks.length) throw new RangeError(`zeroBelowRank: ${weights.length} weights but ${ranks.length} ranks`);
  if (k <= 0) return;
  for (let e = 0; e < weights.length; e++) if (ranks[e]! < k) weights[e] = 0;
};

/** Keep-mask (1 = kept) of the weights of rank >= k. */
export const keepFromRanks = (ranks: Ranks, k: number): Uint8Array => {
  const keep = new Uint8Array(ranks.length);
  for (let e = 0; e < ranks.length; e++) keep[e] = ranks[e]! >= k ? 1 : 0;
  return keep;
};

export interface RankStore {
  put(block: number, linear: string, ranks: Ranks): void;
  get(block: number, linear: string): Ranks;
  has(block: number, linear: string): boolean;
  /** Bytes held in memory. */
  readonly bytes: number;
  dispose(): void;
}

export const memoryRanks = (): RankStore => {
  const all = new Map<string, Ranks>();
  let bytes = 0;
  return {
    put: (b, l, r) => {
      all.set(`${b}.${l}`, r);
      bytes += r.byteLength;
    },
    get: (b, l) => {
      const r = all.get(`${b}.${l}`);
      if (!r) throw new RangeError(`no ranks for block ${b} linear ${l}`);
      return r;
    },
    has: (b, l) => all.has(`${b}.${l}`),
    get bytes() {
      return bytes;
    },
    dispose: () => all.clear(),
  };
};

/** Ranks in files of a scratch folder (removed by dispose), read back when a candidate needs them. */
export const diskRanks = (dir: string): RankStore => {
  mkdirSync(dir, { recursive: true });
  const index = new Map<string, { file: string; kind: 1 | 2 | 4; length: number }>();
  return {
    put: (b, l, r) => {
      // Keys name a group kind and a linear ("output/q"): one flat file name for both.
      const file = join(dir, `${b}.${l.replace(/[^\w.-]/g, "_")}.ranks`);
      const bytes = new Uint8Array(r.buffer, r.byteOffset, r.byteLength);
      const fd = openSync(file, "w");
      try {
        for (let done = 0; done < bytes.byteLength; ) done += writeSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done));
      } finally {
        closeSync(fd);
      }
      index.set(`${b}.${l}`, { file, kind: r.BYTES_PER_ELEMENT as 1 | 2 | 4, length: r.length });
    },
    get: (b, l) => {
      const e = index.get(`${b}.${l}`);
      if (!e) throw new RangeError(`no ranks for block ${b} linear ${l}`);
      const r = e.kind === 1 ? new Uint8Array(e.length) : e.kind === 2 ? new Uint16Array(e.length) : new Uint32Array(e.length);
      const bytes = new Uint8Array(r.buffer);
      const fd = openSync(e.file, "r");
      try {
        for (let done = 0; done < bytes.byteLength; ) {
          const got = readSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done), done);
          if (got === 0) throw new Error(`${e.file} is shorter than its ranks`);
          done += got;
        }
      } finally {
        closeSync(fd);
      }
      return r;
    },
    has: (b, l) => index.has(`${b}.${l}`),
    bytes: 0,
    dispose: () => {
      index.clear();
      rmSync(dir, { recursive: true, force: true });
    },
  };
};
