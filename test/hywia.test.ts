/**
 * HyWIA (src/prune/hywia.ts): the normalised views, the fusion, the soft mask's threshold,
 * the relaxation's end points (a mask of 0 is exactly the group's removal, on every
 * architecture) and the learning of the fusion weights.
 */
import fc from "fast-check";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { blockShape } from "../src/model/spec.ts";
import { groupImportance, groupSums } from "../src/prune/group-importance.ts";
import { removeGroups, type GroupRemoval } from "../src/prune/groups.ts";
import { EQUAL_WEIGHTS, fuse, hybridScores, learnFusion, maskedBlock, normaliseWithinBlock, softMaskEdge } from "../src/prune/hywia.ts";
import { lossGradients } from "../src/prune/loss-gradients.ts";
import { FAMILY_CASES, nextTokenTargets, randomIds, randomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

const positive = fc.array(fc.oneof(fc.constant(0), fc.double({ min: 1e-6, max: 1e6, noNaN: true })), { minLength: 1, maxLength: 30 });

describe("HyWIA's views and fusion", () => {
  it("normalises a view to mean 1 whatever its scale, and leaves an all-zero view at zero (property)", () => {
    fc.assert(
      fc.property(positive, fc.double({ min: 1e-3, max: 1e3, noNaN: true }), (values, scale) => {
        const x = Float64Array.from(values);
        const n = normaliseWithinBlock(x);
        if (values.every((v) => v === 0)) {
          expect([...n]).toEqual(values.map(() => 0));
          return;
        }
        expect(n.reduce((a, b) => a + b, 0) / n.length).toBeCloseTo(1, 9);
        const scaled = normaliseWithinBlock(x.map((v) => v * scale));
        scaled.forEach((v, i) => expect(v).toBeCloseTo(n[i]!, 9));
      }),
    );
  });

  it("the fine view orders groups as element importance does, the coarse one as vector; the fusion is the weighted sum", async () => {
    const model = randomModel("llama-gqa", 5);
    const calibration = [randomIds(8, model.spec.vocabSize, 1)];
    const decoder = Decoder.create(model.spec, model.globals, { numBlocks: model.spec.numLayers, load: (i) => model.blocks[i]! });
    const gradients = await lossGradients(decoder, calibration);
    decoder.dispose();
    const views = hybridScores(groupSums(model.spec, 0, model.blocks[0]!, gradients[0]));
    const element = groupImportance(model.spec, 0, model.blocks[0]!, gradients[0], "element");
    const vector = groupImportance(model.spec, 0, model.blocks[0]!, gradients[0], "vector");
    const order = (x: Float64Array) => Array.from(x.keys()).sort((a, b) => x[a]! - x[b]! || a - b);
    expect(order(views.fine.channels)).toEqual(order(element.channels));
    expect(order(views.coarse.channels)).toEqual(order(vector.channels));
    expect(order(views.fine.kvHeads)).toEqual(order(element.kvHeads));
    const w = { heads: { fine: 0.3, coarse: 0.7 }, channels: { fine: 0.9, coarse: 0.1 } };
    const fused = fuse(views, w);
    fused.channels.forEach((v, i) => expect(v).toBeCloseTo(0.9 * views.fine.channels[i]! + 0.1 * views.coarse.channels[i]!, 12));
    fused.kvHeads.forEach((v, i) => expect(v).toBeCloseTo(0.3 * views.fine.kvHeads[i]! + 0.7 * views.coarse.kvHeads[i]!, 12));
  });

  it("the soft mask's threshold lies between the last group removed and the first kept (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 1000 }), { minLength: 2, maxLength: 30 }), fc.nat(), (units, pick) => {
        const values = units.map((u) => u / 100);
        const fused = Float64Array.from(values);
        const removed = 1 + (pick % (values.length - 1));
        const sorted = [...values].sort((a, b) => a - b);
        const edge = softMaskEdge(fused, removed, 0.25);
        if (sorted[0] === sorted.at(-1)) {
          expect(edge).toBeUndefined();
          return;
        }
        expect(edge!.threshold).toBeGreaterThanOrEqual(sorted[removed - 1]!);
        expect(edge!.threshold).toBeLessThanOrEqual(sorted[removed]!);
        expect(edge!.width).toBeGreaterThan(0);
      }),
    );
    expect(softMaskEdge(Float64Array.of(1, 2, 3), 0, 0.25)).toBeUndefined();
  });
});

describe("the soft mask's end points", () => {
  it.each(FAMILY_CASES)("%s: masks of 0 and 1 give the loss of the model with those groups removed", async (family) => {
    const model = randomModel(family, 9);
    const spec = model.spec;
    const seqlen = 6;
    const ids = randomIds(2 * seqlen, spec.vocabSize, 3);
    const targets = nextTokenTargets(ids, 2, seqlen);
    const removals: GroupRemoval[] = model.blocks.map((_, i) => {
      const shape = blockShape(spec, i);
      return { kvHeads: shape.numKvHeads > 1 ? [i % shape.numKvHeads] : [], channels: [0, 2 + i] };
    });
    const smaller = removeGroups(spec, model.blocks, removals);
    const cut = Decoder.create(smaller.spec, model.globals, { numBlocks: spec.numLayers, load: (i) => smaller.blocks[i]! });
    const full = Decoder.create(spec, model.globals, { numBlocks: spec.numLayers, load: (i) => model.blocks[i]! });
    try {
      const expected = (await cut.nll(ids, targets, 2, seqlen));
      const masked = tf.tidy(() =>
        full.lossTensor(ids, targets, 2, seqlen, (i, t) => {
          const shape = blockShape(spec, i);
          const heads = tf.tensor1d(Array.from({ length: shape.numKvHeads }, (_, g) => (removals[i]!.kvHeads.includes(g) ? 0 : 1)));
          const channels = tf.tensor1d(Array.from({ length: shape.intermediateSize }, (_, c) => (removals[i]!.channels.includes(c) ? 0 : 1)));
          return maskedBlock(spec, i, t, heads, channels);
        }),
      );
      const loss = (await masked.data())[0]!;
      masked.dispose();
      expect(loss).toBeCloseTo(expected.nll / expected.count, 5);
      // All ones: the dense model.
      const dense = await full.nll(ids, targets, 2, seqlen);
      const ones = tf.tidy(() =>
        full.lossTensor(ids, targets, 2, seqlen, (i, t) => {
          const shape = blockShape(spec, i);
          return maskedBlock(spec, i, t, tf.ones([shape.numKvHeads]) as tf.Tensor1D, tf.ones([shape.intermediateSize]) as tf.Tensor1D);
        }),
      );
      expect((await ones.data())[0]!).toBeCloseTo(dense.nll / dense.count, 5);
      ones.dispose();
    } finally {
      cut.dispose();
      full.dispose();
    }
  });
});

describe("learnFusion", () => {
  const model = randomModel("llama-gqa", 12);
  const calibration = [randomIds(8, model.spec.vocabSize, 1), randomIds(8, model.spec.vocabSize, 2), randomIds(8, model.spec.vocabSize, 3)];

  const views = async () => {
    const d = Decoder.create(model.spec, model.globals, { numBlocks: model.spec.numLayers, load: (i) => model.blocks[i]! });
    const g = await lossGradients(d, calibration);
    d.dispose();
    return model.blocks.map((b, i) => hybridScores(groupSums(model.spec, i, b, g[i])));
  };

  it("moves the weights away from equal, deterministically, keeps them a softmax pair, and frees its tensors", async () => {
    const v = await views();
    const ratios = model.blocks.map(() => 0.5);
    const d = Decoder.create(model.spec, model.globals, { numBlocks: model.spec.numLayers, load: (i) => model.blocks[i]! });
    const run = () => learnFusion(d, v, ratios, calibration, { steps: 6, lr: 0.2, batch: 2, temperature: 0.25 });
    let a, b;
    try {
      // The decoder caches its position tables on a first loss; the second run must leave nothing behind.
      a = await run();
      const before = tf.memory().numTensors;
      b = await run();
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      d.dispose();
    }
    expect(a).toEqual(b);
    expect(a.losses).toHaveLength(6);
    for (const w of a.weights) {
      expect(w.heads.fine + w.heads.coarse).toBeCloseTo(1, 6);
      expect(w.channels.fine + w.channels.coarse).toBeCloseTo(1, 6);
    }
    expect(a.weights.some((w) => Math.abs(w.channels.fine - 0.5) > 1e-3)).toBe(true);
  });

  it("with no steps, or a block that loses nothing, the weights stay equal", async () => {
    const v = await views();
    const d = Decoder.create(model.spec, model.globals, { numBlocks: model.spec.numLayers, load: (i) => model.blocks[i]! });
    try {
      const none = await learnFusion(d, v, model.blocks.map(() => 0.5), calibration, { steps: 0, lr: 0.1, batch: 1, temperature: 0.25 });
      expect(none.losses).toEqual([]);
      for (const w of none.weights) expect(w).toEqual(EQUAL_WEIGHTS);
      const some = await learnFusion(d, v, model.blocks.map((_, i) => (i === 0 ? 0 : 0.5)), calibration, { steps: 3, lr: 0.2, batch: 1, temperature: 0.25 });
      expect(some.weights[0]).toEqual(EQUAL_WEIGHTS);
      await expect(learnFusion(d, v, [0.5], calibration)).rejects.toThrow(/for a model of/);
      await expect(learnFusion(d, v, model.blocks.map(() => 0.5), calibration, { steps: 1, lr: 0, batch: 1, temperature: 1 })).rejects.toThrow(/must be positive/);
    } finally {
      d.dispose();
    }
  });
});
