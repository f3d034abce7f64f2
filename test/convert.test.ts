/**
 * Streamed weights are decoded by convertInto (src/checkpoint/convert.ts): the native
 * kernel must give exactly what the JavaScript route gives (itself checked against the
 * dtype decoders and a plain transpose), for every dtype, shapes that are and are not
 * multiples of the kernel's 8 x 8 blocks, with and without the transpose; and a NaN or an
 * infinity is found at its index as stored, whichever route runs.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { convertInto, type StoredTensor } from "../src/checkpoint/convert.ts";
import { decodeStorage, encodeStorage } from "../src/checkpoint/dtype.ts";
import type { StorageDtype } from "../src/checkpoint/types.ts";
import { CheckpointError } from "../src/errors.ts";
import { nativeCase, skipNotice } from "./helpers/backends.ts";

const DTYPES: readonly StorageDtype[] = ["F32", "F16", "BF16"];

const tensorArb = fc.record({
  dtype: fc.constantFrom(...DTYPES),
  rows: fc.integer({ min: 1, max: 37 }),
  cols: fc.integer({ min: 1, max: 41 }),
  transposed: fc.boolean(),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
});

const storedBytes = (dtype: StorageDtype, n: number, seed: number): Uint8Array => {
  let x = seed;
  const values = Float32Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x / 2 ** 32 - 0.5) * 6;
  });
  // A copy at an odd offset: file bytes need not be aligned.
  const bytes = encodeStorage(dtype, values);
  const shifted = new Uint8Array(bytes.length + 1).subarray(1);
  shifted.set(bytes);
  return shifted;
};

const tensor = (t: { dtype: StorageDtype; rows: number; cols: number; transposed: boolean }): StoredTensor => ({ file: "model.safetensors", name: "w", ...t });

describe("convertInto", () => {
  it("the JavaScript route decodes and transposes as the dtype decoders and a plain transpose do", () => {
    fc.assert(
      fc.property(tensorArb, ({ dtype, rows, cols, transposed, seed }) => {
        const bytes = storedBytes(dtype, rows * cols, seed);
        const got = new Float32Array(rows * cols);
        convertInto(tensor({ dtype, rows, cols, transposed }), bytes, got, "js");
        const values = decodeStorage(dtype, bytes);
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) expect(got[transposed ? c * rows + r : r * cols + c]).toBe(values[r * cols + c]);
      }),
      { numRuns: 60 },
    );
  });

  it.skipIf(skipNotice("the native kernel's conversion", nativeCase.missing))("the native kernel gives the JavaScript route's values bit for bit", () => {
    fc.assert(
      fc.property(tensorArb, ({ dtype, rows, cols, transposed, seed }) => {
        const bytes = storedBytes(dtype, rows * cols, seed);
        const js = new Float32Array(rows * cols);
        const native = new Float32Array(rows * cols);
        convertInto(tensor({ dtype, rows, cols, transposed }), bytes, js, "js");
        convertInto(tensor({ dtype, rows, cols, transposed }), bytes, native);
        expect(new Uint32Array(native.buffer)).toEqual(new Uint32Array(js.buffer));
      }),
      { numRuns: 100 },
    );
    // Large enough for whole 64 x 64 tiles and ragged edges at once.
    for (const dtype of DTYPES) {
      const [rows, cols] = [131, 203];
      const bytes = storedBytes(dtype, rows * cols, 7);
      const js = new Float32Array(rows * cols);
      const native = new Float32Array(rows * cols);
      convertInto(tensor({ dtype, rows, cols, transposed: true }), bytes, js, "js");
      convertInto(tensor({ dtype, rows, cols, transposed: true }), bytes, native);
      expect(new Uint32Array(native.buffer)).toEqual(new Uint32Array(js.buffer));
    }
  });

  it("a NaN or an infinity is refused naming the file, the tensor and its index as stored, on both routes", () => {
    const routes: ("auto" | "js")[] = nativeCase.missing ? ["js"] : ["auto", "js"];
    for (const route of routes) {
      for (const dtype of DTYPES) {
        for (const [bad, word] of [[NaN, "NaN"], [Infinity, "+Infinity"], [-Infinity, "-Infinity"]] as const) {
          const values = Float32Array.from({ length: 60 }, (_, i) => i / 10);
          values[47] = bad;
          const t = tensor({ dtype, rows: 6, cols: 10, transposed: true });
          const run = () => convertInto(t, encodeStorage(dtype, values), new Float32Array(60), route);
          expect(run).toThrow(CheckpointError);
          expect(run).toThrow(`model.safetensors: tensor w holds ${word} at index 47`);
        }
      }
    }
  });
});
