import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { asset, haveAssets } from "./helpers/assets.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env: { ...process.env, CI: "true" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const root = mkdtempSync(join(tmpdir(), "evosparse-search-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** history.csv without its timing column: what must not depend on workers or interruptions. */
const historyOf = (dir: string): string[] =>
  readFileSync(join(dir, "history.csv"), "utf8")
    .trim()
    .split("\n")
    .map((line) => line.replace(/,[^,]*$/, ""));

describe.skipIf(!haveAssets)("evosparse search on stories260K", () => {
  const model = haveAssets ? asset("models", "stories260K", "stories260K.bin") : "";
  const text = haveAssets ? asset("data", "tinystories", "validation.prefix.txt") : "";
  const test = haveAssets ? asset("data", "tinystories", "valid.head46.txt") : "";
  const small = [
    "--model", model, "--calib", text, "--fitness-data", text, "--eval", test, "--nsamples", "8", "--seqlen", "128",
    "--fitness-windows", "2", "--eval-windows", "4", "--sparsity", "0.6", "--seed", "3",
    "--baselines", "uniform,owl",
  ];

  it("DSA: the same history and best with 1 and 2 workers; the best allocation re-pruned by `prune` gives the reported perplexity", () => {
    const one = join(root, "one");
    const two = join(root, "two");
    const a = run("search", "--method", "dsa", ...small, "--population", "6", "--generations", "3", "--out", one, "--json");
    expect(a.stderr).toBe("");
    expect(a.code).toBe(0);
    const b = run("search", "--method", "dsa", ...small, "--population", "6", "--generations", "3", "--out", two, "--workers", "2", "--json");
    expect(b.code).toBe(0);
    expect(historyOf(two)).toEqual(historyOf(one));
    expect(readFileSync(join(two, "best-allocation.csv"), "utf8")).toBe(readFileSync(join(one, "best-allocation.csv"), "utf8"));
    const summary = JSON.parse(a.stdout);
    expect(summary.final.results.map((r: { method: string }) => r.method)).toEqual(["dsa", "uniform", "owl"]);
    expect(historyOf(one).length).toBe(1 + 18);
    for (const file of ["best-allocation.csv", "history.csv", "summary.json", "fitness.svg", "allocation.svg"]) expect(existsSync(join(one, file))).toBe(true);
    expect(readFileSync(join(one, "fitness.svg"), "utf8")).toMatch(/^<svg/);

    const pruned = join(root, "pruned");
    const p = run(
      "prune", "--model", model, "--calib", text, "--nsamples", "8", "--seqlen", "128", "--sparsity", "0.6",
      "--allocation", join(one, "best-allocation.csv"), "--eval", test, "--eval-windows", "4", "--out", pruned, "--json",
    );
    expect(p.code).toBe(0);
    const report = JSON.parse(p.stdout);
    expect(report.evaluation.pruned).toBe(summary.final.results[0].test);
    expect(summary.final.reproduce).toContain(`--allocation ${join(one, "best-allocation.csv")}`);
    expect(report.requestedSparsity).toBeCloseTo(0.6, 9);
  });

  it("a killed search resumes from its last generation and ends exactly as an uninterrupted one", async () => {
    const whole = join(root, "whole");
    const args = ["search", "--method", "msp", ...small, "--population", "5", "--generations", "4"];
    expect(run(...args, "--out", whole).code).toBe(0);
    const killed = join(root, "killed");
    const child = spawn(process.execPath, [bin, ...args, "--out", killed], { env: { ...process.env, CI: "true" } });
    await new Promise<void>((done) => {
      const poll = setInterval(() => {
        const state = join(killed, "engine-state.json");
        if (existsSync(state) && JSON.parse(readFileSync(state, "utf8")).generation >= 2) {
          child.kill("SIGKILL");
          clearInterval(poll);
        }
      }, 20);
      child.on("exit", () => {
        clearInterval(poll);
        done();
      });
    });
    expect(existsSync(join(killed, "summary.json"))).toBe(false);
    const resumed = run("search", "--resume", killed);
    expect(resumed.code).toBe(0);
    expect(historyOf(killed)).toEqual(historyOf(whole));
    expect(readFileSync(join(killed, "best-allocation.csv"), "utf8")).toBe(readFileSync(join(whole, "best-allocation.csv"), "utf8"));
  });

  it("every method runs through the same command and reports a valid allocation", () => {
    for (const [method, extra] of [
      ["uniform", []],
      ["owl", []],
      ["atp", []],
      ["mrp", []],
      ["msp-nm", ["--pattern", "2:4"]],
    ] as const) {
      const out = join(root, `m-${method}`);
      const r = run("search", "--method", method, ...small, ...extra, "--population", "4", "--generations", "2", "--out", out, "--json");
      expect(r.stderr, method).toBe("");
      expect(r.code).toBe(0);
      const summary = JSON.parse(r.stdout);
      const target = method === "msp-nm" ? 0.5 : 0.6;
      const mean = summary.best.sparsities.reduce((a: number, b: number) => a + b, 0) / summary.best.sparsities.length;
      expect(Math.abs(mean - target)).toBeLessThan(1e-6);
      expect(summary.final.results[0].test).toBeGreaterThan(summary.final.dense);
    }
  });
  // A broken space and a damaged state are checked on the embedded model (search-command-embedded.test.ts).
});
