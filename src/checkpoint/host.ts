import { CheckpointError } from "../errors.ts";
import type { HostTensor } from "../model/spec.ts";

/** Row-major transpose of a 2-D host matrix ([rows, cols] -> [cols, rows]). */
export const transpose2d = (t: HostTensor): HostTensor => {
  const [rows, cols] = t.shape as [number, number];
  const out = new Float32Array(rows * cols);
  const src = t.data;
  // Tiled so both reads and writes stay cache-friendly on large matrices.
  const tile = 64;
  for (let r0 = 0; r0 < rows; r0 += tile) {
    const r1 = Math.min(rows, r0 + tile);
    for (let c0 = 0; c0 < cols; c0 += tile) {
      const c1 = Math.min(cols, c0 + tile);
      for (let r = r0; r < r1; r++) {
        const rowBase = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[rowBase + c];
      }
    }
  }
  return { shape: [cols, rows], data: out };
};

export const sameShape = (a: readonly number[], b: readonly number[]): boolean =>
  a.length === b.length && a.every((d, i) => d === b[i]);

export const formatShape = (s: readonly number[]): string => `[${s.join(", ")}]`;

/**
 * Index of the first NaN or ±Infinity, or -1. x - x is 0 for every finite x and NaN
 * otherwise, so the common all-finite case is one branch-free pass; only a tensor that
 * holds a non-finite value is scanned again for its position.
 */
export const firstNonFinite = (data: Float32Array): number => {
  let probe = 0;
  for (let i = 0; i < data.length; i++) probe += data[i]! - data[i]!;
  if (probe === 0) return -1;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) return i;
  return -1;
};

/**
 * Model weights as read from a checkpoint must be finite: a NaN or an infinity would only
 * surface later as a NaN perplexity or a NaN score. `index` counts elements in the
 * tensor's layout in the file (row-major).
 */
export const checkFiniteWeights = (file: string, tensor: string, data: Float32Array): void => {
  const at = firstNonFinite(data);
  if (at < 0) return;
  const value = data[at]!;
  const what = Number.isNaN(value) ? "NaN" : value > 0 ? "+Infinity" : "-Infinity";
  throw new CheckpointError({ file, problem: `tensor ${tensor} holds ${what} at index ${at}` });
};
