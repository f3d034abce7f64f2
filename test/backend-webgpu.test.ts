/**
 * The WebGPU backend (optional packages `webgpu` and @tensorflow/tfjs-backend-webgpu) against
 * wasm: the embedded model's loss and a small model's gradients agree, and an error the
 * device reports is thrown rather than read back as numbers. Without a GPU this runs on
 * Mesa's lavapipe, which `bash .ci/vulkan.sh` puts in .vulkan/ (vitest.config.ts then sets
 * its environment); without the packages or a driver the tests are skipped, saying why.
 */
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { afterAll, describe, expect, it } from "vitest";
import { checkWebgpuDevice, startWebgpu, webgpuDeviceError } from "../src/backend/webgpu.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import { Decoder } from "../src/model/decoder.ts";
import { embeddedModel } from "./helpers/embedded.ts";
import { train } from "../src/jobs/train.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { blockSourceOf, nextTokenTargets, randomIds, randomModel, type FamilyCase } from "./helpers/random-model.ts";

const started = await startWebgpu();
if (!started.ok) {
  const how = /package/.test(started.why)
    ? "; to run them, install the optional dependencies (npm install)"
    : /vulkan\.sh/.test(started.why)
      ? ""
      : "; without a GPU, `bash .ci/vulkan.sh` gets a software Vulkan driver (vitest then uses .vulkan/env)";
  console.log(`WebGPU backend tests skipped: ${started.why}${how}`);
}

type BackendName = "webgpu" | "wasm";

const useBackend = async (name: BackendName): Promise<void> => {
  if (!(await tf.setBackend(name))) throw new Error(`the ${name} backend could not be initialised`);
  await tf.ready();
};

/** Runs `f` on a fresh decoder made on `backend` (weights live on the backend current when made). */
const onBackend = async <T>(backend: BackendName, make: () => Decoder, f: (d: Decoder) => Promise<T>): Promise<T> => {
  await useBackend(backend);
  const d = make();
  try {
    const result = await f(d);
    if (backend === "webgpu") await checkWebgpuDevice();
    return result;
  } finally {
    d.dispose();
  }
};

const relativeGap = (got: number, want: number): number => Math.abs(got - want) / Math.abs(want);

describe.skipIf(!started.ok)("the WebGPU backend", () => {
  afterAll(async () => {
    await useBackend("wasm");
  });

  it("starts once, on an adapter it describes; lavapipe counts as a software fallback", async () => {
    if (!started.ok) return;
    expect(started.adapter.trim()).not.toBe("");
    if (/llvmpipe|lavapipe|swiftshader/i.test(started.adapter)) expect(started.fallback).toBe(true);
    await useBackend("wasm");
    expect(await startWebgpu()).toEqual(started);
    expect(tf.getBackend()).toBe("webgpu");
    expect(webgpuDeviceError()).toBeUndefined();
  });

  it("gives the embedded model's loss on two Brown windows as wasm does", async () => {
    const ckpt = openCheckpointSync(embeddedModel);
    try {
      const seqlen = 64;
      const windows = evaluationWindows({ data: defaultData("test"), format: "text", maxWindows: 2 }, tokenizerFor(ckpt), seqlen);
      expect(windows).toHaveLength(2);
      const batch = windows.length;
      const ids = new Int32Array(batch * seqlen);
      const targets = new Int32Array(batch * seqlen);
      windows.forEach((w, i) => {
        ids.set(w.ids, i * seqlen);
        targets.set(w.targets, i * seqlen);
      });
      const make = () => Decoder.create(ckpt.spec, ckpt.readGlobals(), { numBlocks: ckpt.spec.numLayers, load: (i) => ckpt.readBlock(i) });
      const wasm = await onBackend("wasm", make, (d) => d.nll(ids, targets, batch, seqlen));
      const webgpu = await onBackend("webgpu", make, (d) => d.nll(ids, targets, batch, seqlen));
      expect(webgpu.count).toBe(wasm.count);
      expect(wasm.nll / wasm.count).toBeGreaterThan(1);
      expect(relativeGap(webgpu.nll, wasm.nll), `${webgpu.nll} vs ${wasm.nll}`).toBeLessThan(1e-4);
    } finally {
      ckpt.close();
    }
  });

  it.each(["llama-gqa", "gpt2"] as const)("gives the gradient of every weight of a small %s model as wasm does", async (family: FamilyCase) => {
    const model = randomModel(family, 77);
    const batch = 2;
    const seqlen = 6;
    const ids = randomIds(batch * seqlen, model.spec.vocabSize, 78);
    const targets = nextTokenTargets(ids, batch, seqlen);
    const gradients = (backend: BackendName) =>
      onBackend(
        backend,
        () => Decoder.create(model.spec, model.globals, blockSourceOf(model), { trainable: true }),
        async (d) => {
          const params = [...d.parameters()] as [string, tf.Variable][];
          const { value, grads } = tf.variableGrads(() => d.lossTensor(ids, targets, batch, seqlen), params.map(([, v]) => v));
          try {
            const byName = new Map<string, Float32Array>();
            for (const [name, v] of params) byName.set(name, Float32Array.from((await grads[v.name]!.data()) as Float32Array));
            return { loss: (await value.data())[0]!, byName };
          } finally {
            tf.dispose([value, ...Object.values(grads)]);
          }
        },
      );
    const wasm = await gradients("wasm");
    const webgpu = await gradients("webgpu");
    expect(relativeGap(webgpu.loss, wasm.loss)).toBeLessThan(1e-4);
    expect([...webgpu.byName.keys()]).toEqual([...wasm.byName.keys()]);
    for (const [name, want] of wasm.byName) {
      const got = webgpu.byName.get(name)!;
      let scale = 0;
      let gap = 0;
      for (let i = 0; i < want.length; i++) {
        scale = Math.max(scale, Math.abs(want[i]!));
        gap = Math.max(gap, Math.abs(got[i]! - want[i]!));
      }
      expect(scale, name).toBeGreaterThan(0);
      expect(gap / scale, `${name}: largest gap ${gap} at scale ${scale}`).toBeLessThan(1e-3);
    }
  });

  // Last: a device error is kept, so every later check on this device would fail too.
  it("trains the embedded model's architecture (75 parameter tensors) with the losses wasm gives", async () => {
    const root = mkdtempSync(join(tmpdir(), "evosparse-webgpu-train-"));
    try {
      const losses = async (backend: BackendName) =>
        (
          await train({
            data: defaultData("train"),
            out: join(root, backend),
            size: { hiddenSize: 32, numLayers: 8, numHeads: 4, numKvHeads: 2, intermediateSize: 48, contextLength: 64 },
            steps: 3,
            batch: 2,
            seqlen: 32,
            lr: 3e-3,
            warmupSteps: 1,
            weightDecay: 0.1,
            seed: 0,
            evalEvery: 0,
            evalWindows: 0,
            backend,
            vocabSize: 258,
            workers: 1,
            checkpointEvery: 0,
            resume: false,
          })
        ).log.map((step) => step.trainLoss);
      const [wasm, webgpu] = [await losses("wasm"), await losses("webgpu")];
      expect(webgpu).toHaveLength(3);
      webgpu.forEach((loss, i) => expect(Math.abs(loss - wasm[i]!)).toBeLessThan(1e-3 * wasm[i]!));
    } finally {
      rmSync(root, { recursive: true, force: true });
      await useBackend("wasm");
    }
  });

  it("turns an error the device reports into a thrown error instead of wrong numbers", async () => {
    await useBackend("webgpu");
    await checkWebgpuDevice();
    // tfjs-backend-webgpu generates a pad shader for 5-D tensors that does not compile; the
    // bare read would resolve (with zeros) and only the device's uncapturederror event tells:
    // evosparse makes the read itself fail.
    const padded = tf.pad(tf.ones([1, 2, 2, 2, 2]), [[0, 0], [1, 1], [0, 0], [0, 0], [0, 0]]);
    try {
      await expect(padded.data()).rejects.toThrow(/PadProgram|WGSL/);
    } finally {
      padded.dispose();
    }
    await expect(checkWebgpuDevice()).rejects.toThrow(/PadProgram|WGSL/);
    expect(webgpuDeviceError()).toMatch(/^WebGPU validation error/);
    expect(webgpuDeviceError()).not.toContain("\n");
  });
});
