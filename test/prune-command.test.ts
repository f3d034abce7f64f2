import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { asset, haveAssets } from "./helpers/assets.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env: { ...process.env, CI: "true" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const root = mkdtempSync(join(tmpdir(), "evosparse-prune-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.skipIf(!haveAssets)("evosparse prune on stories260K (llama2.c input)", () => {
  const model = haveAssets ? asset("models", "stories260K", "stories260K.bin") : "";
  const text = haveAssets ? asset("data", "tinystories", "validation.prefix.txt") : "";
  const evalText = haveAssets ? asset("data", "tinystories", "valid.head46.txt") : "";
  const common = ["--model", model, "--calib", text, "--nsamples", "8", "--seqlen", "128", "--valid", text, "--valid-windows", "2", "--eval", evalText];

  it("writes a LLaMA Hugging Face folder whose reloaded perplexity is the reported one, with exact per-linear sparsity", () => {
    const out = join(root, "atp");
    const r = run("prune", ...common, "--metric", "wanda", "--sparsity", "0.6", "--allocation", "atp", "--out", out, "--json");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(readdirSync(out).sort()).toEqual([".evosparse-output.json", "allocation.csv", "config.json", "model.safetensors", "report.json", "tokenizer.json"]);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.model_type).toBe("llama");
    expect(report.trials.length).toBeGreaterThan(2);
    expect(report.trials.map((t: { label: string }) => t.label)).toContain(report.chosen);
    for (const l of report.linears) expect(l.achieved).toBe(l.expected);
    expect(Math.abs(report.requestedSparsity - 0.6)).toBeLessThan(1e-9);
    expect(report.evaluation.pruned).toBeGreaterThan(report.evaluation.dense);
    for (const stage of ["forward", "statistics", "scoring", "masking", "evaluation"]) expect(report.timings[stage]).toBeGreaterThan(0);
    const back = run("eval", "--model", out, "--data", evalText, "--seqlen", "128", "--json");
    expect(back.code).toBe(0);
    expect(JSON.parse(back.stdout).ppl).toBe(report.evaluation.pruned);
    const dense = run("eval", "--model", model, "--data", evalText, "--seqlen", "128", "--json");
    expect(JSON.parse(dense.stdout).ppl).toBe(report.evaluation.dense);

    // The allocation file it wrote, applied again, gives the same model.
    const again = join(root, "again");
    const r2 = run("prune", ...common, "--metric", "wanda", "--sparsity", "0.6", "--allocation", join(out, "allocation.csv"), "--out", again, "--json");
    expect(r2.code).toBe(0);
    expect(JSON.parse(r2.stdout).evaluation.pruned).toBe(report.evaluation.pruned);
    expect(readFileSync(join(again, "model.safetensors")).equals(readFileSync(join(out, "model.safetensors")))).toBe(true);
  });

  it("prunes 2:4 with SparseGPT, every group of four inputs holding two zeros", () => {
    const out = join(root, "nm");
    const r = run("prune", ...common, "--metric", "sparsegpt", "--pattern", "2:4", "--allocation", "uniform", "--mode", "dense", "--out", out, "--json");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.pattern).toBe("2:4");
    for (const l of report.linears) expect(l.achieved).toBeGreaterThanOrEqual(0.5);
  });

  it("rejects a bad allocation file with one line naming it, and writes nothing", () => {
    const file = join(root, "bad.csv");
    writeFileSync(file, "block,linear,params,sparsity,n,m\n0,wq,4096,0.5,,\n");
    const out = join(root, "never");
    const r = run("prune", ...common, "--sparsity", "0.5", "--allocation", file, "--out", out);
    expect(r.code).toBe(1);
    const errors = r.stderr.trim().split("\n").filter((line) => line.startsWith("evosparse:"));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain(file);
    expect(existsSync(out)).toBe(false);
    const usage = run("prune", ...common, "--sparsity", "0.5", "--pattern", "5:4", "--out", out);
    expect(usage.code).toBe(2);
    const unknown = run("prune", ...common, "--sparsity", "0.5", "--allocation", "nonsense", "--out", out);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown method "nonsense"; built-in: .*owl/);
  });

  it("a run killed before it finishes leaves no folder under the output name", async () => {
    const out = join(root, "killed");
    const child = spawn(process.execPath, [bin, "prune", ...common, "--sparsity", "0.5", "--allocation", "uniform", "--out", out], { env: { ...process.env, CI: "true" } });
    await new Promise<void>((done) => {
      child.stderr.on("data", (chunk: Buffer) => {
        if (chunk.toString().includes("evaluating on")) child.kill("SIGKILL");
      });
      child.on("exit", () => done());
    });
    expect(existsSync(out)).toBe(false);
  });
});
