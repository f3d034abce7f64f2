import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { Activations } from "../src/prune/activations.ts";
import { collectBlockStats } from "../src/prune/collect.ts";
import { blockSourceOf, randomIds, randomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("calibration statistics of a block", () => {
  it("input norms and Hessians equal the direct formulas over all batches", async () => {
    const m = randomModel("llama-gqa", 8);
    const decoder = Decoder.create(m.spec, m.globals, blockSourceOf(m));
    const seqlen = 7;
    const batches = [randomIds(2 * seqlen, m.spec.vocabSize, 1), randomIds(2 * seqlen, m.spec.vocabSize, 2)];
    const inputs = batches.map((ids) => decoder.embed(ids, 2, seqlen));
    // The down projection's input, captured directly for the reference.
    const captured: Float32Array[] = [];
    inputs.forEach((x) =>
      decoder.runBlock(0, x, 2, seqlen, (name, input) => {
        if (name === m.spec.roles.down) captured.push(Float32Array.from(input.dataSync()));
      }).dispose(),
    );
    const activations = Activations.empty("device", [2, 2], seqlen, m.spec.hiddenSize);
    for (const [k, x] of inputs.entries()) await activations.put(k, x.clone());
    const { stats, outputs } = await collectBlockStats(decoder, 0, activations, { hessian: true });
    expect([...stats.keys()].sort()).toEqual([...m.spec.linears].sort());
    const f = m.spec.intermediateSize;
    const rows = captured.reduce((n, c) => n + c.length / f, 0);
    const norms = stats.get(m.spec.roles.down)!.norms.norms();
    const h = stats.get(m.spec.roles.down)!.hessian!.hessian();
    for (let j = 0; j < f; j += 5) {
      let ss = 0;
      for (const c of captured) for (let r = 0; r < c.length / f; r++) ss += c[r * f + j]! ** 2;
      expect(norms[j]).toBeCloseTo(Math.sqrt(ss), 4);
      for (let k = 0; k < f; k += 7) {
        let g = 0;
        for (const c of captured) for (let r = 0; r < c.length / f; r++) g += c[r * f + j]! * c[r * f + k]!;
        expect(h[j * f + k]).toBeCloseTo((2 / rows) * g, 4);
      }
    }
    // The outputs are the block's outputs, ready to feed the next block.
    const direct = decoder.runBlock(0, inputs[1]!, 2, seqlen);
    expect(await outputs.with(1, (y) => Array.from(y.dataSync()))).toEqual(Array.from(direct.dataSync()));
    tf.dispose([...inputs, direct]);
    activations.dispose();
    outputs.dispose();
    decoder.dispose();
  });
});
