import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect } from "effect";
import { afterAll, describe, expect, it } from "vitest";
import { brownText } from "../src/data/brown.ts";
import { evaluate } from "../src/jobs/eval.ts";
import { train, type TrainOptions } from "../src/jobs/train.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-train-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const text = brownText("calibration").slice(0, 60_000);
const data = join(root, "train.txt");
const validation = join(root, "val.txt");
writeFileSync(data, text);
writeFileSync(validation, brownText("validation").slice(0, 8_000));

const options = (out: string, overrides: Partial<TrainOptions> = {}): TrainOptions => ({
  data,
  validation,
  out: join(root, out),
  size: { hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, intermediateSize: 64, contextLength: 64 },
  steps: 24,
  batch: 4,
  seqlen: 32,
  lr: 1e-2,
  warmupSteps: 4,
  weightDecay: 0.1,
  seed: 3,
  evalEvery: 12,
  evalWindows: 4,
  backend: "wasm",
  vocabSize: 258,
  workers: 1,
  checkpointEvery: 0,
  resume: false,
  ...overrides,
});

const weightsOf = (dir: string) => readFileSync(join(dir, "model.safetensors"));

describe("evosparse train", () => {
  it("lowers the loss on a tiny model and writes a loadable model with its loss curve", async () => {
    const r = await train(options("a"));
    const first = r.log.slice(0, 3).reduce((s, l) => s + l.trainLoss, 0) / 3;
    const last = r.log.slice(-3).reduce((s, l) => s + l.trainLoss, 0) / 3;
    expect(first).toBeGreaterThan(5); // about ln(258) at the start
    expect(last).toBeLessThan(first - 1.5);
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "training-log.csv", "loss-curve.svg", "training.json"]) {
      expect(existsSync(join(root, "a", f))).toBe(true);
    }
    // The written model loads through the ordinary path and scores the validation text
    // as training measured it (F16 storage moves it a little).
    const report = await Effect.runPromise(
      evaluate({ model: join(root, "a"), data: validation, format: "text", seqlen: 32, maxWindows: 4, backend: "wasm" }),
    );
    expect(Math.abs(report.nll - r.finalValLoss!)).toBeLessThan(0.02);
  });

  it("is reproducible for a fixed seed, and a different seed differs", async () => {
    const a = await train(options("b1"));
    const b = await train(options("b2"));
    expect(b.log.map((l) => l.trainLoss)).toEqual(a.log.map((l) => l.trainLoss));
    expect(weightsOf(join(root, "b2")).equals(weightsOf(join(root, "b1")))).toBe(true);
    const c = await train(options("b3", { seed: 4 }));
    expect(c.log.map((l) => l.trainLoss)).not.toEqual(a.log.map((l) => l.trainLoss));
  });

  it("two workers reproduce themselves, and a run killed mid-way resumes to the same weights", async () => {
    const whole = await train(options("c1", { workers: 2 }));
    await expect(
      train(
        options("c2", {
          workers: 2,
          checkpointEvery: 8,
          onStep: (s) => {
            if (s.step === 13) throw new Error("killed");
          },
        }),
      ),
    ).rejects.toThrow("killed");
    expect(existsSync(join(root, "c2.checkpoint", "state.json"))).toBe(true);
    expect(existsSync(join(root, "c2"))).toBe(false);
    const resumed = await train(options("c2", { workers: 2, checkpointEvery: 8, resume: true }));
    expect(resumed.log.map((l) => l.trainLoss)).toEqual(whole.log.map((l) => l.trainLoss));
    expect(weightsOf(join(root, "c2")).equals(weightsOf(join(root, "c1")))).toBe(true);
    expect(existsSync(join(root, "c2.checkpoint"))).toBe(false);
  });
});
