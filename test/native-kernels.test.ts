/**
 * The native kernels beside the products: encoding float32 to a file's dtype must round
 * exactly as dtype.ts's encoders do (special values and subnormals included), and the k
 * lowest scores it selects, and the ranks it gives, must be the JavaScript route's, for
 * both comparison groups, with ties.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeFrom } from "../src/checkpoint/convert.ts";
import { unstructuredMask } from "../src/prune/masks.ts";
import { ranksOf } from "../src/prune/ranks.ts";
import { nativeCase, skipNotice } from "./helpers/backends.ts";

const skip = skipNotice("the native kernel's encoder and selection", nativeCase.missing);

const floatsFromBits = (bits: readonly number[]): Float32Array => new Float32Array(Uint32Array.from(bits).buffer);

describe.skipIf(skip)("native kernels", () => {
  it("encodes float32 to F32, F16 and BF16 exactly as the JavaScript encoders, transposed or not", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 300 }),
        fc.integer({ min: 1, max: 9 }),
        fc.boolean(),
        (bits, rowsHint, transposed) => {
          const rows = Math.max(1, Math.min(rowsHint, bits.length));
          const cols = Math.floor(bits.length / rows);
          const data = floatsFromBits(bits.slice(0, rows * cols));
          for (const dtype of ["F32", "F16", "BF16"] as const) {
            expect(encodeFrom(dtype, data, rows, cols, transposed)).toEqual(encodeFrom(dtype, data, rows, cols, transposed, "js"));
          }
        },
      ),
      { numRuns: 200 },
    );
    // Rounding edges: halfway cases, the largest half, overflow, subnormals, NaN payloads.
    const edges = floatsFromBits([0x3f801000, 0x3f803000, 0x477fe000, 0x477ff000, 0x477fefff, 0x33800000, 0x33000000, 0x33000001, 0x387fc000, 0x7fc00001, 0xff800000, 0x80000000, 0x7f7fffff]);
    for (const dtype of ["F16", "BF16"] as const) expect(encodeFrom(dtype, edges, 1, edges.length, false)).toEqual(encodeFrom(dtype, edges, 1, edges.length, false, "js"));
  });

  it("selects the mask the JavaScript route selects, per column and over the matrix, ties by index", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 70 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.integer({ min: 1, max: 2 ** 30 }),
        fc.integer({ min: 2, max: 1000 }),
        (rows, cols, sparsity, seed, levels) => {
          let x = seed;
          // Few distinct values: many ties.
          const scores = Float32Array.from({ length: rows * cols }, () => {
            x = (Math.imul(x, 1103515245) + 12345) >>> 0;
            return x % levels;
          });
          for (const group of ["output", "matrix"] as const) {
            expect(unstructuredMask(scores, [rows, cols], group, sparsity)).toEqual(unstructuredMask(scores, [rows, cols], group, sparsity, "js"));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("ranks every weight in its group as the JavaScript route does", () => {
    fc.assert(
      fc.property(fc.integer({ min: 257, max: 700 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 2 ** 30 }), fc.integer({ min: 2, max: 50 }), (rows, cols, seed, levels) => {
        let x = seed;
        const scores = Float32Array.from({ length: rows * cols }, () => {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          return (x % levels) - levels / 2;
        });
        for (const group of ["output", "matrix"] as const) {
          const native = ranksOf(scores, [rows, cols], { kind: "unstructured", group });
          const js = ranksOf(scores, [rows, cols], { kind: "unstructured", group }, "js");
          expect(native.constructor).toBe(js.constructor);
          expect(Array.from(native)).toEqual(Array.from(js));
        }
      }),
      { numRuns: 60 },
    );
  });
});
