/**
 * KL(dense || model) per token (src/eval/kl.ts) against a float64 computation from the two
 * models' logits, exact with the whole vocabulary as top-k; zero for the dense model itself.
 */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import type { Window } from "../src/data/windows.ts";
import { DenseReference, klDivergence } from "../src/eval/kl.ts";
import { Decoder } from "../src/model/decoder.ts";
import type { HostBlock } from "../src/model/spec.ts";
import { nextTokenTargets, randomIds, randomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

/** Every scored position's logits, as float64 rows. */
const logitsOf = async (d: Decoder, w: Window): Promise<Float64Array[]> => {
  const [x] = await d.hiddenStatesAll([{ ids: w.ids, batch: 1, seqlen: w.ids.length }]);
  const scored = d.scored(w.targets, w.ids.length);
  const z = tf.tidy(() => d.headLogits(tf.gather(x!, tf.tensor1d(scored.rows, "int32"))));
  x!.dispose();
  const [n, vocab] = z.shape;
  const data = await z.data();
  z.dispose();
  const rows: Float64Array[] = [];
  for (let r = 0; r < n; r++) rows.push(Float64Array.from(data.subarray(r * vocab, (r + 1) * vocab)));
  return rows;
};

const logSoftmax = (z: Float64Array): Float64Array => {
  const max = Math.max(...z);
  const lse = max + Math.log(z.reduce((s, v) => s + Math.exp(v - max), 0));
  return z.map((v) => v - lse);
};

describe("klDivergence", () => {
  const model = randomModel("gpt2", 4);
  const spec = model.spec;
  const seqlen = 10;
  const windows: Window[] = [1, 2, 3].map((seed) => {
    const ids = randomIds(seqlen, spec.vocabSize, seed);
    return { ids, targets: nextTokenTargets(ids, 1, seqlen) };
  });
  // A perturbed copy: every prunable weight scaled by a factor depending on its index.
  const perturbed: HostBlock[] = model.blocks.map((b) => ({
    ...b,
    linears: Object.fromEntries(Object.entries(b.linears).map(([n, l]) => [n, { ...l, weight: { shape: l.weight.shape, data: l.weight.data.map((v, i) => v * (i % 3 === 0 ? 0 : 1.3)) } }])),
  }));
  const decoderOf = (blocks: readonly HostBlock[], headColumns?: number) =>
    Decoder.create(spec, model.globals, { numBlocks: spec.numLayers, load: (i) => blocks[i]! }, headColumns ? { headColumns } : {});

  it("equals sum p log(p/q) per scored token (whole vocabulary), and 0 for the dense model", async () => {
    const dense = decoderOf(model.blocks);
    const other = decoderOf(perturbed);
    const reference = new DenseReference(spec.vocabSize);
    try {
      await reference.add(dense, windows);
      let expected = 0;
      let tokens = 0;
      for (const w of windows) {
        const p = await logitsOf(dense, w);
        const q = await logitsOf(other, w);
        p.forEach((row, r) => {
          const lp = logSoftmax(row);
          const lq = logSoftmax(q[r]!);
          expected += lp.reduce((s, v, i) => s + Math.exp(v) * (v - lq[i]!), 0);
          tokens++;
        });
      }
      const got = await klDivergence(other, windows, reference);
      expect(got.tokens).toBe(tokens);
      expect(got.kl).toBeGreaterThan(0.01);
      expect(got.kl).toBeCloseTo(expected / tokens, 4);
      const self = await klDivergence(dense, windows, reference);
      expect(Math.abs(self.kl)).toBeLessThan(1e-5);
    } finally {
      reference.dispose();
      dense.dispose();
      other.dispose();
    }
  });

  it("a smaller top-k approaches the exact value as k grows, and the reference frees its tensors", async () => {
    const dense = decoderOf(model.blocks);
    const other = decoderOf(perturbed);
    try {
      // Each decoder caches its position tables on its first forward.
      for (const d of [dense, other]) await d.nll(windows[0]!.ids, windows[0]!.targets, 1, seqlen);
      const before = tf.memory().numTensors;
      const values: number[] = [];
      for (const k of [2, 8, spec.vocabSize]) {
        const reference = new DenseReference(k);
        await reference.add(dense, windows);
        values.push((await klDivergence(other, windows, reference)).kl);
        reference.dispose();
      }
      expect(tf.memory().numTensors).toBe(before);
      expect(Math.abs(values[1]! - values[2]!)).toBeLessThan(Math.abs(values[0]! - values[2]!) + 1e-9);
      expect(() => new DenseReference(0)).toThrow(RangeError);
      await expect(klDivergence(other, windows, new DenseReference(4))).rejects.toThrow(/add it first/);
    } finally {
      dense.dispose();
      other.dispose();
    }
  });

  it("a head cut into vocabulary chunks gives the same references and divergences as one product", async () => {
    const one = [decoderOf(model.blocks), decoderOf(perturbed)] as const;
    // Chunks of 7 tokens: the top-k of several chunks merged, log-sum-exps log-added.
    const chunked = [decoderOf(model.blocks, 7), decoderOf(perturbed, 7)] as const;
    expect(chunked[0].vocabChunks.length).toBeGreaterThan(2);
    try {
      for (const k of [3, spec.vocabSize]) {
        const values: number[] = [];
        for (const [dense, other] of [one, chunked]) {
          const reference = new DenseReference(k);
          await reference.add(dense, windows);
          values.push((await klDivergence(other, windows, reference)).kl);
          reference.dispose();
        }
        expect(values[1]!).toBeCloseTo(values[0]!, 5);
      }
      for (const w of windows) {
        const a = await one[1].nll(w.ids, w.targets, 1, seqlen);
        const b = await chunked[1].nll(w.ids, w.targets, 1, seqlen);
        expect(b.count).toBe(a.count);
        expect(b.nll).toBeCloseTo(a.nll, 4);
      }
    } finally {
      for (const d of [...one, ...chunked]) d.dispose();
    }
  });
});
