import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { contiguousWindows } from "../src/data/windows.ts";
import { readTextFile } from "../src/data/text-source.ts";
import { tokenizerFor } from "../src/eval/inputs.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { Decoder } from "../src/model/decoder.ts";
import { pruneModel, type CalibrationMode } from "../src/prune/pipeline.ts";
import type { PruneMetric } from "../src/prune/prune-linear.ts";
import { asset, haveAssets } from "./helpers/assets.ts";

describe.skipIf(!haveAssets)("block-by-block pruning of stories260K", () => {
  let ckpt: Checkpoint;
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(asset("models", "stories260K", "stories260K.bin"));
  });
  afterAll(() => ckpt?.close());

  const source = () => ({ numBlocks: ckpt.spec.numLayers, load: (i: number) => ckpt.readBlock(i) });
  const evalWindows = () => {
    const tokens = tokenizerFor(ckpt).encode(readTextFile(asset("data", "tinystories", "validation.prefix.txt")).slice(0, 60_000));
    return contiguousWindows(tokens, 256, { maxWindows: 8 });
  };
  const run = async (metric: PruneMetric, sparsity: number, mode: CalibrationMode = "sequential") => {
    const decoder = Decoder.create(ckpt.spec, ckpt.readGlobals(), source());
    try {
      const calibration = calibrationWindows({ source: asset("data", "tinystories", "validation.prefix.txt"), samples: 8, seqlen: 128 }, tokenizerFor(ckpt));
      const blocks = await pruneModel(decoder, source(), { metric, mode, calibration, batch: 4, target: () => ({ sparsity }) });
      return { blocks, ppl: (await perplexity(decoder, evalWindows())).ppl };
    } finally {
      decoder.dispose();
    }
  };

  it("every linear gets exactly the requested sparsity, per the metric's comparison group", async () => {
    for (const metric of ["magnitude", "wanda", "sparsegpt"] as const) {
      const { blocks } = await run(metric, 0.5);
      for (const b of blocks) {
        for (const l of Object.values(b.linears)) {
          const [inF, outF] = l.weight.shape as [number, number];
          const zeros = l.weight.data.reduce((n, v) => n + (v === 0 ? 1 : 0), 0);
          if (metric === "wanda") {
            // floor(C_in * s) per output neuron.
            expect(zeros).toBe(outF * Math.floor(inF * 0.5));
          } else if (metric === "magnitude") {
            expect(zeros).toBe(Math.floor(inF * outF * 0.5));
          } else {
            expect(Math.abs(zeros / (inF * outF) - 0.5)).toBeLessThan(0.01);
          }
        }
      }
    }
  });

  it("quality: dense < wanda, sparsegpt < magnitude at 60%; sequential and dense calibration both work", async () => {
    const decoder = Decoder.create(ckpt.spec, ckpt.readGlobals(), source());
    const dense = (await perplexity(decoder, evalWindows())).ppl;
    decoder.dispose();
    const magnitude = (await run("magnitude", 0.6)).ppl;
    const wanda = (await run("wanda", 0.6)).ppl;
    const sparsegpt = (await run("sparsegpt", 0.6)).ppl;
    const wandaDense = (await run("wanda", 0.6, "dense")).ppl;
    expect(dense).toBeLessThan(wanda);
    expect(wanda).toBeLessThan(magnitude);
    expect(sparsegpt).toBeLessThan(magnitude);
    expect(Number.isFinite(wandaDense)).toBe(true);
  });
});
