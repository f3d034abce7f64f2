import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { nmFromSparsities } from "../src/allocation/nm.ts";

describe("per-block N:M from sparsities", () => {
  it("keeps the mean N and every block inside [0, M-1]", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 16 }).chain((m) =>
          fc.tuple(fc.constant(m), fc.integer({ min: 0, max: m - 1 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 40 })),
        ),
        ([m, n, sparsities]) => {
          const ns = nmFromSparsities(sparsities, m, n);
          expect(ns.reduce((a, b) => a + b, 0)).toBe(n * sparsities.length);
          for (const v of ns) expect(Number.isInteger(v) && v >= 0 && v < m).toBe(true);
        },
      ),
    );
  });

  it("gives N everywhere for a uniform allocation and follows the order of the sparsities", () => {
    expect(nmFromSparsities([0.5, 0.5, 0.5], 4, 2)).toEqual([2, 2, 2]);
    expect(nmFromSparsities([0.3, 0.5, 0.7], 8, 4)).toEqual([2, 4, 6]);
    expect(() => nmFromSparsities([0.5], 4, 4)).toThrow(/N:M/);
  });
});
