/**
 * structuredPrune: each block loses its lowest-scoring groups at its ratio, the achieved
 * fraction of prunable parameters is reported (at most the asked one, short by less than a
 * group of each kind), and the smaller model runs.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { blockShape } from "../src/model/spec.ts";
import { groupCounts, groupImportance } from "../src/prune/group-importance.ts";
import { blockAt, prunableParameters, structuredPrune } from "../src/prune/structured.ts";
import { nextTokenTargets, randomIds, randomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("structuredPrune", () => {
  const model = randomModel("llama-gqa", 12);
  const calibration = [randomIds(8, model.spec.vocabSize, 1), randomIds(8, model.spec.vocabSize, 2)];

  it("removes each block's lowest-l2 groups at its ratio and reports the fraction removed", async () => {
    const ratios = model.blocks.map((_, i) => (i === 0 ? 0.5 : 0.25));
    const r = await structuredPrune(model.spec, model.globals, model.blocks, { importance: "l2", ratios, calibration });
    r.removals.forEach((removal, i) => {
      const shape = blockShape(model.spec, i);
      const scores = groupImportance(model.spec, i, model.blocks[i]!, undefined, "l2");
      const counts = groupCounts(model.spec, i, ratios[i]!);
      expect(removal.kvHeads).toHaveLength(counts.kvHeads);
      expect(removal.channels).toHaveLength(counts.channels);
      const cut = Math.max(...removal.channels.map((c) => scores.channels[c]!));
      scores.channels.forEach((s, c) => {
        if (!removal.channels.includes(c)) expect(s).toBeGreaterThanOrEqual(cut);
      });
      expect(blockShape(r.spec, i).intermediateSize).toBe(shape.intermediateSize - removal.channels.length);
    });
    expect(r.parameters.before).toBe(prunableParameters(model.spec));
    expect(r.parameters.after).toBe(prunableParameters(r.spec));
    const asked = (0.5 + 0.25 * (model.spec.numLayers - 1)) / model.spec.numLayers;
    expect(r.parameters.removed).toBeGreaterThan(0);
    expect(r.parameters.removed).toBeLessThanOrEqual(asked + 1e-12);
    const d = Decoder.create(r.spec, model.globals, { numBlocks: r.spec.numLayers, load: (i) => blockAt(r.blocks, i) });
    try {
      const { nll, count } = await d.nll(calibration[0]!, nextTokenTargets(calibration[0]!, 1, 8), 1, 8);
      expect(Number.isFinite(nll / count)).toBe(true);
    } finally {
      d.dispose();
    }
  });

  it("element importance uses the calibration gradient and is deterministic; ratio 0 removes nothing", async () => {
    const ratios = model.blocks.map(() => 0.5);
    const a = await structuredPrune(model.spec, model.globals, model.blocks, { importance: "element", ratios, calibration });
    const b = await structuredPrune(model.spec, model.globals, model.blocks, { importance: "element", ratios, calibration });
    expect(a.removals).toEqual(b.removals);
    const l2 = await structuredPrune(model.spec, model.globals, model.blocks, { importance: "l2", ratios, calibration });
    expect(a.removals).not.toEqual(l2.removals);
    const none = await structuredPrune(model.spec, model.globals, model.blocks, { importance: "vector", ratios: ratios.map(() => 0), calibration });
    expect(none.parameters.removed).toBe(0);
  });

  it("refuses ratios outside [0, 1) and a ratio list of the wrong length", async () => {
    await expect(structuredPrune(model.spec, model.globals, model.blocks, { importance: "l2", ratios: model.blocks.map(() => 1), calibration })).rejects.toThrow(
      /outside \[0, 1\)/,
    );
    await expect(structuredPrune(model.spec, model.globals, model.blocks, { importance: "l2", ratios: [0.5], calibration })).rejects.toThrow(/ratios for a model/);
  });
});
