import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { linearShapes } from "../src/model/spec.ts";
import { blockSourceOf, FAMILY_CASES, randomIds, randomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("linear-input observer", () => {
  for (const c of FAMILY_CASES) {
    it(`${c}: sees every prunable linear's input, and observing changes nothing`, async () => {
      const m = randomModel(c, 21);
      const decoder = Decoder.create(m.spec, m.globals, blockSourceOf(m));
      const ids = randomIds(2 * 9, m.spec.vocabSize, 3);
      // Tables for this window length are cached by the model on first use.
      await decoder.nll(ids, new Int32Array(ids.length).fill(-1).fill(1, 0, 1), 2, 9);
      const before = tf.memory().numTensors;
      const x = decoder.embed(ids, 2, 9);
      const seen = new Map<string, number[]>();
      const observed = decoder.runBlock(1, x, 2, 9, (name, input) => {
        seen.set(name, input.shape);
        // The observer may compute statistics from the input while the block runs.
        expect(Number.isFinite(tf.sum(tf.square(input)).dataSync()[0])).toBe(true);
      });
      const plain = decoder.runBlock(1, x, 2, 9);
      expect(Array.from(observed.dataSync())).toEqual(Array.from(plain.dataSync()));
      const shapes = linearShapes(m.spec, 1);
      expect([...seen.keys()].sort()).toEqual([...m.spec.linears].sort());
      for (const [name, shape] of seen) expect(shape).toEqual([18, shapes[name]![0]]);
      tf.dispose([x, observed, plain]);
      expect(tf.memory().numTensors).toBe(before);
      decoder.dispose();
    });
  }
});
