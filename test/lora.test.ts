/**
 * LoRA recovery fine-tuning (src/train/lora.ts): the first step sees the base model, the
 * adapter gradients match float64 finite differences, training lowers the loss, merged
 * weights compute what the adapters computed, a resumed run equals an uninterrupted one,
 * bad options and checkpoints are refused clearly, and per-block shapes and biases work.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { DataError, UsageError } from "../src/errors.ts";
import { Decoder } from "../src/model/decoder.ts";
import type { HostBlock, ModelSpec } from "../src/model/spec.ts";
import { removeGroups } from "../src/prune/groups.ts";
import {
  adapterLossAndGradients,
  adapterVariables,
  createAdapters,
  disposeAdapters,
  loraBatch,
  loraRecover,
  loraTransform,
  mergeAdapters,
  type Adapters,
  type LoraOptions,
} from "../src/train/lora.ts";
import { mulberry32, nextTokenTargets, randomIds, randomModel, type RandomModel } from "./helpers/random-model.ts";
import { referenceNll, referenceWeights } from "./helpers/reference.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-lora-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  await initBackend("wasm");
});

/** A learnable stream: a short repeating pattern with a little noise. */
const patternTokens = (vocab: number, length: number, seed: number): Int32Array => {
  const random = mulberry32(seed);
  return Int32Array.from({ length }, (_, i) => (random() < 0.05 ? Math.floor(random() * vocab) : ((i % 7) * 5 + 3) % vocab));
};

const optionsFor = (m: RandomModel, overrides: Partial<LoraOptions> = {}): LoraOptions => ({
  rank: 2,
  alpha: 4,
  steps: 4,
  lr: 1e-2,
  batch: 2,
  seqlen: 8,
  tokens: patternTokens(m.spec.vocabSize, 300, 1),
  seed: 5,
  ...overrides,
});

const decoderOf = (spec: ModelSpec, m: RandomModel, blocks: readonly HostBlock[] = m.blocks): Decoder =>
  Decoder.create(spec, m.globals, { numBlocks: spec.numLayers, load: (i) => blocks[i]! }, {});

/** The mean next-token loss of `blocks` on one batch, with an optional transform. */
const lossOf = async (d: Decoder, batch: { ids: Int32Array; targets: Int32Array }, rows: number, seqlen: number, adapters?: Adapters): Promise<number> => {
  const loss = d.lossTensor(batch.ids, batch.targets, rows, seqlen, adapters ? loraTransform(adapters) : undefined);
  try {
    return (await loss.data())[0]!;
  } finally {
    loss.dispose();
  }
};

/** Replaces every B by seeded random values, so that gradients with respect to A are not zero. */
const randomiseB = (adapters: Adapters, seed: number): void => {
  const random = mulberry32(seed);
  tf.tidy(() => {
    for (const { b } of adapters.list) b.assign(tf.tensor(Float32Array.from({ length: b.size }, () => 0.3 * (2 * random() - 1)), b.shape));
  });
};

const valuesOf = async (t: tf.Tensor): Promise<Float32Array> => Float32Array.from((await t.data()) as Float32Array);

/** Calls `run` and checks that it leaves no tensor behind. */
const withoutLeaks = async <T>(run: () => Promise<T>): Promise<T> => {
  const before = tf.memory().numTensors;
  try {
    return await run();
  } finally {
    expect(tf.memory().numTensors).toBe(before);
  }
};

const rejection = async (run: () => Promise<unknown>): Promise<unknown> => {
  try {
    await run();
  } catch (error) {
    return error;
  }
  throw new Error("expected the run to fail");
};

describe("LoRA recovery", () => {
  const model = randomModel("llama-gqa", 21);

  it("starts from the base model: the first step's loss is the base model's on the same batch", async () => {
    const o = optionsFor(model, { steps: 1 });
    const result = await withoutLeaks(() => loraRecover(model.spec, model.globals, model.blocks, o));
    const d = decoderOf(model.spec, model);
    try {
      const base = await lossOf(d, loraBatch(o.tokens, o.batch, o.seqlen, o.seed, 0), o.batch, o.seqlen);
      expect(result.log).toEqual([{ step: 1, loss: base }]);
    } finally {
      d.dispose();
    }
    // rank · (in + out) over every linear: q, k, v, o, gate, up, down of two blocks.
    const { hiddenSize: h, intermediateSize: f } = model.spec;
    const perBlock = 2 * ((h + h) + (h + 16) + (h + 16) + (h + h) + (h + f) + (h + f) + (f + h));
    expect(result.parameters).toBe(2 * perBlock);
  });

  it("adapter gradients match float64 finite differences of the adapted model's loss", async () => {
    const seqlen = 7;
    const ids = randomIds(2 * seqlen, model.spec.vocabSize, 9);
    const targets = nextTokenTargets(ids, 2, seqlen);
    const d = decoderOf(model.spec, model);
    const adapters = createAdapters(model.spec, 3, 6, 11);
    let grads: Float32Array[];
    let factors: Float32Array[];
    try {
      randomiseB(adapters, 4);
      const r = adapterLossAndGradients(d, adapters, ids, targets, 2, seqlen);
      try {
        grads = await Promise.all(r.grads.map(valuesOf));
      } finally {
        r.loss.dispose();
        tf.dispose(r.grads);
      }
      factors = await Promise.all(adapterVariables(adapters).variables.map(valuesOf));
    } finally {
      disposeAdapters(adapters);
      d.dispose();
    }
    const reference = referenceWeights(model.globals, model.blocks);
    const { scaling, list } = adapters;
    /** Sets the reference weight of adapter k to W + scaling · A · B from (possibly edited) float64 factors. */
    const merge = (k: number, a: Float64Array, b: Float64Array): void => {
      const { block, linear } = list[k]!;
      const base = model.blocks[block]!.linears[linear]!.weight;
      const [inDim, outDim] = base.shape as [number, number];
      const rank = a.length / inDim;
      const w = reference.blocks[block]!.linears[linear]!.weight;
      for (let i = 0; i < inDim; i++) {
        for (let j = 0; j < outDim; j++) {
          let sum = 0;
          for (let r = 0; r < rank; r++) sum += a[i * rank + r]! * b[r * outDim + j]!;
          w[i * outDim + j] = base.data[i * outDim + j]! + scaling * sum;
        }
      }
    };
    list.forEach((_, k) => merge(k, Float64Array.from(factors[2 * k]!), Float64Array.from(factors[2 * k + 1]!)));
    const meanLoss = (): number => {
      const r = referenceNll(model.spec, reference, ids, targets, seqlen);
      return r.nll / r.count;
    };
    const h = 1e-4;
    // An attention and an MLP adapter of different blocks; for each, A's and B's steepest entry and a middle one.
    for (const k of [list.findIndex((a) => a.block === 0 && a.linear === "v_proj"), list.findIndex((a) => a.block === 1 && a.linear === "down_proj")]) {
      for (const part of [0, 1]) {
        const g = grads[2 * k + part]!;
        const steepest = Array.from(g.keys()).sort((x, y) => Math.abs(g[y]!) - Math.abs(g[x]!))[0]!;
        expect(Math.abs(g[steepest]!)).toBeGreaterThan(1e-4);
        for (const e of [steepest, Math.floor(g.length / 2)]) {
          const a = Float64Array.from(factors[2 * k]!);
          const b = Float64Array.from(factors[2 * k + 1]!);
          const edited = part === 0 ? a : b;
          const original = edited[e]!;
          edited[e] = original + h;
          merge(k, a, b);
          const up = meanLoss();
          edited[e] = original - h;
          merge(k, a, b);
          const down = meanLoss();
          edited[e] = original;
          merge(k, a, b);
          const numeric = (up - down) / (2 * h);
          expect(Math.abs(g[e]! - numeric), `${list[k]!.linear} ${part === 0 ? "A" : "B"}[${e}]`).toBeLessThan(1e-3 * Math.abs(g[steepest]!) + 1e-2 * Math.abs(numeric));
        }
      }
    }
  });

  it("lowers the training loss on a fixed batch over a few dozen steps", async () => {
    const o = optionsFor(model, { steps: 30, rank: 4, alpha: 8 });
    const fixed = loraBatch(o.tokens, 4, o.seqlen, 1234, 0);
    const result = await loraRecover(model.spec, model.globals, model.blocks, o);
    const before = decoderOf(model.spec, model);
    const after = decoderOf(model.spec, model, result.blocks);
    try {
      const [b, a] = [await lossOf(before, fixed, 4, o.seqlen), await lossOf(after, fixed, 4, o.seqlen)];
      expect(a).toBeLessThan(0.8 * b);
    } finally {
      before.dispose();
      after.dispose();
    }
    const mean = (xs: { loss: number }[]) => xs.reduce((s, l) => s + l.loss, 0) / xs.length;
    expect(mean(result.log.slice(-5))).toBeLessThan(mean(result.log.slice(0, 5)));
  });

  it("merged weights reproduce the adapted model's loss", async () => {
    const seqlen = 9;
    const ids = randomIds(2 * seqlen, model.spec.vocabSize, 3);
    const batch = { ids, targets: nextTokenTargets(ids, 2, seqlen) };
    const d = decoderOf(model.spec, model);
    const adapters = createAdapters(model.spec, 4, 8, 2);
    try {
      randomiseB(adapters, 8);
      const adapted = await lossOf(d, batch, 2, seqlen, adapters);
      const merged = decoderOf(model.spec, model, await mergeAdapters(d, model.blocks, adapters));
      try {
        const base = await lossOf(d, batch, 2, seqlen);
        expect(Math.abs(adapted - base)).toBeGreaterThan(1e-3);
        expect(Math.abs((await lossOf(merged, batch, 2, seqlen)) - adapted)).toBeLessThanOrEqual(1e-5 * adapted);
      } finally {
        merged.dispose();
      }
    } finally {
      disposeAdapters(adapters);
      d.dispose();
    }
  });

  it("a run's merged model scores the next batch as the adapters did in a longer run", async () => {
    const o = optionsFor(model, { steps: 3 });
    const short = await loraRecover(model.spec, model.globals, model.blocks, o);
    const long = await loraRecover(model.spec, model.globals, model.blocks, { ...o, steps: 4 });
    expect(long.log.slice(0, 3)).toEqual(short.log);
    const d = decoderOf(model.spec, model, short.blocks);
    try {
      const merged = await lossOf(d, loraBatch(o.tokens, o.batch, o.seqlen, o.seed, 3), o.batch, o.seqlen);
      expect(Math.abs(merged - long.log[3]!.loss)).toBeLessThanOrEqual(1e-5 * merged);
    } finally {
      d.dispose();
    }
  });

  it("a run stopped after a checkpoint resumes to exactly the uninterrupted result", async () => {
    const o = optionsFor(model, { steps: 5 });
    const plain = await loraRecover(model.spec, model.globals, model.blocks, o);
    const whole = await loraRecover(model.spec, model.globals, model.blocks, { ...o, checkpoint: { dir: join(root, "whole"), every: 2 } });
    expect(whole).toEqual(plain);
    expect(existsSync(join(root, "whole"))).toBe(false);

    const dir = join(root, "stopped");
    const stop = new Error("stopped");
    const stopped = await withoutLeaks(() =>
      rejection(() =>
        loraRecover(model.spec, model.globals, model.blocks, {
          ...o,
          checkpoint: { dir, every: 2 },
          onStep: (l) => {
            if (l.step === 3) throw stop;
          },
        }),
      ),
    );
    expect(stopped).toBe(stop);
    expect(JSON.parse(readFileSync(join(dir, "state.json"), "utf8")).step).toBe(2);

    const refused = await rejection(() => loraRecover(model.spec, model.globals, model.blocks, { ...o, checkpoint: { dir, every: 2 } }));
    expect(refused).toBeInstanceOf(UsageError);
    expect((refused as UsageError).problem).toMatch(/holds a stopped LoRA run: continue it with resume, or remove that folder/);

    const seen: number[] = [];
    const resumed = await withoutLeaks(() =>
      loraRecover(model.spec, model.globals, model.blocks, { ...o, checkpoint: { dir, every: 2 }, resume: true, onStep: (l) => seen.push(l.step) }),
    );
    expect(seen).toEqual([3, 4, 5]);
    expect(resumed.log).toEqual(plain.log);
    expect(resumed.blocks).toEqual(plain.blocks);
    expect(existsSync(dir)).toBe(false);
  });

  describe("refuses", () => {
    const o = optionsFor(model);
    const fails = (overrides: Partial<LoraOptions>, pattern: RegExp) =>
      expect(loraRecover(model.spec, model.globals, model.blocks, { ...o, ...overrides })).rejects.toThrow(pattern);

    it("bad options, naming them", async () => {
      await fails({ rank: 0 }, /rank must be an integer of at least 1, got 0/);
      // k_proj is [32, 16]: two key/value heads of 8.
      await fails({ rank: 17 }, /rank 17 exceeds block 0 linear k_proj of shape \[32, 16\]: the rank can be at most 16/);
      await fails({ steps: 0 }, /steps must be an integer of at least 1, got 0/);
      await fails({ lr: -1 }, /learning rate must be a positive number/);
      await fails({ tokens: new Int32Array(5) }, /needs at least 9 tokens/);
      await fails({ tokens: Int32Array.from({ length: 20 }, (_, i) => (i === 7 ? 99 : 1)) }, /token 99 at position 7 is outside the vocabulary of 61/);
      await fails({ checkpoint: { dir: join(root, "never"), every: 0 } }, /checkpoint interval/);
    });

    /** A checkpoint at step 2 of a run with options `o`. */
    const stoppedRun = async (name: string): Promise<string> => {
      const dir = join(root, name);
      const stop = new Error("stopped");
      await rejection(() =>
        loraRecover(model.spec, model.globals, model.blocks, {
          ...o,
          checkpoint: { dir, every: 2 },
          onStep: (l) => {
            if (l.step === 3) throw stop;
          },
        }),
      );
      return dir;
    };

    it("a checkpoint written with other settings, naming the file and the setting", async () => {
      const dir = await stoppedRun("other-settings");
      const resume = (overrides: Partial<LoraOptions>, blocks: readonly HostBlock[] = model.blocks) =>
        withoutLeaks(() => rejection(() => loraRecover(model.spec, model.globals, blocks, { ...o, ...overrides, checkpoint: { dir, every: 2 }, resume: true })));
      const cases: Array<[Partial<LoraOptions>, RegExp, (readonly HostBlock[])?]> = [
        [{ lr: 2e-2 }, /was written with lr 0.01, but this run has lr 0.02; resume with that run's settings, or remove .* to start afresh/],
        [{ seed: 6 }, /was written with seed 5, but this run has seed 6/],
        [{ rank: 3 }, /was written with rank 2, but this run has rank 3/],
        [{ tokens: patternTokens(model.spec.vocabSize, 300, 2) }, /was written for other training tokens/],
        [{}, /was written for other weights/, model.blocks.map((b, i) => (i === 1 ? { ...b, linears: { ...b.linears, q_proj: { weight: { shape: [32, 32], data: new Float32Array(32 * 32) } } } } : b))],
      ];
      for (const [overrides, pattern, blocks] of cases) {
        const error = await resume(overrides, blocks);
        expect(error).toBeInstanceOf(DataError);
        expect((error as DataError).file).toBe(join(dir, "state.json"));
        expect((error as DataError).problem).toMatch(pattern);
      }
      // Still there: a refused resume destroys nothing.
      expect(existsSync(join(dir, "state.json"))).toBe(true);
    });

    it("a damaged state.json, naming the file", async () => {
      const dir = await stoppedRun("damaged");
      for (const text of ['{"step": "three"}', "{not json"]) {
        writeFileSync(join(dir, "state.json"), text);
        const error = await rejection(() => loraRecover(model.spec, model.globals, model.blocks, { ...o, checkpoint: { dir, every: 2 }, resume: true }));
        expect(error).toBeInstanceOf(DataError);
        expect((error as DataError).file).toBe(join(dir, "state.json"));
        expect((error as DataError).problem).toMatch(/invalid LoRA state|not valid JSON/);
      }
    });

    it("a checkpoint folder evosparse did not write", async () => {
      const dir = join(root, "foreign");
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
      writeFileSync(join(dir, "notes.txt"), "mine");
      await fails({ checkpoint: { dir, every: 2 } }, /cannot hold LoRA checkpoints: it was not written by evosparse/);
      expect(readFileSync(join(dir, "notes.txt"), "utf8")).toBe("mine");
    });
  });
});

describe("LoRA recovery on other shapes", () => {
  const pruned = (() => {
    const m = randomModel("llama-gqa", 22);
    const smaller = removeGroups(m.spec, m.blocks, [
      { kvHeads: [0], channels: [0, 3, 5, 7, 11] },
      { kvHeads: [], channels: Array.from({ length: 20 }, (_, c) => 2 * c) },
    ]);
    return { spec: smaller.spec, globals: m.globals, blocks: smaller.blocks };
  })();
  const cases: Array<[string, RandomModel]> = [
    ["per-block shapes (structurally pruned)", pruned],
    ["biases (gpt2, fused qkv)", randomModel("gpt2", 23)],
    ["biases (opt, post-norm, projected)", randomModel("opt-post-projected", 24)],
  ];

  it.each(cases)("%s: starts from the base model, keeps shapes, biases and norms, and merges exactly", async (_, m) => {
    const o = optionsFor(m, { steps: 3 });
    const short = await withoutLeaks(() => loraRecover(m.spec, m.globals, m.blocks, o));
    const long = await loraRecover(m.spec, m.globals, m.blocks, { ...o, steps: 4 });
    short.blocks.forEach((b, i) => {
      const original = m.blocks[i]!;
      expect(b.attnNorm).toEqual(original.attnNorm);
      expect(b.mlpNorm).toEqual(original.mlpNorm);
      for (const [name, l] of Object.entries(original.linears)) {
        expect(b.linears[name]!.weight.shape).toEqual(l.weight.shape);
        expect(b.linears[name]!.bias).toEqual(l.bias);
        expect(b.linears[name]!.weight.data).not.toEqual(l.weight.data);
      }
    });
    const base = decoderOf(m.spec, m);
    const merged = decoderOf(m.spec, m, short.blocks);
    try {
      expect(short.log[0]!.loss).toBe(await lossOf(base, loraBatch(o.tokens, o.batch, o.seqlen, o.seed, 0), o.batch, o.seqlen));
      const next = await lossOf(merged, loraBatch(o.tokens, o.batch, o.seqlen, o.seed, 3), o.batch, o.seqlen);
      expect(Math.abs(next - long.log[3]!.loss)).toBeLessThanOrEqual(1e-5 * next);
    } finally {
      base.dispose();
      merged.dispose();
    }
  });

  it("checks the rank against each block's own shapes", async () => {
    // Block 0 kept one key/value head: k_proj is [32, 8] there, [32, 16] in block 1.
    await expect(loraRecover(pruned.spec, pruned.globals, pruned.blocks, optionsFor(randomModel("llama-gqa", 22), { rank: 9 }))).rejects.toThrow(
      /rank 9 exceeds block 0 linear k_proj of shape \[32, 8\]/,
    );
  });
});
