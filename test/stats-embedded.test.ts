/**
 * test/stats.test.ts on the embedded default model and its default calibration text, so a
 * clone without ../shared/assets still checks `evosparse stats`.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedLayout, embeddedModel, evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("stats-embedded");

const HEADER = "block,linear,params,outlier_share,block_outlier_share,block_non_outlier_ratio,fisher_trace";
const layout = embeddedLayout();
/** The prunable linears of a block, in the model's order (q, k, v, o, gate, up, down). */
const LINEARS = layout.filter((e) => e.block === 0).map((e) => e.linear);

describe("evosparse stats on the embedded model", () => {
  it("writes one row per block and linear with finite outlier shares and Fisher traces; --json gives the same numbers", () => {
    const out = join(root, "stats.csv");
    const args = ["stats", "--model", embeddedModel, "--calib", "brown:calibration", "--nsamples", "2", "--seqlen", "64"];
    const r = evosparse(...args, "--out", out);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(`${out}.tmp-${r.pid}`)).toBe(false);
    // Off a terminal, each pass over the model in plain lines, in order: its first and last count.
    const progress = r.stderr.split("\n").filter((l) => / \(blocks\): \d+\/8 /.test(l)).map((l) => l.slice(0, l.indexOf(" (")));
    const firstAndLast = (pass: string) => [progress.indexOf(pass), progress.lastIndexOf(pass)];
    const [statistics, scores, fisher] = ["statistics", "scores", "fisher"].map(firstAndLast);
    expect(statistics![0]).toBe(0);
    expect(statistics![1]).toBeLessThan(scores![0]!);
    expect(scores![1]).toBeLessThan(fisher![0]!);
    expect(fisher![1]).toBe(progress.length - 1);
    for (const pass of ["statistics", "scores", "fisher"]) {
      expect(r.stderr).toMatch(new RegExp(`^${pass} \\(blocks\\): 0/8 `, "m"));
      expect(r.stderr).toMatch(new RegExp(`^${pass} \\(blocks\\): 8/8 `, "m"));
    }
    const [header, ...lines] = readFileSync(out, "utf8").trim().split("\n");
    expect(header).toBe(HEADER);
    expect(LINEARS).toHaveLength(7);
    expect(lines).toHaveLength(layout.length);
    expect(lines.map((l) => l.split(",").slice(0, 3).join(","))).toEqual(layout.map((e) => `${e.block},${e.linear},${e.params}`));
    const rows = lines.map((l) => l.split(","));
    const byBlock = new Map<string, Set<string>>();
    const linearsOf = new Map<string, string[]>();
    for (const row of rows) {
      expect(row).toHaveLength(7);
      const [block, linear, params, d, blockD, nor, fisher] = row;
      expect(LINEARS).toContain(linear);
      expect(Number(params)).toBeGreaterThan(0);
      for (const v of [d, blockD, nor, fisher]) expect(Number.isFinite(Number(v))).toBe(true);
      for (const v of [d, blockD, nor]) {
        expect(Number(v)).toBeGreaterThanOrEqual(0);
        expect(Number(v)).toBeLessThanOrEqual(1);
      }
      expect(Number(nor)).toBeCloseTo(1 - Number(blockD), 12);
      expect(Number(fisher)).toBeGreaterThan(0);
      byBlock.set(block!, (byBlock.get(block!) ?? new Set()).add(blockD!));
      linearsOf.set(block!, [...(linearsOf.get(block!) ?? []), linear!]);
    }
    // Blocks 0..7, each with every linear once, and one block-level share per block.
    expect([...byBlock.keys()]).toEqual(["0", "1", "2", "3", "4", "5", "6", "7"]);
    for (const names of linearsOf.values()) expect(names).toEqual(LINEARS);
    for (const shares of byBlock.values()) expect(shares.size).toBe(1);

    const json = jsonOf(evosparse(...args, "--json"));
    expect(json.map((x: Record<string, number | string>) => [x.block, x.linear, x.params, x.outlierShare, x.blockOutlierShare, x.blockNonOutlierRatio, x.fisherTrace].join(","))).toEqual(lines);
  });
});
