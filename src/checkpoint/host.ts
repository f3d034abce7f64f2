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
