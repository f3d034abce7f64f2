/**
 * Block selection for structured pruning: lists parse or are refused (never a crash), and
 * restricting an allocation keeps the count of weights removed.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseBlockList, restrictToBlocks } from "../src/allocation/block-selection.ts";

describe("parseBlockList", () => {
  it("reads numbers and inclusive ranges, sorted, without repeats", () => {
    expect(parseBlockList("4-29", 32)).toEqual(Array.from({ length: 26 }, (_, i) => 4 + i));
    expect(parseBlockList("5-7, 0,2,6", 8)).toEqual([0, 2, 5, 6, 7]);
    expect(() => parseBlockList("3-9", 8)).toThrow(/block 9 does not exist: the model has blocks 0-7/);
    expect(() => parseBlockList("5-2", 8)).toThrow(/runs backwards/);
    expect(() => parseBlockList("", 8)).toThrow(/is not a block number/);
  });

  it("any text is a list of existing blocks or a RangeError (property)", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.stringMatching(/^[0-9,\- ]{0,12}$/)), fc.integer({ min: 1, max: 40 }), (text, blocks) => {
        try {
          const list = parseBlockList(text, blocks);
          expect(list.length).toBeGreaterThan(0);
          for (const b of list) expect(b >= 0 && b < blocks).toBe(true);
          expect([...list].sort((a, b) => a - b)).toEqual(list);
        } catch (error) {
          expect(error).toBeInstanceOf(RangeError);
        }
      }),
    );
  });
});

describe("restrictToBlocks", () => {
  it("blocks left out get 0, the others carry the same count of removed weights (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.double({ min: 0, max: 0.6, noNaN: true }), fc.integer({ min: 1, max: 1000 }), fc.boolean()), { minLength: 1, maxLength: 12 }),
        (rows) => {
          const ratios = rows.map((r) => r[0]);
          const params = rows.map((r) => r[1]);
          const selected = rows.flatMap((r, i) => (r[2] ? [i] : []));
          if (selected.length === 0) {
            expect(() => restrictToBlocks(ratios, params, selected)).toThrow(/no block is selected/);
            return;
          }
          const removed = ratios.reduce((n, r, i) => n + r * params[i]!, 0);
          let out: number[];
          try {
            out = restrictToBlocks(ratios, params, selected);
          } catch (error) {
            expect((error as Error).message).toMatch(/would need a ratio of/);
            return;
          }
          out.forEach((r, i) => {
            if (!selected.includes(i)) expect(r).toBe(0);
            expect(r >= 0 && r < 1).toBe(true);
          });
          expect(out.reduce((n, r, i) => n + r * params[i]!, 0)).toBeCloseTo(removed, 6);
        },
      ),
    );
  });

  it("every block selected leaves the ratios as they are", () => {
    expect(restrictToBlocks([0.1, 0.5, 0.3], [10, 20, 30], [0, 1, 2])).toEqual([0.1, 0.5, 0.3]);
    expect(restrictToBlocks([0.5, 0, 0], [10, 10, 10], [1, 2])).toEqual([0, 0.25, 0.25]);
    // A selected ratio too small to scale (a subnormal) shares like a zero one.
    const tiny = restrictToBlocks([5.555555555555555e-8, 5e-324], [9, 1], [1]);
    expect(tiny[0]).toBe(0);
    expect(tiny[1]).toBeCloseTo(5e-7, 15);
  });
});
