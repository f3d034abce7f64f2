/**
 * Structured groups (src/prune/groups.ts) on every architecture: removing key/value head
 * groups and MLP channels from a model gives the function that zeroing them in the
 * full-size model gives, with tensors of the new sizes; and bad removals are refused.
 */
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { Decoder } from "../src/model/decoder.ts";
import { blockShape, linearShapes } from "../src/model/spec.ts";
import { NO_REMOVAL, removeGroups, zeroGroups, type GroupRemoval } from "../src/prune/groups.ts";
import { FAMILY_CASES, nextTokenTargets, randomIds, randomModel, type RandomModel } from "./helpers/random-model.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

const decoderOf = (m: Pick<RandomModel, "spec" | "globals" | "blocks">): Decoder =>
  Decoder.create(m.spec, m.globals, { numBlocks: m.spec.numLayers, load: (i) => m.blocks[i]! });

/** A removal per block: any proper subset of its kv heads and of its channels. */
const removalsFor = (m: RandomModel) =>
  fc.tuple(
    ...Array.from({ length: m.spec.numLayers }, (_, i) => {
      const shape = blockShape(m.spec, i);
      return fc.record({
        kvHeads: fc.subarray(Array.from({ length: shape.numKvHeads }, (_, g) => g), { maxLength: shape.numKvHeads - 1 }),
        channels: fc.subarray(Array.from({ length: shape.intermediateSize }, (_, c) => c), { maxLength: shape.intermediateSize - 1 }),
      });
    }),
  );

const scores = async (d: Decoder, ids: Int32Array, seqlen: number) => {
  try {
    const nll = await d.nll(ids, nextTokenTargets(ids, 1, seqlen), 1, seqlen);
    return { nll: nll.nll, last: await d.logitsAt(ids, seqlen - 1) };
  } finally {
    d.dispose();
  }
};

describe("removing structured groups", () => {
  it.each(FAMILY_CASES)("%s: the smaller model computes what the model with those groups zeroed computes", async (family) => {
    const model = randomModel(family, 400 + FAMILY_CASES.indexOf(family));
    const seqlen = 9;
    const ids = randomIds(seqlen, model.spec.vocabSize, 5);
    await fc.assert(
      fc.asyncProperty(removalsFor(model), async (removals: GroupRemoval[]) => {
        const smaller = removeGroups(model.spec, model.blocks, removals);
        smaller.blocks.forEach((b, i) => {
          for (const [name, shape] of Object.entries(linearShapes(smaller.spec, i))) expect(b.linears[name]!.weight.shape).toEqual(shape);
        });
        const zeroed = zeroGroups(model.spec, model.blocks, removals);
        const [a, b] = [
          await scores(decoderOf({ ...smaller, globals: model.globals }), ids, seqlen),
          await scores(decoderOf({ spec: model.spec, globals: model.globals, blocks: zeroed }), ids, seqlen),
        ];
        expect(Math.abs(a.nll - b.nll)).toBeLessThan(1e-5 * b.nll);
        b.last.forEach((v, k) => expect(Math.abs(v - a.last[k]!)).toBeLessThan(1e-4 * Math.max(1, Math.abs(v))));
      }),
      { numRuns: 4, seed: 11 },
    );
  });

  it("removing nothing changes nothing, and a removal that changes something changes the output", async () => {
    const model = randomModel("llama-gqa", 7);
    const none = removeGroups(model.spec, model.blocks, model.blocks.map(() => NO_REMOVAL));
    none.blocks.forEach((b, i) => {
      for (const [name, l] of Object.entries(b.linears)) expect(l.weight.data).toEqual(model.blocks[i]!.linears[name]!.weight.data);
    });
    const seqlen = 7;
    const ids = randomIds(seqlen, model.spec.vocabSize, 3);
    const full = await scores(decoderOf(model), ids, seqlen);
    const cut = removeGroups(model.spec, model.blocks, model.blocks.map((_, i) => (i === 0 ? { kvHeads: [0], channels: [1, 2] } : NO_REMOVAL)));
    const after = await scores(decoderOf({ ...cut, globals: model.globals }), ids, seqlen);
    expect(Math.abs(after.nll - full.nll)).toBeGreaterThan(1e-4);
  });

  it("refuses removals that name no such group, name one twice, or would empty a block", () => {
    const model = randomModel("llama-gqa", 8);
    const shape = blockShape(model.spec, 0);
    const only = (removal: GroupRemoval) => model.blocks.map((_, i) => (i === 0 ? removal : NO_REMOVAL));
    expect(() => removeGroups(model.spec, model.blocks, only({ kvHeads: [shape.numKvHeads], channels: [] }))).toThrow(/block 0: key\/value head .* does not exist/);
    expect(() => removeGroups(model.spec, model.blocks, only({ kvHeads: [], channels: [0, 0] }))).toThrow(/listed twice/);
    expect(() => removeGroups(model.spec, model.blocks, only({ kvHeads: [], channels: Array.from({ length: shape.intermediateSize }, (_, c) => c) }))).toThrow(
      /removing every MLP channel/,
    );
    expect(() => removeGroups(model.spec, model.blocks, [NO_REMOVAL])).toThrow(RangeError);
  });
});
