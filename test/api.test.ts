/**
 * The commands as functions (`import { evaluate, prune, stats } from "evosparse"`): the
 * command line's settings and defaults, its typed results and its refusals.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { evaluate, prune, pruneStructured, search, stats, UsageError } from "../src/api/index.ts";
import { evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";
import { oneLine } from "./helpers/cli.ts";
import { writeRandomLlama } from "../bench/scale-models.ts";

const root = tempRoot("api");
const small = { nsamples: 2, seqlen: 128, backend: "wasm" as const };

describe("the API", () => {
  it("evaluate gives the eval command's perplexity", async () => {
    const report = await evaluate({ seqlen: 128, evalWindows: 2, backend: "wasm" });
    const cli = jsonOf(evosparse("eval", "--seqlen", "128", "--eval-windows", "2", "--json"));
    expect(report.ppl).toBe(cli.ppl);
    expect(report.windows).toBe(2);
  });

  it("prune gives the prune command's report, and a refusal rejects with its UsageError", async () => {
    const steps: string[] = [];
    const report = await prune({
      ...small, sparsity: 0.5, allocation: "owl", eval: "brown:test", evalWindows: 2, out: join(root, "pruned"),
      onProgress: (step, done, total) => void steps.push(`${step} ${done}/${total}`),
    });
    // OWL's passes over the dense model, every block pruned and written: each block counted
    // once, in order; the windows at the end.
    const counted = (step: string) => steps.filter((s) => s.startsWith(`${step} `));
    for (const pass of ["statistics", "scores"]) expect(counted(pass)).toEqual(Array.from({ length: 9 }, (_, i) => `${pass} ${i}/8`));
    expect(counted("allocation")).toEqual([]);
    expect(counted("prune")).toEqual(Array.from({ length: 9 }, (_, i) => `prune ${i}/8`));
    expect(counted("export")).toEqual(Array.from({ length: 9 }, (_, i) => `export ${i}/8`));
    for (const step of ["eval pruned", "eval dense"]) {
      expect(counted(step)[0]).toBe(`${step} 0/2`);
      expect(counted(step).at(-1)).toBe(`${step} 2/2`);
    }
    const cli = jsonOf(evosparse("prune", "--nsamples", "2", "--seqlen", "128", "--sparsity", "0.5", "--allocation", "owl", "--eval", "brown:test", "--eval-windows", "2", "--out", join(root, "cli"), "--json"));
    expect(report.evaluation!.pruned).toBe(cli.evaluation.pruned);
    expect(report.linears).toEqual(cli.linears);
    expect(existsSync(join(root, "pruned", "model.safetensors"))).toBe(true);
    await expect(prune({ ...small, allocation: "owl", out: join(root, "refused") })).rejects.toBeInstanceOf(UsageError);
    await expect(prune({ ...small, allocation: "owl", out: join(root, "refused") })).rejects.toThrow(/--sparsity is required/);
  });

  it("prune's export counts the blocks as written, in the file's name order too (block 10 before block 2)", async () => {
    const model = writeRandomLlama(join(root, "twelve"), { name: "twelve", hidden: 64, intermediate: 128, layers: 12, heads: 2, kvHeads: 2, vocab: 32000, context: 64 });
    const steps: string[] = [];
    await prune({ model, seqlen: 32, nsamples: 1, backend: "wasm", metric: "magnitude", sparsity: 0.5, out: join(root, "twelve-pruned"), onProgress: (step, done, total) => void steps.push(`${step} ${done}/${total}`) });
    expect(steps.filter((s) => s.startsWith("export "))).toEqual(Array.from({ length: 13 }, (_, i) => `export ${i}/12`));
    expect(steps.filter((s) => s.startsWith("prune "))).toEqual(Array.from({ length: 13 }, (_, i) => `prune ${i}/12`));
  });

  it("pruneStructured follows its long steps: a grid's candidates, windows scored, blocks written, each counted from 0 in order", async () => {
    const space = join(root, "atp-two.json");
    writeFileSync(space, JSON.stringify({ step: 0.05, maxPoints: 2 }));
    const steps: string[] = [];
    const lines: string[] = [];
    const report = await pruneStructured({
      ...small, importance: "l2", sparsity: 0.3, allocation: "atp", space, eval: "brown:test", evalWindows: 2, out: join(root, "structured"),
      log: (line) => void lines.push(line),
      onProgress: (step, done, total) => void steps.push(`${step} ${done}/${total}`),
    });
    expect(report.chosen).toMatch(/^beta=/);
    const counted = (step: string) => steps.filter((s) => s.startsWith(`${step} `));
    // Each candidate of the grid once, as its validation perplexity is logged.
    const candidates = lines.filter((l) => /^ {2}candidate \d+\/\d+: validation perplexity/.test(l)).length;
    expect(candidates).toBeGreaterThanOrEqual(2);
    expect(counted("candidates")).toEqual(Array.from({ length: candidates + 1 }, (_, i) => `candidates ${i}/${candidates}`));
    // l2 reads the weights only: no gradient pass to follow, no fusion.
    expect(counted("gradients")).toEqual([]);
    expect(counted("fusion")).toEqual([]);
    for (const step of ["eval pruned", "eval dense"]) {
      expect(counted(step)[0]).toBe(`${step} 0/2`);
      expect(counted(step).at(-1)).toBe(`${step} 2/2`);
    }
    expect(counted("export")).toEqual(Array.from({ length: 9 }, (_, i) => `export ${i}/8`));
    // The steps in the pipeline's order, each once (passes over the dense model, if ATP needs any, first).
    const order = steps.map((s) => s.slice(0, s.lastIndexOf(" "))).filter((s, i, all) => s !== all[i - 1] && !["statistics", "scores", "spectra"].includes(s));
    expect(order).toEqual(["candidates", "eval pruned", "eval dense", "export"]);
  });

  it("prune with AlphaPruning counts its spectra block by block before the prune", async () => {
    const steps: string[] = [];
    await prune({ ...small, metric: "magnitude", sparsity: 0.5, allocation: "alphapruning", out: join(root, "alpha"), onProgress: (step, done, total) => void steps.push(`${step} ${done}/${total}`) });
    expect(steps.filter((s) => s.startsWith("spectra "))).toEqual(Array.from({ length: 9 }, (_, i) => `spectra ${i}/8`));
    expect(steps.findLastIndex((s) => s.startsWith("spectra "))).toBeLessThan(steps.indexOf("prune 0/8"));
  });

  it("settings are checked as the command line checks its flags: the same refusals, and an unknown name is one", async () => {
    const refusal = async (call: Promise<unknown>): Promise<string> => {
      const e = await call.then(() => undefined, (e: unknown) => e);
      expect(e).toBeInstanceOf(UsageError);
      return (e as Error).message;
    };
    const out = join(root, "never");
    for (const [flag, value, setting] of [["population", "0", { population: 0 }], ["fitness-windows", "2.5", { fitnessWindows: 2.5 }], ["mode", "weird", { mode: "weird" }]] as const) {
      const cli = evosparse("search", "--method", "uniform", "--sparsity", "0.5", `--${flag}`, value, "--out", out);
      expect(cli.code).toBe(2);
      const message = await refusal(search({ method: "uniform", sparsity: 0.5, out, ...(setting as object) }));
      expect(message).toMatch(new RegExp(`^--${flag} `));
      expect(oneLine(cli.stderr)).toContain(message);
    }
    expect(await refusal(search({ method: "uniform", sparsity: 0.5, out, generation: 3 } as never))).toMatch(/unknown setting "generation" \(did you mean generations\?\)/);
    expect(await refusal(prune({ sparsity: 0.5, out, nsample: 2 } as never))).toMatch(/unknown setting "nsample" \(did you mean nsamples\?\)/);
    expect(await refusal(prune({ sparsity: 1.5, out }))).toMatch(/--sparsity 1.5 is not a number in \[0, 1\)/);
    expect(existsSync(out)).toBe(false);
  });

  it("search follows its set-up: the passes over the dense model, then each baseline scored with its blocks pruned, then the warm start", async () => {
    const events: string[] = [];
    await search({
      ...small, method: "evopress", sparsity: 0.6, generations: 1, fitnessWindows: 1, evalWindows: 1, baselines: "uniform,owl", out: join(root, "search-setup"),
      onSetup: (done, total, what) => void events.push(`setup ${done}/${total} ${what}`),
      onSetupStep: (step, done, total) => void events.push(`${step} ${done}/${total}`),
      onGeneration: () => void events.push("generation"),
    });
    const setup = events.filter((e) => e.startsWith("setup "));
    // The baselines in their order, then the warm start (evopress starts from the best).
    expect(setup).toEqual(["setup 0/3 uniform", "setup 1/3 owl", "setup 2/3 start", "setup 3/3 done"]);
    // OWL's passes come first, each counted from 0 and run once (the weights' ranks, which
    // the candidates are masked from, are kept by the sweep that scores them); the blocks
    // pruned follow the baselines' scoring only: the search's own candidates are not set-up.
    for (const pass of ["statistics", "scores"]) expect(events.filter((e) => e.startsWith(`${pass} `))).toEqual(Array.from({ length: 9 }, (_, i) => `${pass} ${i}/8`));
    expect(events.findLastIndex((e) => e.startsWith("scores "))).toBeLessThan(events.indexOf("setup 0/3 uniform"));
    const done = events.indexOf("setup 3/3 done");
    expect(events.findLastIndex((e) => e.startsWith("blocks "))).toBeLessThan(done);
    expect(events.indexOf("generation")).toBeGreaterThan(done);
    // Each baseline's candidate is pruned block by block (8 each, uniform's and OWL's).
    const between = (from: string, to: string) => events.slice(events.indexOf(from), events.indexOf(to)).filter((e) => e.startsWith("blocks "));
    expect(between("setup 0/3 uniform", "setup 1/3 owl")).toEqual(Array.from({ length: 8 }, (_, i) => `blocks ${i + 1}/8`));
    expect(between("setup 1/3 owl", "setup 2/3 start")).toEqual(Array.from({ length: 8 }, (_, i) => `blocks ${i + 1}/8`));
  });

  it("search follows its final re-pruning: each measurement, and inside it the blocks re-pruned, then the test windows", async () => {
    const finals: string[] = [];
    const steps: string[] = [];
    const summary = await search({
      ...small, method: "dsa", sparsity: 0.6, population: 4, generations: 1, fitnessWindows: 1, evalWindows: 2, baselines: "uniform", out: join(root, "search"),
      onFinal: (done, total, what) => void finals.push(`${done}/${total} ${what}`),
      onFinalStep: (step, done, total) => void steps.push(`${step} ${done}/${total}`),
    });
    expect(summary.final.results.map((r) => r.method)).toEqual(["dsa", "uniform"]);
    expect(finals).toEqual(["0/3 dense", "1/3 dsa", "1/3 dsa", "2/3 done", "2/3 uniform", "3/3 done"]);
    // Split where each measurement ends (all its windows scored): the dense model is only
    // scored; each allocation is re-pruned block by block (8), then scored (its windows may
    // count part-way through the pass as its blocks run).
    const blocks = Array.from({ length: 8 }, (_, i) => `blocks ${i + 1}/8`);
    const measurements = steps.join(",").split("windows 2/2").map((part) => part.split(",").filter((s) => s !== ""));
    expect(measurements).toHaveLength(4);
    expect(measurements[3]).toEqual([]);
    expect(measurements[0]!.every((s) => s === "windows 1/2")).toBe(true);
    for (const m of measurements.slice(1, 3)) {
      expect(m.slice(0, 8)).toEqual(blocks);
      expect(m.slice(8).every((s) => s === "windows 1/2")).toBe(true);
    }
  });

  it("stats gives the rows of the stats command and writes its CSV when asked", async () => {
    const out = join(root, "stats.csv");
    const rows = await stats({ ...small, out });
    const cli = jsonOf(evosparse("stats", "--nsamples", "2", "--seqlen", "128", "--json"));
    expect(rows).toEqual(cli);
    expect(readFileSync(out, "utf8").split("\n")[0]).toMatch(/^block,linear,params,/);
  });
});
