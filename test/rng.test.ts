import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Rng } from "../src/rng.ts";

describe("Rng", () => {
  it("same seed, same stream; different seeds, different streams", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (seed) => {
        const a = new Rng(seed);
        const b = new Rng(seed);
        const xs = Array.from({ length: 20 }, () => a.nextUint32());
        expect(Array.from({ length: 20 }, () => b.nextUint32())).toEqual(xs);
        const c = new Rng((seed + 1) >>> 0);
        expect(Array.from({ length: 20 }, () => c.nextUint32())).not.toEqual(xs);
      }),
    );
  });

  it("split streams do not depend on how much the parent drew", () => {
    const a = new Rng(7);
    const b = new Rng(7);
    for (let i = 0; i < 100; i++) b.next();
    expect(a.split("worker").next()).toBe(b.split("worker").next());
    expect(a.split(1).next()).not.toBe(a.split(2).next());
  });

  it("int stays in range and is roughly uniform", () => {
    const r = new Rng(3);
    const counts = new Array(10).fill(0);
    for (let i = 0; i < 20000; i++) counts[r.int(10)]++;
    for (const c of counts) expect(Math.abs(c - 2000)).toBeLessThan(200);
    const mean = Array.from({ length: 20000 }, () => r.normal()).reduce((s, x) => s + x, 0) / 20000;
    expect(Math.abs(mean)).toBeLessThan(0.03);
  });
});
