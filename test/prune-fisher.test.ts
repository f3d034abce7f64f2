import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { blockTraces, fisherTraces } from "../src/prune/fisher.ts";
import { blockSourceOf, randomIds, randomModel } from "./helpers/random-model.ts";
import { referenceNll, referenceWeights } from "./helpers/reference.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("Fisher-trace sensitivity", () => {
  it("equals the mean over windows of the squared loss gradient, by float64 finite differences, resident or streamed alike", async () => {
    const m = randomModel("llama-gqa", 17);
    const windows = [randomIds(6, m.spec.vocabSize, 1), randomIds(6, m.spec.vocabSize, 2)];
    const tracesOf = async (streamed: boolean) => {
      const decoder = Decoder.create(m.spec, m.globals, blockSourceOf(m), { streamed });
      // The model caches its tables for a window length on first use.
      await decoder.nll(windows[0]!, new Int32Array(6).fill(-1).fill(3, 0, 1), 1, 6);
      const before = tf.memory().numTensors;
      const traces = await fisherTraces(decoder, windows);
      expect(tf.memory().numTensors).toBe(before);
      decoder.dispose();
      return traces;
    };
    const traces = await tracesOf(false);
    expect(await tracesOf(true)).toEqual(traces);

    // Reference: central differences of the mean window NLL for every weight of one linear.
    const name = m.spec.roles.k!;
    const ref = referenceWeights(m.globals, m.blocks);
    const w = ref.blocks[1]!.linears[name]!.weight;
    const meanNll = (ids: Int32Array) => {
      const targets = new Int32Array(ids.length).fill(-1);
      for (let t = 0; t + 1 < ids.length; t++) targets[t] = ids[t + 1]!;
      const r = referenceNll(m.spec, ref, ids, targets, ids.length);
      return r.nll / r.count;
    };
    const h = 1e-5;
    let expected = 0;
    for (const ids of windows) {
      let sum = 0;
      for (let i = 0; i < w.length; i++) {
        const keep = w[i]!;
        w[i] = keep + h;
        const up = meanNll(ids);
        w[i] = keep - h;
        const down = meanNll(ids);
        w[i] = keep;
        sum += ((up - down) / (2 * h)) ** 2;
      }
      expected += sum / windows.length;
    }
    expect(traces.get(`1.${name}`)!).toBeGreaterThan(0);
    expect(Math.abs(traces.get(`1.${name}`)! - expected) / expected).toBeLessThan(2e-3);
    const perBlock = blockTraces(traces, m.spec.numLayers);
    expect(perBlock[1]).toBeCloseTo(m.spec.linears.reduce((s, l) => s + traces.get(`1.${l}`)!, 0), 10);
  });
});
