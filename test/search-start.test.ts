/**
 * `--start`: evolved methods that can (evopress, msp) begin from a cheap method's allocation
 * or an allocation file instead of uniform; the levels evopress starts from keep the
 * pruned count exact; methods that cannot are refused.
 */
import fc from "fast-check";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { levelGrid, plugin as evopress, startLevels, type EvoPressSpace } from "../plugins/evopress/index.ts";
import type { MethodContext } from "../src/search/plugin.ts";
import { embeddedModel, errorLines, evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";
import { readFileSync } from "node:fs";

const root = tempRoot("search-start");

const contextOf = (params: number[], blocks: number, target: number): MethodContext =>
  ({
    blocks,
    blockParams: [],
    linears: params.map((p, j) => ({ block: j % blocks, linear: `l${j}`, params: p })),
    target,
    bounds: { lo: 0, hi: 0.95 },
    pattern: { kind: "unstructured" },
    statistics: undefined as never,
  }) satisfies MethodContext;

describe("evopress's start levels", () => {
  it("sum to 0, stay in range, and come within a level or so of the start (property)", () => {
    const space: EvoPressSpace = { levelSize: 0.02, offspring: 4, stages: [{ survivors: 1, tokens: 10 }] } as EvoPressSpace;
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 100, max: 5000 }), { minLength: 2, maxLength: 16 }),
        fc.double({ min: 0.2, max: 0.8, noNaN: true }),
        fc.array(fc.double({ min: -0.15, max: 0.15, noNaN: true }), { minLength: 16, maxLength: 16 }),
        (params, target, offsets) => {
          const context = contextOf(params, 2, target);
          // Lopsided linears (e.g. 100 and 5000 weights at 47%) can leave no switch at all: a
          // level of the mean linear moves the small one past a bound either way. The grid
          // refuses them, so there is no start to round.
          let grid: ReturnType<typeof levelGrid>;
          try {
            grid = levelGrid(context, space);
          } catch (error) {
            expect(String(error)).toMatch(/leaves no switch within the bounds/);
            return;
          }
          const start = params.map((_, j) => Math.min(0.95, Math.max(0, target + offsets[j]!)));
          const levels = startLevels(context, grid, start);
          expect(levels.reduce((a, b) => a + b, 0)).toBe(0);
          levels.forEach((l, j) => {
            expect(Number.isInteger(l)).toBe(true);
            expect(l).toBeGreaterThanOrEqual(grid.lowest[j]!);
            expect(l).toBeLessThanOrEqual(grid.highest[j]!);
          });
          // Per block starts are spread over the block's linears.
          expect(startLevels(context, grid, [target, target])).toEqual(params.map(() => 0));
          const genome = evopress.method.kind === "evolve" ? evopress.method.genome({ ...context, start: { label: "x", sparsities: start } }, space) : undefined;
          expect(genome!.create(undefined as never, 0)).toEqual(levels);
        },
      ),
      // The lopsided case above, every run.
      { examples: [[[100, 5000], 0.47, Array.from({ length: 16 }, () => 0)]] },
    );
  });
});

describe("evosparse search --start", () => {
  const small = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "64", "--fitness-windows", "2", "--eval-windows", "2", "--sparsity", "0.6", "--seed", "3",
    "--baselines", "uniform,owl",
  ];

  it("msp starts from OWL's allocation: its first individual scores as the OWL row", () => {
    const dir = join(root, "msp");
    const summary = jsonOf(evosparse("search", "--method", "msp", "--start", "owl", ...small, "--population", "3", "--generations", "1", "--out", dir, "--json"));
    expect(summary.settings.start).toBe("owl");
    const first = readFileSync(join(dir, "history.csv"), "utf8").trim().split("\n")[1]!.split(",");
    const owl = summary.final.results.find((r: { method: string }) => r.method === "owl");
    expect(Number(first[4])).toBe(owl.validation);
  });

  it("refuses a method that cannot start from an allocation, and a start that is not a direct method", () => {
    for (const [extra, message] of [
      [["--method", "dsa", "--start", "owl"], /method dsa does not start from an allocation/],
      [["--method", "msp", "--start", "atp"], /--start atp: a start is a direct method/],
    ] as const) {
      const r = evosparse("search", ...extra, ...small, "--out", join(root, "refused"));
      expect(r.code).toBe(2);
      expect(errorLines(r.stderr)).toEqual([expect.stringMatching(message)]);
    }
  });
});
