import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointError, DataError, UsageError } from "../src/errors.ts";
import { Decoder, type BlockTensors } from "../src/model/decoder.ts";
import { blockForward, blockToTensors } from "../src/model/block.ts";
import { ForwardTables } from "../src/model/tables.ts";
import type { HostBlock } from "../src/model/spec.ts";
import {
  FAMILY_CASES,
  blockSourceOf,
  nextTokenTargets,
  randomIds,
  randomModel,
  type FamilyCase,
  type RandomModel,
} from "./helpers/random-model.ts";
import { referenceLogits, referenceNll, referenceWeights } from "./helpers/reference.ts";

const useBackend = async (name: "wasm" | "cpu"): Promise<void> => {
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`the ${name} backend could not be initialised`);
  await tf.ready();
};

const decoderOf = (m: RandomModel, options: Parameters<typeof Decoder.create>[3] = {}): Decoder =>
  Decoder.create(m.spec, m.globals, blockSourceOf(m), options);

const maxAbs = (xs: ArrayLike<number>): number => {
  let top = 0;
  for (let i = 0; i < xs.length; i++) top = Math.max(top, Math.abs(xs[i]));
  return top;
};

/** All logits of a batch of windows, through the public block-by-block API. */
const allLogits = (d: Decoder, ids: Int32Array, batch: number, seqlen: number): Float32Array => {
  let x = d.embed(ids, batch, seqlen);
  for (let i = 0; i < d.numBlocks; i++) {
    const next = d.runBlock(i, x, batch, seqlen);
    x.dispose();
    x = next;
  }
  const logits = d.headLogits(x);
  x.dispose();
  const values = logits.dataSync() as Float32Array;
  logits.dispose();
  return Float32Array.from(values);
};

beforeAll(async () => {
  await useBackend("wasm");
});

describe.each(FAMILY_CASES)("the %s decoder against the float64 reference", (family: FamilyCase) => {
  const model = randomModel(family, 1000 + FAMILY_CASES.indexOf(family));
  const batch = 2;
  const seqlen = 13;
  const ids = randomIds(batch * seqlen, model.spec.vocabSize, 7);
  const reference = referenceWeights(model.globals, model.blocks);

  it("gives the reference logits for every position of every window", () => {
    const d = decoderOf(model);
    try {
      const got = allLogits(d, ids, batch, seqlen);
      const vocab = model.spec.vocabSize;
      let worst = 0;
      let scale = 0;
      for (let b = 0; b < batch; b++) {
        const want = referenceLogits(model.spec, reference, ids.subarray(b * seqlen, (b + 1) * seqlen));
        want.forEach((row, t) => {
          scale = Math.max(scale, maxAbs(row));
          row.forEach((v, k) => {
            worst = Math.max(worst, Math.abs(v - got[(b * seqlen + t) * vocab + k]));
          });
        });
      }
      // Logits are O(1–10): a bug anywhere in a block moves them by far more than float32 rounding.
      expect(scale).toBeGreaterThan(1);
      expect(worst).toBeLessThan(2e-4 * Math.max(1, scale));
    } finally {
      d.dispose();
    }
  });

  it("gives the reference NLL and count", () => {
    const targets = nextTokenTargets(ids, batch, seqlen);
    targets[3] = -1;
    const d = decoderOf(model);
    try {
      const got = d.nll(ids, targets, batch, seqlen);
      const want = referenceNll(model.spec, reference, ids, targets, seqlen);
      expect(got.count).toBe(want.count);
      expect(Math.abs(got.nll - want.nll)).toBeLessThan(1e-4 * want.nll);
    } finally {
      d.dispose();
    }
  });

  it("gives the reference logits one position at a time", () => {
    const d = decoderOf(model);
    try {
      const single = ids.subarray(0, seqlen);
      const want = referenceLogits(model.spec, reference, single);
      for (const position of [0, 5, seqlen - 1]) {
        const got = d.logitsAt(single, position);
        const row = want[position];
        expect(maxAbs(got.map((v, k) => v - row[k]))).toBeLessThan(2e-4 * Math.max(1, maxAbs(row)));
      }
    } finally {
      d.dispose();
    }
  });
});
