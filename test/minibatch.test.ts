/** Stage minibatches (src/search/minibatch.ts): drawn from (seed, generation, stage) alone. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Window } from "../src/data/windows.ts";
import { stageWindows } from "../src/search/minibatch.ts";

const poolOf = (lengths: readonly number[]): Window[] =>
  lengths.map((n) => ({ ids: new Int32Array(n + 1), targets: Int32Array.from({ length: n + 1 }, (_, i) => (i < n ? 1 : -1)) }));
const scored = (ws: readonly Window[]) => ws.reduce((s, w) => s + w.targets.filter((t) => t >= 0).length, 0);

describe("stageWindows", () => {
  it("holds at least the tokens asked (or the whole pool), without repeats, the same for the same (seed, generation, stage) (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 1, max: 2000 }),
        fc.nat(1000),
        fc.nat(20),
        fc.nat(4),
        (lengths, tokens, seed, generation, stage) => {
          const pool = poolOf(lengths);
          const picked = stageWindows(pool, tokens, seed, generation, stage);
          expect(new Set(picked).size).toBe(picked.length);
          const total = scored(picked);
          if (picked.length < pool.length) {
            expect(total).toBeGreaterThanOrEqual(tokens);
            // The last window drawn was needed.
            expect(total - scored([picked.at(-1)!])).toBeLessThan(tokens);
          } else expect(total).toBe(scored(pool));
          expect(stageWindows(pool, tokens, seed, generation, stage)).toEqual(picked);
        },
      ),
    );
  });

  it("differs between stages and generations, and refuses a bad token count", () => {
    const pool = poolOf(Array.from({ length: 40 }, () => 10));
    const drawn = (seed: number, generation: number, stage: number) => stageWindows(pool, 50, seed, generation, stage).map((w) => pool.indexOf(w));
    const a = drawn(1, 0, 0);
    expect(drawn(1, 0, 1)).not.toEqual(a);
    expect(drawn(1, 1, 0)).not.toEqual(a);
    expect(drawn(2, 0, 0)).not.toEqual(a);
    expect(() => stageWindows(pool, 0, 1, 0, 0)).toThrow(RangeError);
    expect(() => stageWindows(pool, 1.5, 1, 0, 0)).toThrow(RangeError);
  });
});
