/**
 * A user's fitness measure (`--fitness FILE`): it sees each fitness window's loss and
 * returns the fitness. On one window the worst window's perplexity is the perplexity, so
 * the search's history is exactly a ppl search's; on two it is at least the pooled one,
 * and worker threads score it as this process does.
 */
import { resolve, join } from "node:path";
import { describe, expect, it } from "vitest";
import { errorLines, evosparse, historyOf, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("fitness-measure");
const measure = resolve(import.meta.dirname, "fixtures", "fitness", "worst-window.mjs");
const search = (windows: number, ...more: string[]) => [
  "search", "--method", "msp", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "128", "--fitness-windows", String(windows), "--eval-windows", "2",
  "--population", "3", "--generations", "2", "--final-mode", "dense", "--json", ...more,
];

describe("--fitness FILE", () => {
  it("on one window the worst window's perplexity is the perplexity: the same history as --fitness ppl", () => {
    const mine = jsonOf(evosparse(...search(1, "--fitness", measure, "--out", join(root, "mine"))));
    const ppl = jsonOf(evosparse(...search(1, "--out", join(root, "ppl"))));
    expect(mine.settings.fitness).toBe(measure);
    const fitnessOf = (dir: string) => historyOf(dir).map((line) => line.split(",")[4]);
    expect(fitnessOf(join(root, "mine")).map(Number)).toEqual(fitnessOf(join(root, "ppl")).map(Number));
    expect(mine.best.fitness).toBe(ppl.best.fitness);
  });

  it("on two windows it scores at least the pooled perplexity, the same with worker threads", () => {
    const one = jsonOf(evosparse(...search(2, "--fitness", measure, "--out", join(root, "two-1"))));
    const two = jsonOf(evosparse(...search(2, "--fitness", measure, "--workers", "2", "--out", join(root, "two-2"))));
    const ppl = jsonOf(evosparse(...search(2, "--out", join(root, "two-ppl"))));
    expect(historyOf(join(root, "two-2"))).toEqual(historyOf(join(root, "two-1")));
    expect(two.best).toEqual(one.best);
    // Uniform is scored by both runs: its worst window is above the mean of the two.
    const uniform = (s: { final: { results: { method: string; validation: number }[] } }) => s.final.results.find((r) => r.method === "uniform")!.validation;
    expect(uniform(one)).toBeGreaterThan(uniform(ppl));
  });

  it("a module without `fitness` is refused before the run, naming its file", () => {
    const r = evosparse(...search(1, "--fitness", resolve(import.meta.dirname, "fixtures", "methods", "no-plugin.mjs"), "--out", join(root, "bad")));
    expect(r.code).toBe(1);
    expect(errorLines(r.stderr)).toEqual([expect.stringMatching(/no-plugin\.mjs: does not export `fitness`/)]);
  });
});
