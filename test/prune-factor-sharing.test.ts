/**
 * A block pruned by SparseGPT factors each input's Hessian once: q, k and v read one input
 * (one Hessian), as do gate and up, so a LLaMA block takes 4 factorisations, not 7. That
 * the weights are the ones each linear's own factorisation gives is test/pruner's "the same
 * weights as the one-shot pipeline" (the Pruner's dense candidates factor every linear).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import * as sparsegpt from "../src/prune/sparsegpt.ts";
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
});
