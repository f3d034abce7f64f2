import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { perBlock, perBlockNM } from "../src/allocation/allocation.ts";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { readTextFile } from "../src/data/text-source.ts";
import { contiguousWindows } from "../src/data/windows.ts";
import { tokenizerFor } from "../src/eval/inputs.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { Decoder } from "../src/model/decoder.ts";
import type { HostBlock } from "../src/model/spec.ts";
import { pruneModel, type CalibrationMode } from "../src/prune/pipeline.ts";
import type { PruneMetric } from "../src/prune/prune-linear.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { asset, haveAssets } from "./helpers/assets.ts";

const sameWeights = (a: readonly HostBlock[], b: readonly HostBlock[]): boolean =>
  a.every((block, i) =>
    Object.entries(block.linears).every(([name, l]) => {
      const other = b[i]!.linears[name]!.weight.data;
      return l.weight.data.every((v, e) => Object.is(v, other[e]));
    }),
  );

describe.skipIf(!haveAssets)("Pruner: allocations applied to stories260K", () => {
  let ckpt: Checkpoint;
  let calibration: Int32Array[];
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(asset("models", "stories260K", "stories260K.bin"));
    calibration = calibrationWindows({ source: asset("data", "tinystories", "validation.prefix.txt"), samples: 4, seqlen: 128 }, tokenizerFor(ckpt));
  });
  afterAll(() => ckpt?.close());

  const windows = () => {
    const tokens = tokenizerFor(ckpt).encode(readTextFile(asset("data", "tinystories", "validation.prefix.txt")).slice(0, 30_000));
    return contiguousWindows(tokens, 128, { maxWindows: 4 });
  };
  const reference = async (metric: PruneMetric, mode: CalibrationMode, sparsities: number[]) => {
    const source = { numBlocks: ckpt.spec.numLayers, load: (i: number) => ckpt.readBlock(i) };
    const decoder = Decoder.create(ckpt.spec, ckpt.readGlobals(), source);
    try {
      const blocks = await pruneModel(decoder, source, { metric, mode, calibration, batch: 2, target: (b) => ({ sparsity: sparsities[b]! }) });
      return { blocks, ppl: (await perplexity(decoder, windows())).ppl };
    } finally {
      decoder.dispose();
    }
  };

  for (const metric of ["magnitude", "wanda", "sparsegpt"] as const) {
    for (const mode of ["dense", "sequential"] as const) {
      it(`${metric}, ${mode}: the same weights and perplexity as the one-shot pipeline, also after other candidates`, async () => {
        const pruner = Pruner.create(ckpt, { metric, mode, calibration, batch: 2 });
        try {
          const layout = pruner.layout;
          const a = [0.3, 0.5, 0.6, 0.7, 0.6];
          const b = [0.3, 0.5, 0.6, 0.4, 0.8];
          const first = await pruner.apply(perBlock(a, layout));
          for (const o of pruner.outcomes(perBlock(a, layout), first)) expect(o.achieved).toBe(o.expected);
          const pplA = (await pruner.perplexity(windows())).ppl;
          await pruner.apply(perBlock(b, layout));
          const pplB = (await pruner.perplexity(windows())).ppl;
          const again = await pruner.apply(perBlock(a, layout));
          const pplA2 = (await pruner.perplexity(windows())).ppl;
          const refA = await reference(metric, mode, a);
          expect(sameWeights(first, refA.blocks)).toBe(true);
          expect(sameWeights(again, refA.blocks)).toBe(true);
          expect(pplA).toBe(refA.ppl);
          expect(pplA2).toBe(refA.ppl);
          expect(pplB).toBe((await reference(metric, mode, b)).ppl);
          pruner.restoreDense();
          const dense = (await pruner.perplexity(windows())).ppl;
          expect(dense).toBeLessThan(pplA);
        } finally {
          pruner.dispose();
        }
      });
    }
  }

  it("reports requested and achieved sparsity per linear, and N:M patterns hold", async () => {
    const pruner = Pruner.create(ckpt, { metric: "wanda", mode: "dense", calibration });
    try {
      const allocation = perBlockNM([1, 1, 2, 2, 3], 4, pruner.layout);
      const blocks = await pruner.apply(allocation);
      const outcomes = pruner.outcomes(allocation, blocks);
      for (const o of outcomes) {
        expect(o.achieved).toBeCloseTo(o.requested, 12);
        expect(o.expected).toBe(o.achieved);
      }
      const [rows, cols] = blocks[4]!.linears["wq"]!.weight.shape;
      const data = blocks[4]!.linears["wq"]!.weight.data;
      for (let o = 0; o < cols; o++) {
        for (let g = 0; g < rows; g += 4) {
          let zeros = 0;
          for (let i = g; i < g + 4; i++) if (data[i * cols + o] === 0) zeros++;
          expect(zeros).toBe(3);
        }
      }
    } finally {
      pruner.dispose();
    }
  });

  it("MRP's non-outlier ratio grows from the dense value and ignores pruned weights", async () => {
    const pruner = Pruner.create(ckpt, { metric: "wanda", mode: "dense", calibration });
    try {
      await pruner.statistics.prepare();
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
