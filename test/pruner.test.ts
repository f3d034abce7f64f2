/**
 * The Pruner against the one-shot pipeline, on every real model at hand: the embedded
 * default model (always), and stories260K (a llama2.c checkpoint) when the shared assets
 * are present.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { perBlock, perBlockNM } from "../src/allocation/allocation.ts";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import type { Window } from "../src/data/windows.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import type { CalibrationMode } from "../src/prune/pipeline.ts";
import type { PruneMetric } from "../src/prune/prune-linear.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { asset, haveAssets } from "./helpers/assets.ts";
import { embeddedModel, nmViolations, pipelinePrune, sameWeights, zerosOf } from "./helpers/embedded.ts";

interface ModelCase {
  readonly name: string;
  readonly checkpoint: () => string;
  /** Calibration and evaluation text (disjoint for the embedded model; one prefix for stories260K). */
  readonly calibration: () => string;
  readonly evaluation: () => string;
}

const MODELS: readonly ModelCase[] = [
  { name: "the embedded model", checkpoint: () => embeddedModel, calibration: () => defaultData("calibration"), evaluation: () => defaultData("validation") },
  ...(haveAssets
    ? [
        {
          name: "stories260K",
          checkpoint: () => asset("models", "stories260K", "stories260K.bin"),
          calibration: () => asset("data", "tinystories", "validation.prefix.txt"),
          evaluation: () => asset("data", "tinystories", "validation.prefix.txt"),
        },
      ]
    : []),
];

/** Sparsities per block that vary, and a second set sharing the first three blocks. */
const allocations = (blocks: number): [number[], number[]] => {
  const a = Array.from({ length: blocks }, (_, i) => [0.3, 0.5, 0.6, 0.7, 0.6][i % 5]!);
  const b = a.map((s, i) => (i < 3 ? s : [0.4, 0.8, 0.5][i % 3]!));
  return [a, b];
};

describe.each(MODELS)("Pruner on $name", (model) => {
  let ckpt: Checkpoint;
  let calibration: Int32Array[];
  let windows: Window[];
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(model.checkpoint());
    const tokenizer = tokenizerFor(ckpt);
    calibration = calibrationWindows({ source: model.calibration(), samples: 4, seqlen: 128 }, tokenizer);
    windows = evaluationWindows({ data: model.evaluation(), format: "text", maxWindows: 2 }, tokenizer, 128);
  });
  afterAll(() => ckpt?.close());

  const reference = (metric: PruneMetric, mode: CalibrationMode, sparsities: readonly number[]) =>
    pipelinePrune(ckpt, { metric, mode, calibration, batch: 2, target: (b) => ({ sparsity: sparsities[b]! }) }, windows);

  for (const metric of ["magnitude", "wanda", "sparsegpt"] as const) {
    for (const mode of ["dense", "sequential"] as const) {
      it(`${metric}, ${mode}: the same weights and perplexity as the one-shot pipeline, also after other candidates`, async () => {
        // Kept in float32, as the one-shot pipeline keeps them (a prune's default is the checkpoint's dtype).
        const pruner = Pruner.create(ckpt, { metric, mode, calibration, batch: 2, dtype: "F32" });
        try {
          const layout = pruner.layout;
          // b shares a's first blocks, so sequential mode reuses cached blocks before the first difference.
          const [a, b] = allocations(ckpt.spec.numLayers);
          await pruner.apply(perBlock(a, layout));
          const first = pruner.prunedBlocks();
          for (const o of pruner.outcomes(perBlock(a, layout))) expect(o.achieved).toBe(o.expected);
          const pplA = (await pruner.perplexity(windows)).ppl;
          await pruner.apply(perBlock(b, layout));
          const second = pruner.prunedBlocks();
          const pplB = (await pruner.perplexity(windows)).ppl;
          await pruner.apply(perBlock(a, layout));
          const again = pruner.prunedBlocks();
          const pplA2 = (await pruner.perplexity(windows)).ppl;
          const refA = await reference(metric, mode, a);
          const refB = await reference(metric, mode, b);
          expect(sameWeights(first, refA.blocks)).toBe(true);
          expect(sameWeights(again, refA.blocks)).toBe(true);
          expect(sameWeights(second, refB.blocks)).toBe(true);
          expect(sameWeights(second, refA.blocks)).toBe(false);
          expect(pplA).toBe(refA.ppl);
          expect(pplA2).toBe(refA.ppl);
          expect(pplB).toBe(refB.ppl);
          pruner.restoreDense();
          const dense = (await pruner.perplexity(windows)).ppl;
          expect(Number.isFinite(pplA)).toBe(true);
          expect(dense).toBeLessThan(pplA);
        } finally {
          pruner.dispose();
        }
      });
    }
  }

  it("reports requested and achieved sparsity per linear, and N:M patterns hold in every linear", async () => {
    const pruner = Pruner.create(ckpt, { metric: "wanda", mode: "dense", calibration });
    try {
      const ns = Array.from({ length: ckpt.spec.numLayers }, (_, i) => [1, 1, 2, 2, 3][i % 5]!);
      const allocation = perBlockNM(ns, 4, pruner.layout);
      await pruner.apply(allocation);
      const blocks = pruner.prunedBlocks();
      const outcomes = pruner.outcomes(allocation);
      expect(outcomes).toHaveLength(ckpt.spec.numLayers * ckpt.spec.linears.length);
      for (const o of outcomes) {
        expect(o.achieved).toBeCloseTo(o.requested, 12);
        expect(o.expected).toBe(o.achieved);
        expect(o.achieved * o.params).toBe(zerosOf(blocks[o.block]!.linears[o.linear]!.weight.data));
      }
      for (const b of [0, 4]) {
        for (const linear of ckpt.spec.linears) {
          expect(nmViolations(blocks[b]!.linears[linear]!.weight, ns[b]!, 4), `block ${b} ${linear}`).toBe(0);
        }
      }
    } finally {
      pruner.dispose();
    }
  });

  it("MRP's non-outlier ratio grows from the dense value and ignores pruned weights", async () => {
    const pruner = Pruner.create(ckpt, { metric: "wanda", mode: "dense", calibration });
    try {
      await pruner.statistics.prepare({ scores: true });
      const values = [0, 0.5, 0.9].map((s) => pruner.statistics.nonOutlierRatio(2, s));
      for (const v of values) expect(v).toBeGreaterThan(0.5);
      for (const v of values) expect(v).toBeLessThanOrEqual(1);
      expect(new Set(values).size).toBe(3);
      expect(pruner.statistics.nonOutlierRatio(2, 0.5)).toBe(values[1]);
    } finally {
      pruner.dispose();
    }
  });
});
