/**
 * The commands as functions (`import { evaluate, prune, stats } from "evosparse"`): the
 * command line's settings and defaults, its typed results and its refusals.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { evaluate, prune, stats, UsageError } from "../src/api/index.ts";
import { evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";

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
    const report = await prune({ ...small, sparsity: 0.5, allocation: "owl", eval: "brown:test", evalWindows: 2, out: join(root, "pruned") });
    const cli = jsonOf(evosparse("prune", "--nsamples", "2", "--seqlen", "128", "--sparsity", "0.5", "--allocation", "owl", "--eval", "brown:test", "--eval-windows", "2", "--out", join(root, "cli"), "--json"));
    expect(report.evaluation!.pruned).toBe(cli.evaluation.pruned);
    expect(report.linears).toEqual(cli.linears);
    expect(existsSync(join(root, "pruned", "model.safetensors"))).toBe(true);
    await expect(prune({ ...small, allocation: "owl", out: join(root, "refused") })).rejects.toBeInstanceOf(UsageError);
    await expect(prune({ ...small, allocation: "owl", out: join(root, "refused") })).rejects.toThrow(/--sparsity is required/);
  });

  it("stats gives the rows of the stats command and writes its CSV when asked", async () => {
    const out = join(root, "stats.csv");
    const rows = await stats({ ...small, out });
    const cli = jsonOf(evosparse("stats", "--nsamples", "2", "--seqlen", "128", "--json"));
    expect(rows).toEqual(cli);
    expect(readFileSync(out, "utf8").split("\n")[0]).toMatch(/^block,linear,params,/);
  });
});
