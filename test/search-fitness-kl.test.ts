/**
 * `evosparse search --fitness kl` on the embedded model: KL per token from the dense model
 * as the fitness, the same history with 1 and 2 workers, the dense model's own KL zero.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, errorLines, evosparse, historyOf, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-kl");

describe("evosparse search --fitness kl", () => {
  const small = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "2", "--eval-windows", "2", "--seed", "3",
  ];

  it("scores by KL: positive when pruned, zero at sparsity 0; 1 and 2 workers agree", () => {
    const one = join(root, "one");
    const args = ["search", "--fitness", "kl", "--method", "dsa", "--space", "dsa-small.json", ...small, "--sparsity", "0.6", "--population", "3", "--generations", "2"];
    const a = jsonOf(evosparse(...args, "--out", one, "--json"));
    const b = jsonOf(evosparse(...args, "--out", join(root, "two"), "--workers", "2", "--json"));
    expect(historyOf(join(root, "two"))).toEqual(historyOf(one));
    expect(b.final.results).toEqual(a.final.results);
    expect(a.settings.fitness).toBe("kl");
    for (const r of a.final.results) expect(r.validation).toBeGreaterThan(0);
    // KL per token is small next to a perplexity: the fitness really is the divergence.
    expect(a.best.fitness).toBeLessThan(5);
    const dense = jsonOf(evosparse("search", "--fitness", "kl", "--method", "uniform", ...small, "--sparsity", "0", "--out", join(root, "dense"), "--json"));
    expect(Math.abs(dense.best.fitness)).toBeLessThan(1e-5);
  });

  it("refuses KL for a structured search", () => {
    const r = evosparse("search", "--fitness", "kl", "--structured", "l2", "--method", "uniform", ...small, "--sparsity", "0.5", "--out", join(root, "refused"));
    expect(r.code).toBe(2);
    expect(errorLines(r.stderr)).toEqual([expect.stringMatching(/--fitness kl is for unstructured pruning/)]);
  });
});
