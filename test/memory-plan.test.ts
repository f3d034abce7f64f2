/**
 * The memory plan (src/memory/plan.ts): its choices follow the budget, a run that cannot
 * fit is refused with the numbers and what would help, and its estimate of a run's peak is
 * within 25% of the peak the process measures, on three model sizes (LLaMA shapes with
 * random F16 weights, written here), resident and streamed.
 */
import fc from "fast-check";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { writeRandomLlama, type LlamaShape } from "../bench/scale-models.ts";
import { BASELINE_BYTES, modelSizes, planMemory, WASM_HEAP_BYTES, type MemoryBudget, type Workload } from "../src/memory/plan.ts";
import { readConfig } from "../src/checkpoint/huggingface.ts";
import { evosparseOn, jsonOf } from "./helpers/embedded.ts";
import { nativeCase } from "./helpers/backends.ts";

const GiB = 2 ** 30;
const MiB = 2 ** 20;

const shapeArb = fc.record({
  hidden: fc.constantFrom(512, 1024, 2048, 4096),
  layers: fc.integer({ min: 2, max: 40 }),
  ffnRatio: fc.constantFrom(2.6875, 3.5),
  vocab: fc.constantFrom(32000, 128256),
});

const sizesOf = (s: { hidden: number; layers: number; ffnRatio: number; vocab: number }) => {
  const dir = mkdtempSync(join(tmpdir(), "evosparse-plan-"));
  const config = { model_type: "llama", hidden_size: s.hidden, intermediate_size: Math.round(s.hidden * s.ffnRatio), num_hidden_layers: s.layers, num_attention_heads: s.hidden / 128, num_key_value_heads: s.hidden / 128, vocab_size: s.vocab, bos_token_id: 1, eos_token_id: 2 };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  const { spec } = readConfig(dir);
  rmSync(dir, { recursive: true, force: true });
  return modelSizes(spec, 2);
};

const budget = (bytes: number): MemoryBudget => ({ bytes, source: "--memory", backendBytes: WASM_HEAP_BYTES, backendInProcess: true });
const evalWork: Workload = { forward: { seqlen: 512, batch: 1 } };
const pruneWork: Workload = { forward: { seqlen: 512, batch: 1 }, calibration: { windows: 4, sparsegpt: false, keepHessians: false, storeBytes: 2 } };

describe("the memory plan", () => {
  it("streams when the blocks would not fit the wasm heap or the budget, and never plans past either", () => {
    fc.assert(
      fc.property(shapeArb, fc.integer({ min: 1, max: 64 }), (shape, gib) => {
        const m = sizesOf(shape);
        for (const work of [evalWork, pruneWork]) {
          const plan = planMemory(m, work, budget(gib * GiB));
          if ("refused" in plan) {
            expect(plan.peakBytes > gib * GiB || plan.parts.some((p) => p.backend)).toBe(true);
            expect(plan.refused).toMatch(/needs about [\d.]+ [GM]iB/);
            continue;
          }
          expect(plan.peakBytes).toBeLessThanOrEqual(gib * GiB);
          expect(plan.backendPeakBytes).toBeLessThanOrEqual(WASM_HEAP_BYTES);
          const resident = m.blocks.reduce((a, b) => a + b, 0) * 4;
          if (resident > WASM_HEAP_BYTES) expect(plan.streamed).toBe(true);
          // A larger budget never makes the plan heavier: what fits streamed at a budget fits at more.
          const more = planMemory(m, work, budget(2 * gib * GiB));
          expect("refused" in more).toBe(false);
        }
      }),
      { numRuns: 80 },
    );
  });

  it("refuses a run that cannot fit, naming the parts and what would help", () => {
    const m = sizesOf({ hidden: 4096, layers: 32, ffnRatio: 2.6875, vocab: 32000 });
    const plan = planMemory(m, { ...pruneWork, calibration: { windows: 128, sparsegpt: true, keepHessians: true } }, budget(2 * GiB));
    expect("refused" in plan).toBe(true);
    if ("refused" in plan) expect(plan.refused).toMatch(/more than the 2\.0 GiB given by --memory/);
    // The leanest plan of a 6.7B model fits in 8 GiB with 4 windows.
    const fits = planMemory(m, { ...pruneWork, calibration: { windows: 4, sparsegpt: true, keepHessians: false, storeBytes: 2 } }, budget(8 * GiB));
    expect("refused" in fits).toBe(false);
    expect(BASELINE_BYTES).toBeGreaterThan(100 * MiB);
  });
});

// Three sizes: 0.05B, 0.11B and 0.23B parameters.
const SHAPES: readonly LlamaShape[] = [
  { name: "plan-a", hidden: 768, intermediate: 2048, layers: 6, heads: 12, kvHeads: 4, vocab: 8000, context: 512 },
  { name: "plan-b", hidden: 1024, intermediate: 2816, layers: 8, heads: 16, kvHeads: 4, vocab: 8000, context: 512 },
  { name: "plan-c", hidden: 1536, intermediate: 4096, layers: 8, heads: 12, kvHeads: 4, vocab: 8000, context: 512 },
];

const root = mkdtempSync(join(tmpdir(), "evosparse-plan-models-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const backend = nativeCase.missing ? "wasm" : "native";

describe("the estimate against the measured peak", () => {
  it.each(SHAPES)("$name: prune and eval, resident and streamed, within 25%", (shape) => {
    const model = writeRandomLlama(join(root, shape.name), shape, 3);
    const check = (report: { memory: { estimatedPeakBytes: number; peakRssBytes: number; plan: string } }) => {
      const { estimatedPeakBytes: estimated, peakRssBytes: measured } = report.memory;
      expect(Math.abs(estimated - measured) / measured, `${report.memory.plan}: estimated ${estimated}, measured ${measured}`).toBeLessThanOrEqual(0.25);
    };
    const prune = ["prune", "--model", model, "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "128", "--eval", "brown:test", "--eval-windows", "2", "--json"];
    check(jsonOf(evosparseOn(backend, ...prune, "--out", join(root, `${shape.name}-resident`))));
    check(jsonOf(evosparseOn(backend, ...prune, "--out", join(root, `${shape.name}-streamed`), "--streamed")));
    check(jsonOf(evosparseOn(backend, "eval", "--model", model, "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json")));
  }, 240_000);
});
