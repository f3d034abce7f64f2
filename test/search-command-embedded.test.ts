/**
 * test/search-command.test.ts on the embedded default model and the Brown texts, so a
 * clone without ../shared/assets still checks `evosparse search` end to end: worker-count
 * independence, resume after SIGKILL, the reproduce command, every method.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, evosparse, evosparseWithEnv, historyOf, jsonOf, reproduceArgs, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-embedded");

describe("evosparse search on the embedded model", () => {
  const small = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "1", "--eval-windows", "2", "--sparsity", "0.6", "--seed", "3",
    "--baselines", "uniform,owl",
  ];

  it("DSA: the same history and best with 1 and 2 workers; the printed reproduce command re-prunes to the reported test perplexity", () => {
    const one = join(root, "one");
    const two = join(root, "two");
    const a = evosparse("search", "--method", "dsa", ...small, "--population", "4", "--generations", "3", "--out", one, "--json");
    expect(a.stderr).toBe("");
    const summary = jsonOf(a);
    const b = jsonOf(evosparse("search", "--method", "dsa", ...small, "--population", "4", "--generations", "3", "--out", two, "--workers", "2", "--json"));
    expect(historyOf(two)).toEqual(historyOf(one));
    expect(readFileSync(join(two, "best-allocation.csv"), "utf8")).toBe(readFileSync(join(one, "best-allocation.csv"), "utf8"));
    expect(b.best).toEqual(summary.best);
    expect(b.final.results).toEqual(summary.final.results);
    expect(summary.final.results.map((r: { method: string }) => r.method)).toEqual(["dsa", "uniform", "owl"]);
    expect(historyOf(one).length).toBe(1 + 4 * 3);
    for (const file of ["best-allocation.csv", "history.csv", "summary.json", "fitness.svg", "allocation.svg", "settings.json", "engine-state.json"]) {
      expect(existsSync(join(one, file)), file).toBe(true);
    }
    expect(readFileSync(join(one, "fitness.svg"), "utf8")).toMatch(/^<svg/);
    expect(readFileSync(join(one, "allocation.svg"), "utf8")).toMatch(/^<svg/);

    // The reproduce command as printed, run from the repository with a fresh output folder.
    expect(summary.final.reproduce).toContain(`--allocation ${join(one, "best-allocation.csv")}`);
    const report = jsonOf(evosparse(...reproduceArgs(summary.final.reproduce, join(root, "reproduced")), "--json"));
    expect(report.evaluation.pruned).toBe(summary.final.results[0].test);
    expect(report.evaluation.dense).toBe(summary.final.dense);
    expect(report.requestedSparsity).toBeCloseTo(0.6, 9);

    // prune --from RUN: the same number with no protocol flags at all; the allocation file's
    // own sparsity is the target.
    const fromRun = jsonOf(evosparse("prune", "--from", one, "--out", join(root, "from-run"), "--json"));
    expect(fromRun.evaluation.pruned).toBe(summary.final.results[0].test);
    expect(fromRun.evaluation.windows).toBe(summary.final.windows);
    expect(fromRun.achievedSparsity).toBe(summary.final.results[0].achieved);
    // The table says what each column measured.
    const table = evosparse("search", "--resume", one);
    expect(table.stdout).toMatch(/\| allocation \| fitness ppl \(dense, 1 windows\) \| test ppl \(sequential, 2 windows\) \| achieved sparsity \|/);
  });

  it("a search killed by SIGKILL after a generation resumes with --resume and ends exactly as an uninterrupted one", () => {
    const generations = 6;
    const args = ["search", "--method", "msp", ...small, "--population", "3", "--generations", String(generations), "--final-mode", "dense"];
    const whole = join(root, "whole");
    const uninterrupted = jsonOf(evosparse(...args, "--out", whole, "--json"));
    const killed = join(root, "killed");
    // Killed right after generation 2 is saved, where a crash would leave the folder.
    const crash = evosparseWithEnv({ EVOSPARSE_CRASH_AFTER: "generation:2" }, ...args, "--out", killed);
    expect(crash.signal).toBe("SIGKILL");
    expect(JSON.parse(readFileSync(join(killed, "engine-state.json"), "utf8")).generation).toBe(2);
    expect(existsSync(join(killed, "summary.json"))).toBe(false);
    const resumed = jsonOf(evosparse("search", "--resume", killed, "--json"));
    expect(historyOf(killed)).toEqual(historyOf(whole));
    expect(readFileSync(join(killed, "best-allocation.csv"), "utf8")).toBe(readFileSync(join(whole, "best-allocation.csv"), "utf8"));
    expect(resumed.best).toEqual(uninterrupted.best);
    expect(resumed.final.results).toEqual(uninterrupted.final.results);
  });

  // uniform and OWL are re-pruned in every search's final stage (and DSA and MSP run above);
  // a grid method, another direct one and N:M run here, with the final stage in dense mode
  // to keep the test short.
  it("every other method runs through the same command and reports a valid allocation", () => {
    for (const [method, extra] of [
      ["atp", []],
      ["mrp", []],
      ["msp-nm", ["--pattern", "2:4"]],
    ] as const) {
      const out = join(root, `m-${method}`);
      const r = evosparse("search", "--method", method, ...small, ...extra, "--population", "2", "--generations", "2", "--final-mode", "dense", "--out", out, "--json");
      expect(r.stderr, method).toBe("");
      const summary = jsonOf(r);
      const target = method === "msp-nm" ? 0.5 : 0.6;
      expect(summary.best.sparsities).toHaveLength(8);
      const mean = summary.best.sparsities.reduce((a: number, b: number) => a + b, 0) / summary.best.sparsities.length;
      expect(Math.abs(mean - target), method).toBeLessThan(1e-6);
      expect(summary.final.mode).toBe("dense");
      expect(summary.final.results.map((x: { method: string }) => x.method)).toEqual([method, "uniform", "owl"]);
      expect(summary.final.results[0].test, method).toBeGreaterThan(summary.final.dense);
    }
  });

  it("a broken search space is one clear error naming the file and the field, exit 1", () => {
    const space = join(root, "broken.json");
    writeFileSync(space, JSON.stringify({ pre: ["abs", "frobnicate"], preCount: [0, 2], reductions: ["mean"], transform: ["identity"], transformCount: [1, 1], lambda: [0.02, 0.2] }));
    const r = evosparse("search", "--method", "dsa", "--space", space, ...small, "--out", join(root, "never"));
    expect(r.code).toBe(1);
    const error = r.stderr.trim().split("\n").at(-1)!;
    expect(error).toContain(space);
    expect(error).toContain("frobnicate");
    expect(existsSync(join(root, "never", "summary.json"))).toBe(false);
  });

  it("a damaged search state is one clear error naming the file, exit 1", () => {
    const dir = join(root, "damaged");
    expect(evosparse("search", "--method", "dsa", ...small, "--population", "2", "--generations", "1", "--final-mode", "dense", "--out", dir).code).toBe(0);
    const state = join(dir, "engine-state.json");
    writeFileSync(state, "{ not json");
    // A run stopped before its summary (a finished run resumes to a no-op without reading its state).
    rmSync(join(dir, "summary.json"));
    const r = evosparse("search", "--resume", dir);
    expect(r.code).toBe(1);
    const error = r.stderr.trim().split("\n").at(-1)!;
    expect(error).toContain(state);
    expect(error).toContain("not valid JSON");
  });
});
