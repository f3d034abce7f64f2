/**
 * A whole prune + eval of the embedded model on each optional backend, through the CLI,
 * against the same commands on wasm: the dense and pruned perplexities agree (native within
 * 1e-5 relative, WebGPU within 1e-4), and `eval` of the written model repeats the reported
 * perplexity on the same backend.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { nativeCase, skipNotice, webgpuCase } from "./helpers/backends.ts";
import { embeddedModel, evosparseOn, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("round-trip");
const common = [
  "--model", embeddedModel, "--calib", "brown:calibration", "--nsamples", "2", "--seqlen", "128",
  "--valid", "brown:validation", "--valid-windows", "1", "--eval", "brown:test", "--eval-windows", "2",
  "--sparsity", "0.6", "--json",
  // Float32 weights: rounding to the model's F16 would turn the backends' 1e-7 differences in
  // SparseGPT's solve into different roundings of a few weights, far above the tolerance.
  "--dtype", "F32",
];

const CASES = [
  { ...nativeCase, tolerance: 1e-5 },
  { ...webgpuCase, tolerance: 1e-4 },
];

describe.each(CASES)("prune + eval on $name and on wasm", ({ name: backend, missing, tolerance }) => {
  const skip = skipNotice(`the ${backend} backend`, missing);
  it.skipIf(skip).each(["wanda", "sparsegpt"])("%s: the same perplexities, and eval of the written model repeats them", (metric) => {
    const reports = Object.fromEntries(
      ["wasm", backend].map((b) => [b, jsonOf(evosparseOn(b, "prune", ...common, "--metric", metric, "--out", join(root, `${backend}-${metric}-${b}`)))]),
    );
    for (const key of ["dense", "pruned"] as const) {
      const want = reports.wasm.evaluation[key];
      expect(Math.abs(reports[backend].evaluation[key] - want)).toBeLessThanOrEqual(tolerance * want);
    }
    const back = jsonOf(
      evosparseOn(backend, "eval", "--model", join(root, `${backend}-${metric}-${backend}`), "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json"),
    );
    expect(back.ppl).toBe(reports[backend].evaluation.pruned);
  });
});
