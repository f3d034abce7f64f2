/**
 * Messages say what is wrong: a window limit too large to hold exactly, an empty output
 * name, a token budget below one evaluation, and a per-linear allocation given to a
 * structured prune (averaged per block, and said so). The commands run for real.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { oneLine, runCli, scratchFolder } from "./helpers/cli.ts";

const { root } = scratchFolder("evosparse-messages-");
const run = (...args: string[]) => runCli(args, { cwd: root });

describe("messages", () => {
  it("a whole number too large to hold exactly is refused as too large", () => {
    const r = run("eval", "--max-windows", "99999999999999999999", "--backend", "wasm");
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/--(max|eval)-windows 99999999999999999999 is too large: the largest whole number it takes is 9007199254740991/);
  });

  it("an empty --out is refused by name in prune, stats and search, and nothing is written", () => {
    for (const args of [["prune", "--sparsity", "0.5"], ["stats"], ["search", "--sparsity", "0.7"]]) {
      const r = run(...args, "--out", "", "--backend", "wasm");
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(/^evosparse: --out needs a (folder|file) name; it was given an empty one$/);
    }
    expect(existsSync(join(root, "results"))).toBe(false);
  });

  it("--budget-tokens below one evaluation says so, with no NaN and no 'undefined'", () => {
    const r = run("search", "--budget-tokens", "10", "--sparsity", "0.7", "--population", "3", "--generations", "1", "--fitness-windows", "1", "--nsamples", "1", "--eval-windows", "1", "--out", join(root, "budget"), "--backend", "wasm");
    expect(r.code).toBe(2);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/--budget-tokens 10 is less than one fitness evaluation costs.*costs 255 tokens/);
    expect(line).not.toMatch(/undefined|NaN/);
  }, 60_000);

  it("a structured prune given a per-linear allocation says that each block takes its mean", () => {
    const dense = join(root, "dense");
    const first = run("prune", "--sparsity", "0.5", "--nsamples", "1", "--out", dense, "--backend", "wasm");
    expect(first.code, first.stderr).toBe(0);
    const rows = readFileSync(join(dense, "allocation.csv"), "utf8").trim().split("\n");
    // Block 0: q (16384 weights) 0.1 above, k (8192) 0.2 below: the mean stays on target.
    const edited = rows.map((row) => (row.startsWith("0,q,") ? row.replace(",0.5,", ",0.6,") : row.startsWith("0,k,") ? row.replace(",0.5,", ",0.3,") : row));
    const file = join(root, "per-linear.csv");
    writeFileSync(file, edited.join("\n") + "\n");
    const r = run("prune", "--structured", "l2", "--sparsity", "0.5", "--allocation", file, "--nsamples", "1", "--out", join(root, "structured"), "--backend", "wasm");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/per-linear\.csv: the linears of block 0 have different sparsities; structured pruning removes whole groups at one ratio per block, so each block takes the weighted mean of its linears \(block 0: 0\.5000\)/);
  }, 120_000);
});
