/**
 * lossGradients: the gradient of the mean calibration loss with respect to every linear's
 * weight and bias, checked against float64 finite differences of the reference model.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { lossGradients } from "../src/prune/loss-gradients.ts";
import { blockSourceOf, nextTokenTargets, randomIds, randomModel } from "./helpers/random-model.ts";
import { referenceNll, referenceWeights } from "./helpers/reference.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("lossGradients", () => {
  it.each(["qwen2", "gpt2"] as const)("%s: matches finite differences of the mean window loss, biases included", async (family) => {
    const model = randomModel(family, 31);
    const seqlen = 6;
    const windows = [randomIds(seqlen, model.spec.vocabSize, 1), randomIds(seqlen, model.spec.vocabSize, 2)];
    const decoder = Decoder.create(model.spec, model.globals, blockSourceOf(model));
    let gradients;
    try {
      gradients = await lossGradients(decoder, windows);
    } finally {
      decoder.dispose();
    }
    expect(gradients).toHaveLength(model.spec.numLayers);
    const reference = referenceWeights(model.globals, model.blocks);
    const meanLoss = (): number =>
      windows.reduce((sum, ids) => {
        const r = referenceNll(model.spec, reference, ids, nextTokenTargets(ids, 1, seqlen), seqlen);
        return sum + r.nll / r.count;
      }, 0) / windows.length;
    const biased = model.spec.biasedLinears ?? [];
    const linear = biased[0] ?? model.spec.linears[0]!;
    const checks: Array<{ block: number; name: string; part: "weight" | "bias" }> = [
      { block: 0, name: model.spec.roles.down, part: "weight" },
      { block: 1, name: linear, part: "weight" },
      ...(biased.length > 0 ? [{ block: 1, name: linear, part: "bias" as const }] : []),
    ];
    const step = 1e-4;
    for (const { block, name, part } of checks) {
      const g = gradients[block]!.linears[name]![part]!.data;
      const w = reference.blocks[block]!.linears[name]![part]!;
      expect(g.length).toBe(w.length);
      const steepest = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!))[0]!;
      for (const e of [steepest, Math.floor(g.length / 2)]) {
        const original = w[e]!;
        w[e] = original + step;
        const up = meanLoss();
        w[e] = original - step;
        const down = meanLoss();
        w[e] = original;
        const numeric = (up - down) / (2 * step);
        expect(Math.abs(g[e]! - numeric), `${block} ${name} ${part}[${e}]`).toBeLessThan(1e-3 * Math.abs(g[steepest]!) + 1e-2 * Math.abs(numeric));
      }
    }
  });

  it("refuses an empty window list", async () => {
    const model = randomModel("llama-gqa", 2);
    const decoder = Decoder.create(model.spec, model.globals, blockSourceOf(model));
    try {
      await expect(lossGradients(decoder, [])).rejects.toThrow(/no calibration windows/);
    } finally {
      decoder.dispose();
    }
  });
});
