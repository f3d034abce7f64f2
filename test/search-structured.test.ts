/**
 * `evosparse search --structured` on the embedded model: per-block ratios of whole groups
 * searched like unstructured allocations, the same history with 1 and 2 workers, the
 * printed prune command cutting the best allocation to the reported test perplexity, and
 * combinations it cannot honour refused.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { pruneStructured } from "../src/api/index.ts";
import { embeddedModel, errorLines, evosparse, historyOf, jsonOf, reproduceArgs, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-structured");

describe("evosparse search --structured", () => {
  const small = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "2", "--eval-windows", "2", "--sparsity", "0.4", "--seed", "3",
    "--baselines", "uniform,owl",
  ];

  it("hywia with DSA: 1 and 2 workers agree; the reproduce command and prune --from cut the best allocation to the reported test perplexity", async () => {
    const one = join(root, "one");
    const two = join(root, "two");
    const args = ["search", "--structured", "hywia", "--fusion-steps", "4", "--method", "dsa", "--space", "dsa-small.json", ...small, "--population", "3", "--generations", "2"];
    const summary = jsonOf(evosparse(...args, "--out", one, "--json"));
    const other = jsonOf(evosparse(...args, "--out", two, "--workers", "2", "--json"));
    expect(historyOf(two)).toEqual(historyOf(one));
    expect(other.final.results).toEqual(summary.final.results);
    expect(summary.settings.structured).toBe("hywia");
    expect(summary.final.results.map((r: { method: string }) => r.method)).toEqual(["dsa", "uniform", "owl"]);
    const settings = JSON.parse(readFileSync(join(one, "settings.json"), "utf8"));
    expect(settings.structured).toBe("hywia");

    expect(summary.final.reproduce).toMatch(/^npx evosparse prune --structured hywia .* --fusion-steps 4 --out DIR$/);
    const report = jsonOf(evosparse(...reproduceArgs(summary.final.reproduce, join(root, "reproduced")), "--json"));
    expect(report.evaluation.pruned).toBe(summary.final.results[0].test);
    expect(report.evaluation.dense).toBe(summary.final.dense);
    expect(report.ratios.map((r: number) => r.toFixed(9))).toEqual(summary.best.sparsities.map((r: number) => r.toFixed(9)));
    // The smaller model: whole groups gone, about the requested share of the prunable weights.
    expect(report.parameters.removed).toBeLessThanOrEqual(0.4 + 1e-9);
    expect(report.parameters.removed).toBeGreaterThan(0.35);

    // `prune --from RUN` needs nothing else: the run's importance, fusion steps and protocol.
    const fromRun = jsonOf(evosparse("prune", "--from", one, "--out", join(root, "from-run"), "--json"));
    expect(fromRun.structured).toBe("hywia");
    expect(fromRun.evaluation.pruned).toBe(summary.final.results[0].test);
    expect(fromRun.ratios).toEqual(report.ratios);
    // The API's structured prune reads the run the same way.
    const api = await pruneStructured({ from: one, out: join(root, "from-api"), backend: "wasm" });
    expect(api.evaluation!.pruned).toBe(summary.final.results[0].test);
  });

  it("refuses an N:M pattern with --structured, and a resumed run with another importance", () => {
    const r = evosparse("search", "--structured", "l2", "--method", "uniform", ...small.filter((w, i, a) => w !== "--sparsity" && a[i - 1] !== "--sparsity"), "--pattern", "2:4", "--out", join(root, "nm"));
    expect(r.code).toBe(2);
    expect(errorLines(r.stderr)).toEqual([expect.stringMatching(/takes no --pattern/)]);
    const dir = join(root, "uniform");
    jsonOf(evosparse("search", "--structured", "l2", "--method", "uniform", ...small, "--out", dir, "--json"));
    const again = evosparse("search", "--resume", dir, "--structured", "element");
    expect(again.code).toBe(2);
    expect(errorLines(again.stderr)).toEqual([expect.stringMatching(/--structured element differs from the resumed run's l2/)]);
  });
});
