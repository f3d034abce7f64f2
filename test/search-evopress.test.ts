/**
 * `evosparse search --method evopress` on the embedded model: staged selection on stage
 * minibatches through the real host, a token budget never passed, the same history with 1
 * and 2 workers, and the reproduce command re-pruning the best to the reported test
 * perplexity, per linear (a space of EvoPress's levels) and per block (the default space).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, evosparse, historyOf, jsonOf, reproduceArgs, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-evopress");

/** history.csv as records (header names as keys). */
const historyRows = (dir: string): Record<string, string>[] => {
  const [header, ...lines] = readFileSync(join(dir, "history.csv"), "utf8").trim().split("\n");
  const names = header!.split(",");
  return lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [names[i]!, v])));
};

describe("evosparse search --method evopress", () => {
  const space = join(root, "evopress-small.json");
  writeFileSync(space, JSON.stringify({ levelSize: 0.05, maxLevels: 4, offspring: 4, stages: [{ survivors: 2, tokens: 200 }, { survivors: 1, tokens: 400 }] }));
  const small = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--sparsity", "0.6", "--seed", "5", "--space", space,
  ];

  it("stays within --budget-tokens, agrees across worker counts, and its best re-prunes to the reported perplexity", () => {
    const one = join(root, "one");
    const args = ["search", "--method", "evopress", "--fitness", "kl", ...small, "--generations", "50", "--budget-tokens", "6000"];
    const a = jsonOf(evosparse(...args, "--out", one, "--json"));
    const b = jsonOf(evosparse(...args, "--out", join(root, "two"), "--workers", "2", "--json"));
    expect(historyOf(join(root, "two"))).toEqual(historyOf(one));
    expect(b.best).toEqual(a.best);
    expect(a.stoppedBy).toBe("budget");
    const rows = historyRows(one);
    const spent = rows.reduce((n, r) => n + Number(r.tokens), 0);
    expect(spent).toBeLessThanOrEqual(6000);
    expect(spent).toBeGreaterThan(6000 - 2 * 400);
    // Stage 0 children on few tokens, the survivors (and the parent) on more.
    const stage0 = rows.filter((r) => r.stage === "0" && r.cached === "false").map((r) => Number(r.tokens));
    const stage1 = rows.filter((r) => r.stage === "1" && r.cached === "false").map((r) => Number(r.tokens));
    expect(Math.min(...stage0)).toBeGreaterThanOrEqual(200);
    expect(Math.min(...stage1)).toBeGreaterThanOrEqual(400);
    const report = jsonOf(evosparse(...reproduceArgs(a.final.reproduce, join(root, "reproduced")), "--json"));
    expect(report.evaluation.pruned).toBe(a.final.results[0].test);
    expect(report.requestedSparsity).toBeCloseTo(0.6, 9);
  });

  it("with its default space searches one level a block and its best re-prunes to the reported perplexity", () => {
    const dir = join(root, "blocks");
    const args = ["search", "--method", "evopress", "--fitness", "kl", ...small.filter((_, i) => i < small.indexOf("--space")), "--budget-tokens", "6000"];
    const run = jsonOf(evosparse(...args, "--out", dir, "--json"));
    const rows = readFileSync(join(dir, "best-allocation.csv"), "utf8").trim().split("\n").slice(1).map((l) => l.split(","));
    const blocks = new Map<string, Set<string>>();
    for (const row of rows) blocks.set(row[0]!, (blocks.get(row[0]!) ?? new Set()).add(row[3]!));
    // Every linear of a block at the block's sparsity, and the search moved some block off the target.
    expect([...blocks.values()].every((s) => s.size === 1)).toBe(true);
    expect(new Set([...blocks.values()].map((s) => [...s][0])).size).toBeGreaterThan(1);
    expect(historyRows(dir).some((r) => /\bb\d+[+-]\d/.test(Object.values(r).join(" ")))).toBe(true);
    const report = jsonOf(evosparse(...reproduceArgs(run.final.reproduce, join(root, "blocks-reproduced")), "--json"));
    expect(report.evaluation.pruned).toBe(run.final.results[0].test);
  });
});
