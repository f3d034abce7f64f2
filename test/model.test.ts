import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointError, DataError, UsageError } from "../src/errors.ts";
import { Decoder } from "../src/model/decoder.ts";
import { blockForward, blockToTensors } from "../src/model/block.ts";
import { ForwardTables, queryChunkBounds } from "../src/model/tables.ts";
import { sumAll } from "../src/model/ops.ts";
import type { HostBlock, HostTensor } from "../src/model/spec.ts";
import {
  FAMILY_CASES,
  blockSourceOf,
  mulberry32,
  nextTokenTargets,
  randomIds,
  randomModel,
  type FamilyCase,
  type RandomModel,
} from "./helpers/random-model.ts";
import { referenceLogits, referenceNll, referenceWeights, type ReferenceWeights } from "./helpers/reference.ts";
import { BACKEND_CASES, skipNotice, type TestBackend } from "./helpers/backends.ts";
import { initBackend } from "../src/backend/backend.ts";
import { backendTraits, setBackendTraits } from "../src/model/backend-traits.ts";

type BackendName = TestBackend;

const useBackend = async (name: BackendName): Promise<void> => {
  await initBackend(name);
};

const decoderOf = (m: RandomModel, options: Parameters<typeof Decoder.create>[3] = {}): Decoder =>
  Decoder.create(m.spec, m.globals, blockSourceOf(m), options);

const maxAbs = (xs: ArrayLike<number>): number => {
  let top = 0;
  for (let i = 0; i < xs.length; i++) top = Math.max(top, Math.abs(xs[i]));
  return top;
};

/** All logits of a batch of windows, through the public block-by-block API. */
const allLogits = async (d: Decoder, ids: Int32Array, batch: number, seqlen: number): Promise<Float32Array> => {
  let x = d.embed(ids, batch, seqlen);
  for (let i = 0; i < d.numBlocks; i++) {
    const next = d.runBlock(i, x, batch, seqlen);
    x.dispose();
    x = next;
  }
  const logits = d.headLogits(x);
  x.dispose();
  // Asynchronous: GPU backends have no synchronous reads.
  const values = Float32Array.from((await logits.data()) as Float32Array);
  logits.dispose();
  return values;
};

/** Largest |tfjs − reference| over the logits of every window, and the largest |reference|. */
const logitsGap = (m: RandomModel, got: Float32Array, ids: Int32Array, seqlen: number): { worst: number; scale: number } => {
  const reference = referenceWeights(m.globals, m.blocks);
  const vocab = m.spec.vocabSize;
  let worst = 0;
  let scale = 0;
  for (let start = 0; start < ids.length; start += seqlen) {
    referenceLogits(m.spec, reference, ids.subarray(start, start + seqlen)).forEach((row, t) => {
      scale = Math.max(scale, maxAbs(row));
      row.forEach((v, k) => {
        worst = Math.max(worst, Math.abs(v - got[(start + t) * vocab + k]));
      });
    });
  }
  return { worst, scale };
};

const withDecoder = async <T>(d: Decoder, f: (d: Decoder) => T | Promise<T>): Promise<T> => {
  try {
    return await f(d);
  } finally {
    d.dispose();
  }
};

beforeAll(async () => {
  await useBackend("wasm");
});

describe.each(BACKEND_CASES)("on the $name backend", ({ name: backend, missing }) => {
  if (skipNotice(`the ${backend} backend`, missing)) {
    it.skip(`needs the ${backend} backend: ${missing}`, () => {});
    return;
  }
  beforeAll(async () => {
    await useBackend(backend);
  });
  afterAll(async () => {
    await useBackend("wasm");
  });

  describe.each(FAMILY_CASES)("the %s decoder against the float64 reference", (family: FamilyCase) => {
    const model = randomModel(family, 1000 + FAMILY_CASES.indexOf(family));
    const batch = 2;
    const seqlen = 13;
    const ids = randomIds(batch * seqlen, model.spec.vocabSize, 7);

    it("gives the reference logits for every position of every window", async () => {
      const got = await withDecoder(decoderOf(model), (d) => allLogits(d, ids, batch, seqlen));
      const { worst, scale } = logitsGap(model, got, ids, seqlen);
      // Logits are O(1–10): a mistake anywhere in a block moves them far more than float32 rounding.
      expect(scale).toBeGreaterThan(1);
      expect(worst).toBeLessThan(2e-4 * Math.max(1, scale));
    });

    it("gives the reference NLL and count", async () => {
      const targets = nextTokenTargets(ids, batch, seqlen);
      targets[3] = -1;
      const got = await withDecoder(decoderOf(model), (d) => d.nll(ids, targets, batch, seqlen));
      const want = referenceNll(model.spec, referenceWeights(model.globals, model.blocks), ids, targets, seqlen);
      expect(got.count).toBe(want.count);
      expect(got.count).toBe(2 * (seqlen - 1) - 1);
      expect(Math.abs(got.nll - want.nll)).toBeLessThan(1e-4 * want.nll);
    });

    it("gives the reference logits one position at a time", async () => {
      const single = ids.subarray(0, seqlen);
      const want = referenceLogits(model.spec, referenceWeights(model.globals, model.blocks), single);
      await withDecoder(decoderOf(model), async (d) => {
        for (const position of [0, 5, seqlen - 1]) {
          const got = await d.logitsAt(single, position);
          const row = want[position];
          expect(got.length).toBe(model.spec.vocabSize);
          expect(maxAbs(got.map((v, k) => v - row[k]))).toBeLessThan(2e-4 * Math.max(1, maxAbs(row)));
        }
      });
    });
  });

  it.each(["llama-gqa", "gpt2"] as const)(
    "%s: long windows, where the queries are split into causal chunks, match the reference",
    async (family) => {
      const seqlen = 530;
      expect(queryChunkBounds(seqlen).length).toBeGreaterThan(1);
      const model = randomModel(family, 5, {
        vocabSize: 23,
        hiddenSize: 16,
        numLayers: 1,
        numHeads: 2,
        headDim: 8,
        intermediateSize: 24,
        maxPositions: 600,
      });
      const ids = randomIds(seqlen, 23, 11);
      const changed = Int32Array.from(ids);
      changed[400] = (ids[400] + 1) % 23;
      const [got, gotChanged] = await withDecoder(decoderOf(model), async (d) => [
        await allLogits(d, ids, 1, seqlen),
        await allLogits(d, changed, 1, seqlen),
      ]);
      const { worst, scale } = logitsGap(model, got, ids, seqlen);
      expect(worst).toBeLessThan(2e-4 * Math.max(1, scale));
      // Position 400 lies in the last chunk: nothing before it may move.
      expect(maxAbs(got.subarray(0, 400 * 23).map((v, i) => v - gotChanged[i]))).toBe(0);
      expect(maxAbs(got.subarray(400 * 23).map((v, i) => v - gotChanged[400 * 23 + i]))).toBeGreaterThan(1e-3);
    },
  );
});

describe("the two attention paths", () => {
  // Batched attention is the GPU backends' path; here the wasm backend is sent down it.
  it.each(["llama-gqa", "gpt2", "opt-post-projected"] as const)("%s: batched heads give the head-by-head logits and gradients", async (family) => {
    await useBackend("wasm");
    // Long enough for two query chunks; small enough to differentiate quickly on cpu.
    const model = randomModel(family, 91, { vocabSize: 23, hiddenSize: 16, numLayers: 2, numHeads: 4, headDim: 4, intermediateSize: 24, maxPositions: 600 });
    if (family === "llama-gqa") expect(model.spec.numKvHeads).toBeLessThan(model.spec.numHeads);
    const seqlen = 530;
    const ids = randomIds(2 * seqlen, model.spec.vocabSize, 3);
    const targets = nextTokenTargets(ids, 2, seqlen);
    const run = async (batched: boolean) => {
      const before = setBackendTraits("wasm", { ...backendTraits("wasm"), batchedAttention: batched });
      try {
        return await withDecoder(decoderOf(model, { trainable: true }), async (d) => {
          const nll = await d.nll(ids, targets, 2, seqlen);
          const variables = [...d.parameters().values()] as tf.Variable[];
          const { value, grads } = tf.variableGrads(() => d.lossTensor(ids, targets, 2, seqlen), variables);
          const gradient = await tf.concat(Object.values(grads).map((g) => g.flatten())).data();
          tf.dispose([value, ...Object.values(grads)]);
          return { nll, gradient };
        });
      } finally {
        setBackendTraits("wasm", before);
      }
    };
    const [perHead, batched] = [await run(false), await run(true)];
    expect(Math.abs(batched.nll.nll - perHead.nll.nll)).toBeLessThan(1e-5 * perHead.nll.nll);
    expect(batched.gradient.length).toBe(perHead.gradient.length);
    const scale = Math.max(...perHead.gradient.map(Math.abs));
    expect(maxAbs(batched.gradient.map((g, i) => g - perHead.gradient[i]))).toBeLessThan(1e-4 * scale);
  });
});

describe("decoder invariants", () => {
  const familyArb = fc.constantFrom(...FAMILY_CASES);

  it("is causal: changing token t never changes the logits before t", async () => {
    await fc.assert(
      fc.asyncProperty(familyArb, fc.integer({ min: 1, max: 1e6 }), fc.integer({ min: 1, max: 10 }), async (family, seed, t) => {
        const model = randomModel(family, seed);
        const seqlen = 11;
        const ids = randomIds(seqlen, model.spec.vocabSize, seed + 1);
        const changed = Int32Array.from(ids);
        changed[t] = (ids[t] + 1 + (seed % (model.spec.vocabSize - 1))) % model.spec.vocabSize;
        const vocab = model.spec.vocabSize;
        const [a, b] = await withDecoder(decoderOf(model), async (d) => [await allLogits(d, ids, 1, seqlen), await allLogits(d, changed, 1, seqlen)]);
        expect(maxAbs(a.subarray(0, t * vocab).map((v, i) => v - b[i]))).toBeLessThan(1e-6);
        expect(maxAbs(a.subarray(t * vocab, (t + 1) * vocab).map((v, i) => v - b[t * vocab + i]))).toBeGreaterThan(1e-4);
      }),
      { numRuns: 12 },
    );
  });

  it("scores a batch of windows exactly as each window alone", async () => {
    await fc.assert(
      fc.asyncProperty(familyArb, fc.integer({ min: 1, max: 1e6 }), fc.integer({ min: 2, max: 12 }), async (family, seed, seqlen) => {
        const model = randomModel(family, seed);
        const ids = randomIds(2 * seqlen, model.spec.vocabSize, seed + 2);
        const targets = nextTokenTargets(ids, 2, seqlen);
        await withDecoder(decoderOf(model), async (d) => {
          const both = await d.nll(ids, targets, 2, seqlen);
          const first = await d.nll(ids.subarray(0, seqlen), targets.subarray(0, seqlen), 1, seqlen);
          const second = await d.nll(ids.subarray(seqlen), targets.subarray(seqlen), 1, seqlen);
          expect(both.count).toBe(first.count + second.count);
          expect(Math.abs(both.nll - (first.nll + second.nll))).toBeLessThan(1e-5 * both.nll);
          const batched = await allLogits(d, ids, 2, seqlen);
          const alone = await allLogits(d, ids.subarray(seqlen), 1, seqlen);
          const offset = seqlen * model.spec.vocabSize;
          expect(maxAbs(alone.map((v, i) => v - batched[offset + i]))).toBeLessThan(1e-5 * Math.max(1, maxAbs(alone)));
        });
      }),
      { numRuns: 12 },
    );
  });

  it("gives the same NLL streamed as resident, streaming one block's tensors at a time", async () => {
    await fc.assert(
      fc.asyncProperty(familyArb, fc.integer({ min: 1, max: 1e6 }), async (family, seed) => {
        const model = randomModel(family, seed);
        const seqlen = 9;
        const ids = randomIds(2 * seqlen, model.spec.vocabSize, seed + 3);
        const targets = nextTokenTargets(ids, 2, seqlen);
        const resident = await withDecoder(decoderOf(model), (d) => d.nll(ids, targets, 2, seqlen));
        const tensorsAtLoad: number[] = [];
        const streamedDecoder = Decoder.create(
          model.spec,
          model.globals,
          blockSourceOf(model, () => tensorsAtLoad.push(tf.memory().numTensors)),
          { streamed: true },
        );
        const streamed = await withDecoder(streamedDecoder, async (d) => {
          // The first run also builds the per-length tables; count tensors on the second.
          await d.nll(ids, targets, 2, seqlen);
          tensorsAtLoad.length = 0;
          return d.nll(ids, targets, 2, seqlen);
        });
        expect(streamed).toEqual(resident);
        expect(tensorsAtLoad.length).toBe(model.spec.numLayers);
        // Every block found the same number of live tensors: the previous block's weights were gone.
        expect(new Set(tensorsAtLoad).size).toBe(1);
      }),
      { numRuns: 10 },
    );
  });

  it("leaves no tensor behind after forwards, losses and gradients", async () => {
    await fc.assert(
      fc.asyncProperty(familyArb, fc.integer({ min: 1, max: 1e6 }), fc.boolean(), async (family, seed, streamed) => {
        const before = tf.memory().numTensors;
        const model = randomModel(family, seed);
        const seqlen = 7;
        const ids = randomIds(2 * seqlen, model.spec.vocabSize, seed);
        const targets = nextTokenTargets(ids, 2, seqlen);
        const d = decoderOf(model, { streamed, trainable: !streamed });
        await d.nll(ids, targets, 2, seqlen);
        const start = tf.memory().numTensors;
        await d.nll(ids, targets, 2, seqlen);
        await d.logitsAt(ids.subarray(0, seqlen));
        await allLogits(d, ids, 2, seqlen);
        expect(tf.memory().numTensors).toBe(start);
        if (!streamed) {
          d.lossTensor(ids, targets, 2, seqlen).dispose();
          const { value, grads } = tf.variableGrads(
            () => d.lossTensor(ids, targets, 2, seqlen),
            [...d.parameters().values()] as tf.Variable[],
          );
          value.dispose();
          tf.dispose(Object.values(grads));
          expect(tf.memory().numTensors).toBe(start);
        }
        d.dispose();
        expect(tf.memory().numTensors).toBe(before);
      }),
      { numRuns: 10 },
    );
  });
});

/** The float64 array holding a named parameter of the reference copy. */
const referenceArray = (ref: ReferenceWeights, name: string): Float64Array => {
  const globals: Record<string, Float64Array | undefined> = {
    embed: ref.embed,
    positions: ref.positions,
    lmHead: ref.lmHead,
    projectIn: ref.projectIn,
    projectOut: ref.projectOut,
    "finalNorm.weight": ref.finalNormWeight,
    "finalNorm.bias": ref.finalNormBias,
  };
  if (name in globals) return globals[name]!;
  const match = /^blocks\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (!match) throw new Error(`no reference array for ${name}`);
  const block = ref.blocks[Number(match[1])];
  const part = match[2];
  const kind = match[3];
  if (part === "attnNorm") return kind === "weight" ? block.attnNormWeight : block.attnNormBias!;
  if (part === "mlpNorm") return kind === "weight" ? block.mlpNormWeight : block.mlpNormBias!;
  const l = block.linears[part];
  return kind === "weight" ? l.weight : l.bias!;
};

describe.each(BACKEND_CASES)("gradients on the $name backend", ({ name: backend, missing }) => {
  if (skipNotice(`the ${backend} backend`, missing)) {
    it.skip(`needs the ${backend} backend: ${missing}`, () => {});
    return;
  }
  beforeAll(async () => {
    await useBackend(backend);
  });
  afterAll(async () => {
    await useBackend("wasm");
  });

  it.each(["llama-gqa", "qwen2", "gpt2", "opt-post-projected"] as const)(
    "%s: tf.variableGrads of the loss matches float64 finite differences of the reference",
    async (family) => {
      const model = randomModel(family, 77);
      const { spec } = model;
      const batch = 2;
      const seqlen = 6;
      const ids = randomIds(batch * seqlen, spec.vocabSize, 78);
      const targets = nextTokenTargets(ids, batch, seqlen);
      const roles = spec.roles;
      const names = [
        `blocks.0.${roles.q ?? roles.qkv}.weight`,
        `blocks.1.${roles.down}.weight`,
        `blocks.1.${roles.gate ?? roles.up}.weight`,
        "blocks.0.attnNorm.weight",
        "blocks.1.mlpNorm.weight",
        "embed",
      ];
      if (spec.family === "qwen2") names.push("blocks.0.k_proj.bias");
      if (spec.family === "gpt2" || spec.family === "opt") names.push(`blocks.0.${roles.o}.bias`, "blocks.0.attnNorm.bias", "positions");
      if (spec.finalNorm) names.push("finalNorm.weight");
      if (spec.embedDim !== spec.hiddenSize) names.push("projectIn", "projectOut");
      if (!spec.tiedEmbeddings) names.push("lmHead");

      const d = decoderOf(model, { trainable: true });
      try {
        const params = d.parameters();
        const variables = names.map((n) => {
          const v = params.get(n);
          if (!v) throw new Error(`missing parameter ${n}`);
          return v as tf.Variable;
        });
        const { value, grads } = tf.variableGrads(() => d.lossTensor(ids, targets, batch, seqlen), variables);
        const loss = (await value.data())[0];
        value.dispose();
        const ref = referenceWeights(model.globals, model.blocks);
        const meanNll = (): number => {
          const r = referenceNll(spec, ref, ids, targets, seqlen);
          return r.nll / r.count;
        };
        expect(Math.abs(loss - meanNll())).toBeLessThan(1e-4 * loss);
        const random = mulberry32(79);
        const step = 1e-4;
        for (const [i, name] of names.entries()) {
          const g = (await grads[variables[i].name].data()) as Float32Array;
          const scale = maxAbs(g);
          expect(scale).toBeGreaterThan(0);
          // The two steepest entries and one at random.
          const order = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]) - Math.abs(g[a]));
          const entries = [order[0], order[1], Math.floor(random() * g.length)];
          const w = referenceArray(ref, name);
          for (const e of entries) {
            const original = w[e];
            w[e] = original + step;
            const up = meanNll();
            w[e] = original - step;
            const down = meanNll();
            w[e] = original;
            const numeric = (up - down) / (2 * step);
            expect(Math.abs(g[e] - numeric), `${name}[${e}]: ${g[e]} vs ${numeric}`).toBeLessThan(
              1e-3 * scale + 1e-2 * Math.abs(numeric),
            );
          }
        }
        tf.dispose(Object.values(grads));
      } finally {
        d.dispose();
      }
    },
  );

  it("differentiates blockForward with respect to its input, inside tf.grad", async () => {
    const model = randomModel("mistral", 90);
    const seqlen = 5;
    const tables = new ForwardTables(model.spec);
    const w = blockToTensors(model.spec, 0, model.blocks[0]);
    const x = tf.tensor2d(
      Float32Array.from({ length: seqlen * model.spec.hiddenSize }, (_, i) => Math.sin(i)),
      [seqlen, model.spec.hiddenSize],
    );
    try {
      const f = (input: tf.Tensor2D): tf.Scalar => tf.sum(tf.square(blockForward(model.spec, 0, w, input, 1, seqlen, tables)));
      const g = tf.grad(f as (input: tf.Tensor) => tf.Tensor)(x);
      const analytic = (await g.data())[3];
      g.dispose();
      const at = async (delta: number): Promise<number> => {
        const value = tf.tidy(() => {
          const shifted = tf.add(x, tf.oneHot(tf.tensor1d([3], "int32"), seqlen * model.spec.hiddenSize).reshape(x.shape).mul(delta));
          return f(shifted as tf.Tensor2D);
        });
        const [v] = await value.data();
        value.dispose();
        return v;
      };
      const numeric = ((await at(1e-2)) - (await at(-1e-2))) / 2e-2;
      expect(Math.abs(analytic - numeric)).toBeLessThan(2e-2 * Math.max(1, Math.abs(numeric)));
    } finally {
      tables.dispose();
      x.dispose();
      tf.dispose(Object.values(w.linears).flatMap((l) => [l.weight, l.bias].filter((t) => t !== undefined)));
      tf.dispose([w.attnNorm.weight, w.mlpNorm.weight]);
    }
  });
});

describe("replacing blocks", () => {
  it("setBlock makes the model score exactly like one built with the new block, without leaking", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...FAMILY_CASES), fc.integer({ min: 1, max: 1e6 }), fc.boolean(), async (family, seed, streamed) => {
        const model = randomModel(family, seed);
        const other = randomModel(family, seed + 1);
        const replaced: RandomModel = { ...model, blocks: [model.blocks[0], other.blocks[1]] };
        const seqlen = 8;
        const ids = randomIds(seqlen, model.spec.vocabSize, seed);
        const targets = nextTokenTargets(ids, 1, seqlen);
        const want = await withDecoder(decoderOf(replaced), (d) => d.nll(ids, targets, 1, seqlen));
        await withDecoder(decoderOf(model, { streamed }), async (d) => {
          const original = await d.nll(ids, targets, 1, seqlen);
          expect(original.nll).not.toBe(want.nll);
          const count = tf.memory().numTensors;
          d.setBlock(1, other.blocks[1]);
          expect(tf.memory().numTensors).toBe(count);
          expect(await d.nll(ids, targets, 1, seqlen)).toEqual(want);
          d.setBlock(1, blockToTensors(model.spec, 1, model.blocks[1]));
          expect(await d.nll(ids, targets, 1, seqlen)).toEqual(original);
          d.setBlock(1, other.blocks[1]);
          expect(await d.nll(ids, targets, 1, seqlen)).toEqual(want);
          expect(tf.memory().numTensors).toBe(count);
        });
      }),
      { numRuns: 8 },
    );
  });
});

describe("bad input", () => {
  const model = randomModel("gpt2", 3);
  const resize = (_original: HostTensor, shape: number[]): HostTensor => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });

  it("rejects a block linear of the wrong shape, naming it, and leaks nothing", async () => {
    const before = tf.memory().numTensors;
    const bad: HostBlock = {
      ...model.blocks[1],
      linears: { ...model.blocks[1].linears, "mlp.c_fc": { weight: resize(model.blocks[1].linears["mlp.c_fc"].weight, [32, 47]) } },
    };
    const create = () => Decoder.create(model.spec, model.globals, blockSourceOf({ ...model, blocks: [model.blocks[0], bad] }));
    expect(create).toThrow(CheckpointError);
    expect(create).toThrow(/block 1 linear mlp\.c_fc weight has shape \[32, 47\]/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it("rejects missing weights and data of the wrong length", async () => {
    const noNorm = { ...model.blocks[0], mlpNorm: undefined } as unknown as HostBlock;
    expect(() => Decoder.create(model.spec, model.globals, blockSourceOf({ ...model, blocks: [noNorm, model.blocks[1]] }))).toThrow(
      /block 0 MLP norm is missing/,
    );
    const short = { ...model.globals, embed: { shape: model.globals.embed.shape, data: new Float32Array(5) } };
    expect(() => Decoder.create(model.spec, short, blockSourceOf(model))).toThrow(CheckpointError);
    expect(() => Decoder.create(model.spec, { ...model.globals, positions: undefined }, blockSourceOf(model))).toThrow(/position table/);
  });

  it("rejects a block count or head layout that contradicts the spec", async () => {
    expect(() => Decoder.create(model.spec, model.globals, { numBlocks: 1, load: () => model.blocks[0] })).toThrow(CheckpointError);
    expect(() => Decoder.create({ ...model.spec, numKvHeads: 3 }, model.globals, blockSourceOf(model))).toThrow(
      /cannot be shared among 3/,
    );
  });

  it("rejects token ids, targets and windows that do not fit the model", async () => {
    await withDecoder(decoderOf(model), async (d) => {
      const ids = randomIds(8, model.spec.vocabSize, 1);
      const targets = nextTokenTargets(ids, 1, 8);
      expect(() => d.nll(Int32Array.from([...ids.subarray(0, 7), 61]), targets, 1, 8)).toThrow(DataError);
      expect(() => d.nll(Int32Array.from([-3, ...ids.subarray(1)]), targets, 1, 8)).toThrow(DataError);
      expect(() => d.nll(ids, Int32Array.from([...targets.subarray(0, 7), 99]), 1, 8)).toThrow(/target token 99/);
      expect(() => d.nll(ids, targets, 2, 8)).toThrow(UsageError);
      expect(() => d.nll(ids, targets.subarray(1), 1, 8)).toThrow(UsageError);
      expect(() => d.nll(ids, targets, 1, 0)).toThrow(UsageError);
      const long = randomIds(41, model.spec.vocabSize, 2);
      expect(() => d.nll(long, nextTokenTargets(long, 1, 41), 1, 41)).toThrow(/longer than the 40 positions/);
      const windowed = Decoder.create({ ...model.spec, slidingWindow: 6 }, model.globals, blockSourceOf(model));
      expect(() => windowed.nll(ids, targets, 1, 8)).toThrow(/sliding attention span of 6/);
      windowed.dispose();
      expect(() => d.runBlock(2, tf.zeros([8, 32]) as tf.Tensor2D, 1, 8)).toThrow(UsageError);
      expect(() => d.logitsAt(ids, 8)).toThrow(UsageError);
      expect(() => d.lossTensor(ids, new Int32Array(8).fill(-1), 1, 8)).toThrow(/no position is scored/);
      expect(await d.nll(ids, new Int32Array(8).fill(-1), 1, 8)).toEqual({ nll: 0, count: 0 });
    });
  });

  it("refuses what a streamed or disposed model cannot do", async () => {
    expect(() => decoderOf(model, { streamed: true, trainable: true })).toThrow(UsageError);
    const d = decoderOf(model, { streamed: true });
    const ids = randomIds(4, model.spec.vocabSize, 1);
    expect(() => d.lossTensor(ids, nextTokenTargets(ids, 1, 4), 1, 4)).toThrow(UsageError);
    expect(() => d.getBlock(0)).toThrow(UsageError);
    expect(() => d.parameters()).toThrow(UsageError);
    d.dispose();
    expect(() => d.nll(ids, nextTokenTargets(ids, 1, 4), 1, 4)).toThrow(/disposed/);
  });
});

describe("sumAll", () => {
  it("sums any number of tensors as addN does, in groups a WebGPU shader can bind", async () => {
    await useBackend("wasm");
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 1e6 }), async (count, seed) => {
        const tensors = Array.from({ length: count }, (_, i) => tf.randomUniform([3, 2], -1, 1, "float32", seed + i));
        const [got, want] = [sumAll(tensors), tf.addN(tensors)];
        const [a, b] = [await got.data(), await want.data()];
        a.forEach((v, i) => expect(Math.abs(v - b[i])).toBeLessThan(1e-5));
        tf.dispose([...tensors, got, want]);
      }),
      { numRuns: 30 },
    );
    expect(() => sumAll([])).toThrow(RangeError);
  });
});
