/**
 * The progress line: never wider than it may be, fields dropped from the least important,
 * and the bar only where room is left.
 */
import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";
import { progressLine, startProgress } from "../src/cli/progress.ts";

const extra = { best: 48.36251, median: 49.35412, evals: "10" };

describe("the progress line", () => {
  it("at 80 columns shows the count, best, median, evaluations, ETA and a bar", () => {
    const line = progressLine("generation", 3, 10, extra, 42, 79);
    expect(line).toBe("generation 3/10 [##------] | best 48.363 | median 49.354 | evals 10 | ETA 42s");
    expect(line.length).toBeLessThanOrEqual(79);
  });

  it("narrower, drops the bar, then the ETA and the evaluations, keeping best the longest", () => {
    expect(progressLine("generation", 3, 10, extra, 42, 59)).toBe("generation 3/10 | best 48.363 | median 49.354 | evals 10");
    expect(progressLine("generation", 3, 10, extra, 42, 34)).toBe("generation 3/10 | best 48.363");
    expect(progressLine("generation", 3, 10, extra, 42, 12)).toBe("generation 3");
  });

  it("fits any width with any fields", () => {
    fc.assert(
      fc.property(
        fc.string({ maxLength: 20 }),
        fc.nat(1000),
        fc.nat(1000),
        fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), fc.oneof(fc.double(), fc.string({ maxLength: 30 })), { maxKeys: 6 }),
        fc.double({ min: 0, max: 1e6 }),
        fc.integer({ min: 1, max: 200 }),
        (label, done, total, fields, eta, width) => {
          const line = progressLine(label, done, total, fields, eta, width);
          expect(line.length).toBeLessThanOrEqual(width);
          // The count is the last thing to go.
          if (width >= `${label} ${done}/${total}`.length) expect(line.startsWith(`${label} ${done}/${total}`)).toBe(true);
        },
      ),
    );
  });

  it("counts past an estimated total as the total, with no negative ETA", () => {
    const written: string[] = [];
    const spy = vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => (written.push(String(chunk)), true));
    const tty = process.stderr.isTTY;
    try {
      // The plain form (a log, not a terminal) prints at the end and when the total is reached.
      Object.defineProperty(process.stderr, "isTTY", { value: false, configurable: true });
      const progress = startProgress("generation", 38);
      progress.update(38);
      progress.update(39);
    } finally {
      Object.defineProperty(process.stderr, "isTTY", { value: tty, configurable: true });
      spy.mockRestore();
    }
    expect(written.at(-2)).toMatch(/^generation: 38\/38 /);
    expect(written.at(-1)).toMatch(/^generation: 39\/39 \(\d+ s elapsed, ETA (0 s|\?)\)\n$/);
  });
});
