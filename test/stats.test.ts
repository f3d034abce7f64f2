import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { asset, haveAssets } from "./helpers/assets.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const root = mkdtempSync(join(tmpdir(), "evosparse-stats-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.skipIf(!haveAssets)("evosparse stats", () => {
  it("writes one row per block and linear with outlier shares and Fisher traces", () => {
    const out = join(root, "stats.csv");
    const r = spawnSync(
      process.execPath,
      [bin, "stats", "--model", asset("models", "stories260K"), "--calib", asset("data", "tinystories", "validation.prefix.txt"), "--nsamples", "4", "--seqlen", "64", "--backend", "wasm", "--out", out],
      { encoding: "utf8" },
    );
    expect(r.status).toBe(0);
    expect(existsSync(`${out}.tmp-${r.pid}`)).toBe(false);
    const [header, ...lines] = readFileSync(out, "utf8").trim().split("\n");
    expect(header).toBe("block,linear,params,outlier_share,block_outlier_share,block_non_outlier_ratio,fisher_trace");
    expect(lines).toHaveLength(5 * 7);
    const rows = lines.map((l) => l.split(","));
    const byBlock = new Map<string, Set<string>>();
    for (const [block, linear, params, d, blockD, nor, fisher] of rows) {
      expect(["wq", "wk", "wv", "wo", "w1", "w2", "w3"]).toContain(linear);
      expect(Number(params)).toBeGreaterThan(0);
      for (const v of [d, blockD, nor]) {
        expect(Number(v)).toBeGreaterThanOrEqual(0);
        expect(Number(v)).toBeLessThanOrEqual(1);
      }
      expect(Number(nor)).toBeCloseTo(1 - Number(blockD), 12);
      expect(Number(fisher)).toBeGreaterThan(0);
      byBlock.set(block!, (byBlock.get(block!) ?? new Set()).add(blockD!));
    }
    // One block-level share per block.
    for (const shares of byBlock.values()) expect(shares.size).toBe(1);
  });
});
