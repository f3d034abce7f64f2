/**
 * A block pruned by SparseGPT factors each input's Hessian once: q, k and v read one input
 * (one Hessian), as do gate and up, so a LLaMA block takes 4 factorisations, not 7: in the
 * one-shot pipeline and in a search's dense candidates pruned from kept Hessians. That the
 * weights are unchanged by the sharing is test/pruner's "the same weights as the one-shot
 * pipeline", which compares them bit for bit.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { perBlock } from "../src/allocation/allocation.ts";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import { pruneLinearsSharingFactors } from "../src/prune/prune-linear.ts";
import { Pruner } from "../src/prune/pruner.ts";
import * as sparsegpt from "../src/prune/sparsegpt.ts";
import type { SparseGptFactor } from "../src/prune/sparsegpt.ts";
import type { HessianAccumulator } from "../src/prune/stats.ts";
import { embeddedModel, pipelinePrune } from "./helpers/embedded.ts";

vi.mock("../src/prune/sparsegpt.ts", async (importOriginal) => {
  const actual = await importOriginal<typeof import("../src/prune/sparsegpt.ts")>();
  return { ...actual, sparseGptFactor: vi.fn(actual.sparseGptFactor) };
});

describe("SparseGPT's factor of a shared input", () => {
  let ckpt: Checkpoint;
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(embeddedModel);
  });
  afterAll(() => ckpt?.close());

  for (const mode of ["sequential", "dense"] as const) {
    it(`is made once per input of a block (${mode})`, async () => {
      const tokenizer = tokenizerFor(ckpt);
      const calibration = calibrationWindows({ source: defaultData("calibration"), samples: 2, seqlen: 64 }, tokenizer);
      const windows = evaluationWindows({ data: defaultData("test"), format: "text", maxWindows: 1 }, tokenizer, 64);
      const factor = vi.mocked(sparsegpt.sparseGptFactor);
      factor.mockClear();
      const { blocks } = await pipelinePrune(ckpt, { metric: "sparsegpt", mode, calibration, batch: 2, target: () => ({ sparsity: 0.5 }) }, windows);
      const spec = ckpt.spec;
      expect(Object.keys(blocks[0]!.linears)).toHaveLength(7);
      // Inputs of a LLaMA block: [q, k, v], [o], [gate, up], [down].
      expect(factor).toHaveBeenCalledTimes(4 * spec.numLayers);
      // Each factor is of its input's width, in the block's order.
      const widths = factor.mock.calls.slice(0, 4).map((call) => call[1]);
      const shapes = blocks[0]!.linears;
      const { q, o, gate, down } = spec.roles;
      expect(widths).toEqual([q!, o, gate!, down].map((name) => shapes[name]!.weight.shape[0]));
    });
  }

  it("is made once per input of a block for a search's dense candidates (kept Hessians)", async () => {
    const tokenizer = tokenizerFor(ckpt);
    const calibration = calibrationWindows({ source: defaultData("calibration"), samples: 2, seqlen: 64 }, tokenizer);
    const factor = vi.mocked(sparsegpt.sparseGptFactor);
    const pruner = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, batch: 2, dtype: "F32" });
    try {
      const blocks = ckpt.spec.numLayers;
      const a = Array.from({ length: blocks }, (_, i) => (i % 2 ? 0.6 : 0.4));
      // b differs from a in block 0 only: its other blocks are the cache's.
      const b = a.map((s, i) => (i === 0 ? 0.7 : s));
      factor.mockClear();
      await pruner.apply(perBlock(a, pruner.layout));
      expect(factor).toHaveBeenCalledTimes(4 * blocks);
      const { q, o, gate, down } = ckpt.spec.roles;
      const shapes = pruner.prunedBlocks()[0]!.linears;
      expect(factor.mock.calls.slice(0, 4).map((call) => call[1])).toEqual([q!, o, gate!, down].map((name) => shapes[name]!.weight.shape[0]));
      factor.mockClear();
      await pruner.apply(perBlock(b, pruner.layout));
      expect(factor).toHaveBeenCalledTimes(4);
    } finally {
      pruner.dispose();
    }
  });
});

describe("pruneLinearsSharingFactors", () => {
  it("factors each input once and holds a factor only between its input's first and last reader", () => {
    fc.assert(
      fc.property(fc.array(fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }), { maxLength: 12 }), (inputs) => {
        const hessians = Array.from({ length: 5 }, () => ({}) as HessianAccumulator);
        const names = inputs.map((_, k) => `linear${k}`);
        const hessianOf = (name: string) => {
          const input = inputs[names.indexOf(name)];
          return input === undefined ? undefined : hessians[input];
        };
        let made = 0;
        const pruned: string[] = [];
        pruneLinearsSharingFactors(names, hessianOf, (name, factors) => {
          const k = names.indexOf(name);
          // Held now: exactly the inputs read before this linear and again at or after it.
          const live = new Set(inputs.filter((x, j) => x !== undefined && j < k && inputs.slice(k).includes(x)).map((x) => hessians[x!]));
          expect(new Set(factors.keys())).toEqual(live);
          const hessian = hessianOf(name);
          if (hessian && !factors.has(hessian)) {
            made++;
            factors.set(hessian, {} as SparseGptFactor);
          }
          pruned.push(name);
        });
        expect(pruned).toEqual(names);
        expect(made).toBe(new Set(inputs.filter((x) => x !== undefined)).size);
      }),
      { numRuns: 300 },
    );
  });
});
