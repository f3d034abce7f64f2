/**
 * The Pruner's parts on the embedded model: what is known of the dense model never
 * depends on what was pruned or installed before, pruned weights are a pure function of
 * the allocation, and the stats table reads the same statistics the allocation methods see.
 */
import { afterAll, describe, expect, it } from "vitest";
import { perBlock } from "../src/allocation/allocation.ts";
import { defaultData, defaultModel } from "../src/defaults.ts";
import { evaluationWindows } from "../src/eval/inputs.ts";
import { DenseStatistics } from "../src/prune/dense-statistics.ts";
import { createPruner, openCalibratedModel } from "../src/prune/setup.ts";
import { allocationFitness, methodContext } from "../src/search/fitness.ts";
import { toAllocation } from "../src/allocation/pattern.ts";
import { initBackend } from "../src/backend/backend.ts";

await initBackend("wasm");
const model = openCalibratedModel({ model: defaultModel(), calib: defaultData("calibration"), nsamples: 2, seed: 0 });
afterAll(() => model.close());
const blocks = model.checkpoint.spec.numLayers;
const windows = evaluationWindows({ data: defaultData("validation"), format: "text", maxWindows: 2 }, model.tokenizer, model.seqlen);
const allocation = (s: number[]) => (pruner: ReturnType<typeof createPruner>) => perBlock(s, pruner.layout);
const a = allocation(Array.from({ length: blocks }, (_, b) => 0.4 + 0.05 * (b % 3)));
const b = allocation(Array.from({ length: blocks }, (_, k) => 0.7 - 0.05 * (k % 2)));

describe("the Pruner's parts", () => {
  for (const mode of ["dense", "sequential"] as const) {
    it(`${mode}: statistics read after pruning equal those read first; an allocation gives the same weights and perplexity in any order`, async () => {
      const first = createPruner(model, { metric: "wanda", mode, batch: 2 });
      const second = createPruner(model, { metric: "wanda", mode, batch: 2 });
      try {
        // first: statistics, then A; second: B, A (installed), then statistics.
        await first.statistics.prepare({ scores: true });
        const shares = first.statistics.outlierShares();
        const nor = first.statistics.nonOutlierRatio(3, 0.5);
        await first.apply(a(first));
        const weightsA = first.prunedBlocks().map((blk) => blk.linears);
        const pplA = (await first.perplexity(windows)).ppl;
        await second.apply(b(second));
        await second.perplexity(windows);
        await second.apply(a(second));
        const weightsA2 = second.prunedBlocks().map((blk) => blk.linears);
        expect((await second.perplexity(windows)).ppl).toBe(pplA);
        await second.statistics.prepare({ scores: true });
        expect(second.statistics.outlierShares()).toEqual(shares);
        expect(second.statistics.nonOutlierRatio(3, 0.5)).toBe(nor);
        weightsA.forEach((linears, k) => {
          for (const [name, linear] of Object.entries(linears)) expect(Buffer.from(weightsA2[k]![name]!.weight.data.buffer).equals(Buffer.from(linear.weight.data.buffer)), `${k}.${name}`).toBe(true);
        });
        // The dense model is back exactly.
        second.restoreDense();
        first.restoreDense();
        expect((await second.perplexity(windows)).ppl).toBe((await first.perplexity(windows)).ppl);
      } finally {
        first.dispose();
        second.dispose();
      }
    });
  }

  it("the stats table's block statistics are the ones the allocation methods see", async () => {
    const pruner = createPruner(model, { metric: "wanda", mode: "dense" });
    try {
      const context = await methodContext(pruner, 0.5, { kind: "unstructured" }, [{ needs: ["scores", "fisher"] }]);
      const table = await new DenseStatistics(model.checkpoint, { metric: "wanda", calibration: model.calibration }).table();
      const shares = context.statistics.outlierShares();
      const traces = context.statistics.fisherTraces();
      for (let k = 0; k < blocks; k++) {
        const rows = table.filter((r) => r.block === k);
        expect(rows[0]!.blockOutlierShare).toBe(shares[k]);
        expect(rows.reduce((s, r) => s + r.fisherTrace, 0)).toBeCloseTo(traces[k]!, 10);
        expect(rows[0]!.blockNonOutlierRatio).toBe(context.statistics.nonOutlierRatio(k, 0));
      }
    } finally {
      pruner.dispose();
    }
  });

  it("a per-linear choice prunes each linear at its own sparsity; per block and per linear agree when equal", async () => {
    const pruner = createPruner(model, { metric: "wanda", mode: "dense" });
    try {
      const layout = pruner.layout;
      const perLinearChoice = layout.map((_, k) => 0.3 + 0.05 * (k % 7));
      const allocation = toAllocation(perLinearChoice, layout, { kind: "unstructured" });
      await pruner.apply(allocation);
      const outcomes = pruner.outcomes(allocation);
      outcomes.forEach((o, k) => {
        expect(o.requested).toBe(perLinearChoice[k]);
        expect(o.achieved).toBe(o.expected);
      });
      // The same sparsity for every linear of a block, given either way, is one allocation.
      const byBlock = Array.from({ length: blocks }, (_, b) => 0.4 + 0.02 * b);
      const spread = layout.map((e) => byBlock[e.block]!);
      expect(pruner.allocationKey(toAllocation(spread, layout, { kind: "unstructured" }))).toBe(pruner.allocationKey(toAllocation(byBlock, layout, { kind: "unstructured" })));
      expect(() => toAllocation(spread, layout, { kind: "nm", n: 2, m: 4 })).toThrow(/per block, not per linear/);
      const fitness = await allocationFitness(pruner, windows, { kind: "unstructured" })(perLinearChoice);
      expect(fitness.ok).toBe(true);
    } finally {
      pruner.dispose();
    }
  });
});

