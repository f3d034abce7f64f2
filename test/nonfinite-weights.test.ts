/**
 * A NaN or infinite weight in a checkpoint is a CheckpointError naming the file and the
 * tensor as soon as the weight is read, for every dtype and format; and a perplexity that
 * comes out non-finite from finite weights is an error, not a printed NaN.
 */
import { spawnSync } from "node:child_process";
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Effect } from "effect";
import { afterAll, describe, expect, it } from "vitest";
import { checkFiniteWeights, firstNonFinite } from "../src/checkpoint/host.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { openSafetensors, writeSafetensors, writeShardedSafetensors, type TensorToWrite } from "../src/checkpoint/safetensors.ts";
import type { StorageDtype } from "../src/checkpoint/types.ts";
import { defaultModel } from "../src/defaults.ts";
import { CheckpointError, DataError } from "../src/errors.ts";
import { evaluate } from "../src/jobs/eval.ts";
import { checkFiniteLoss } from "../src/eval/inputs.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { expectTaggedError } from "./helpers/errors.ts";
import { hfConfigs, hfTensors } from "./helpers/hf-files.ts";
import { mulberry32 } from "./helpers/random-model.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-nonfinite-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = (): string => {
  const d = join(root, `m${counter++}`);
  mkdirSync(d);
  return d;
};

const Q0 = "model.layers.0.self_attn.q_proj.weight";

/** A random LLaMA folder (hf-files' tensors) with `value` planted at `index` of tensor `name`. */
const plantedFolder = (dtype: StorageDtype, name: string, index: number, value: number): string => {
  const dir = freshDir();
  const tensors = hfTensors("llama", 3);
  tensors.get(name)!.data[index] = value;
  writeFileSync(join(dir, "config.json"), JSON.stringify(hfConfigs.llama));
  writeSafetensors(
    join(dir, "model.safetensors"),
    [...tensors].map(([n, t]) => ({ name: n, dtype, shape: t.shape, data: t.data })),
  );
  return dir;
};

describe("non-finite weights in a Hugging Face checkpoint", () => {
  for (const dtype of ["F32", "F16", "BF16"] as const) {
    it(`${dtype}: a NaN in a block's linear fails that block's read, naming the file and the tensor`, () => {
      const dir = plantedFolder(dtype, Q0, 17, NaN);
      const ckpt = openCheckpointSync(dir); // opening reads headers only
      try {
        expectTaggedError(CheckpointError, () => ckpt.readBlock(0), /^tensor model\.layers\.0\.self_attn\.q_proj\.weight holds NaN at index 17$/, join(dir, "model.safetensors"));
        expect(() => ckpt.readBlock(0)).toThrow(`${join(dir, "model.safetensors")}: tensor ${Q0} holds NaN at index 17`);
        // The other block and the globals are untouched.
        expect(ckpt.readBlock(1).linears["q"]!.weight.data.every(Number.isFinite)).toBe(true);
        expect(ckpt.readGlobals().embed.data.every(Number.isFinite)).toBe(true);
      } finally {
        ckpt.close();
      }
    });

    it(`${dtype}: infinities in norms and globals are named with their sign`, () => {
      const norm = plantedFolder(dtype, "model.layers.1.post_attention_layernorm.weight", 5, -Infinity);
      const a = openCheckpointSync(norm);
      expectTaggedError(CheckpointError, () => a.readBlock(1), /^tensor model\.layers\.1\.post_attention_layernorm\.weight holds -Infinity at index 5$/, join(norm, "model.safetensors"));
      a.close();
      const head = plantedFolder(dtype, "lm_head.weight", 0, Infinity);
      const b = openCheckpointSync(head);
      expectTaggedError(CheckpointError, () => b.readGlobals(), /^tensor lm_head\.weight holds \+Infinity at index 0$/, join(head, "model.safetensors"));
      b.close();
    });
  }

  it("F16: a value too large for half precision is stored as infinity and refused", () => {
    const dir = plantedFolder("F16", "model.layers.1.mlp.down_proj.weight", 40, 1e6);
    const ckpt = openCheckpointSync(dir);
    expectTaggedError(CheckpointError, () => ckpt.readBlock(1), /^tensor model\.layers\.1\.mlp\.down_proj\.weight holds \+Infinity at index 40$/);
    ckpt.close();
  });

  it("a sharded checkpoint names the shard that holds the tensor", () => {
    const dir = freshDir();
    const tensors = hfTensors("llama", 4);
    tensors.get("model.layers.1.self_attn.v_proj.weight")!.data[3] = NaN;
    writeFileSync(join(dir, "config.json"), JSON.stringify(hfConfigs.llama));
    const list: TensorToWrite[] = [...tensors].map(([n, t]) => ({ name: n, dtype: "F32", shape: t.shape, data: t.data }));
    writeShardedSafetensors(dir, list, 4096);
    const ckpt = openCheckpointSync(dir);
    try {
      ckpt.readBlock(1);
      throw new Error("expected a CheckpointError");
    } catch (e) {
      expect(e).toBeInstanceOf(CheckpointError);
      const { file, problem } = e as CheckpointError;
      expect(problem).toBe("tensor model.layers.1.self_attn.v_proj.weight holds NaN at index 3");
      expect(file).toMatch(/model-\d{5}-of-\d{5}\.safetensors$/);
      expect(openSafetensors(file).tensors.has("model.layers.1.self_attn.v_proj.weight")).toBe(true);
    } finally {
      ckpt.close();
    }
  });

  it("the generic safetensors reader stays faithful: it returns a stored NaN as it is (training state goes through it)", () => {
    const file = join(freshDir(), "state.safetensors");
    writeSafetensors(file, [{ name: "m/x", dtype: "F32", shape: [3], data: Float32Array.of(1, NaN, Infinity) }]);
    const st = openSafetensors(file);
    const data = st.read("m/x");
    st.close();
    expect(Number.isNaN(data[1])).toBe(true);
    expect(data[2]).toBe(Infinity);
  });
});

/** llama2.c's legacy export, laid out by hand: 7 int32, then float32 arrays in run.c's order. */
const LLAMA2C = { dim: 16, hidden: 24, layers: 2, heads: 4, kvHeads: 2, vocab: 32, seqLen: 8 };
const writeLlama2c = (plant: (arrays: Record<string, Float32Array>) => void, shared = false): string => {
  const { dim, hidden, layers: L, heads, kvHeads, vocab: V, seqLen } = LLAMA2C;
  const kv = (dim / heads) * kvHeads;
  const random = mulberry32(9);
  const array = (n: number) => Float32Array.from({ length: n }, () => 0.3 * (2 * random() - 1));
  const arrays: Record<string, Float32Array> = {
    embed: array(V * dim),
    rms_att: array(L * dim),
    wq: array(L * dim * dim),
    wk: array(L * kv * dim),
    wv: array(L * kv * dim),
    wo: array(L * dim * dim),
    rms_ffn: array(L * dim),
    w1: array(L * hidden * dim),
    w2: array(L * dim * hidden),
    w3: array(L * hidden * dim),
    rms_final: array(dim),
    freq_cis: array(seqLen * (dim / heads)),
    ...(shared ? {} : { wcls: array(V * dim) }),
  };
  plant(arrays);
  const header = Buffer.alloc(28);
  [dim, hidden, L, heads, kvHeads, shared ? V : -V, seqLen].forEach((v, i) => header.writeInt32LE(v, 4 * i));
  const file = join(freshDir(), "model.bin");
  writeFileSync(file, Buffer.concat([header, ...Object.values(arrays).map((a) => Buffer.from(a.buffer))]));
  return file;
};

describe("non-finite weights in a llama2.c checkpoint", () => {
  it("a NaN in a layer's matrix names the layer, the matrix and the index as stored", () => {
    const { dim } = LLAMA2C;
    const file = writeLlama2c((a) => (a.wq![1 * dim * dim + 17] = NaN));
    const ckpt = openCheckpointSync(file);
    try {
      expect(ckpt.readBlock(0).linears["wq"]!.weight.data.every(Number.isFinite)).toBe(true);
      expectTaggedError(CheckpointError, () => ckpt.readBlock(1), /^tensor layers\.1\.wq holds NaN at index 17$/, file);
      expect(() => ckpt.readBlock(1)).toThrow(`${file}: tensor layers.1.wq holds NaN at index 17`);
    } finally {
      ckpt.close();
    }
  });

  it("norms, the embedding and the classifier are named as run.c names them", () => {
    const { dim, hidden } = LLAMA2C;
    const cases: Array<[(a: Record<string, Float32Array>) => void, "block" | "globals", RegExp]> = [
      [(a) => (a.rms_ffn![dim + 2] = Infinity), "block", /^tensor layers\.1\.rms_ffn_weight holds \+Infinity at index 2$/],
      [(a) => (a.w2![hidden * dim + 7] = -Infinity), "block", /^tensor layers\.1\.w2 holds -Infinity at index 7$/],
      [(a) => (a.embed![33] = NaN), "globals", /^tensor token_embedding_table holds NaN at index 33$/],
      [(a) => (a.rms_final![3] = NaN), "globals", /^tensor rms_final_weight holds NaN at index 3$/],
      [(a) => (a.wcls![0] = NaN), "globals", /^tensor wcls holds NaN at index 0$/],
    ];
    for (const [plant, part, pattern] of cases) {
      const file = writeLlama2c(plant);
      const ckpt = openCheckpointSync(file);
      expectTaggedError(CheckpointError, () => (part === "block" ? ckpt.readBlock(1) : ckpt.readGlobals()), pattern, file);
      ckpt.close();
    }
    // The unused RoPE tables of the legacy export are never read, so never judged.
    const unused = writeLlama2c((a) => (a.freq_cis![0] = NaN), true);
    const ckpt = openCheckpointSync(unused);
    expect(() => ckpt.readGlobals()).not.toThrow();
    ckpt.close();
  });
});

describe("the finiteness scan", () => {
  it("finds the first non-finite value wherever it is, and nothing in finite data", () => {
    const data = Float32Array.from({ length: 1000 }, (_, i) => (i % 7) - 3 + 1e-3 * i);
    data[5] = 3.4e38;
    data[6] = -3.4e38;
    expect(firstNonFinite(data)).toBe(-1);
    for (const at of [0, 1, 499, 999]) {
      for (const v of [NaN, Infinity, -Infinity]) {
        const copy = data.slice();
        copy[at] = v;
        copy[Math.min(999, at + 3)] = NaN;
        expect(firstNonFinite(copy)).toBe(at);
      }
    }
    expect(firstNonFinite(new Float32Array(0))).toBe(-1);
    expect(() => checkFiniteWeights("f", "t", Float32Array.of(0, -0, 1e-45))).not.toThrow();
  });
});

// ---- the eval library and the real CLI, on copies of the shipped model (F16) ----

/** A copy of the shipped model whose safetensors can be patched in place. */
const copyOfDefaultModel = (): string => {
  const dir = freshDir();
  for (const name of readdirSync(defaultModel())) copyFileSync(join(defaultModel(), name), join(dir, name));
  return dir;
};

/** Overwrites one F16 element of a tensor in the file with raw half bits. */
const patchHalf = (file: string, tensor: string, index: number, bits: number): void => {
  const st = openSafetensors(file);
  const entry = st.tensors.get(tensor)!;
  st.close();
  expect(entry.dtype).toBe("F16");
  const fd = openSync(file, "r+");
  const half = Buffer.alloc(2);
  half.writeUInt16LE(bits, 0);
  writeSync(fd, half, 0, 2, entry.begin + 2 * index);
  closeSync(fd);
};

const HALF_NAN = 0x7e00;

describe("eval with non-finite weights or a non-finite loss", () => {
  const text = join(root, "text.txt");
  writeFileSync(text, "The jury said it did find that the city executive committee had over-all charge of the election. ".repeat(4));

  it("a NaN weight read while streaming is a typed CheckpointError naming the tensor, not a defect", async () => {
    const dir = copyOfDefaultModel();
    const file = join(dir, "model.safetensors");
    patchHalf(file, "model.layers.3.mlp.up_proj.weight", 100, HALF_NAN);
    const error = await Effect.runPromise(
      Effect.flip(evaluate({ model: dir, data: text, format: "text", seqlen: 16, maxWindows: 1, backend: "cpu", streamed: true })),
    );
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).file).toBe(file);
    expect((error as CheckpointError).problem).toBe("tensor model.layers.3.mlp.up_proj.weight holds NaN at index 100");
  });

  it("a loss that overflows with finite weights is a CheckpointError naming the model and the data", async () => {
    // Finite but enormous final-norm weights push the logits past float32's range.
    const dir = copyOfDefaultModel();
    const file = join(dir, "model.safetensors");
    const st = openSafetensors(file);
    const tensors: TensorToWrite[] = [...st.tensors].map(([name, e]) => {
      const data = st.read(name);
      if (name === "model.norm.weight") data.fill(3e38);
      return { name, dtype: "F32", shape: e.shape, data };
    });
    st.close();
    writeSafetensors(file, tensors);
    const error = await Effect.runPromise(
      Effect.flip(evaluate({ model: dir, data: text, format: "text", seqlen: 16, maxWindows: 2, backend: "cpu" })),
    );
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).file).toBe(dir);
    expect((error as CheckpointError).problem).toMatch(/^the model's loss is not finite \(NaN\) on .*text\.txt although its weights are finite/);
    expect((error as CheckpointError).problem).toContain(text);
  });

  it("checkFiniteLoss passes a finite perplexity and refuses NaN, infinity and an empty score", async () => {
    const scorer = (nll: number, count: number) => ({ passTokens: 1024, nllGroups: async () => [{ nll, count }] });
    const window = { ids: Int32Array.of(1, 2), targets: Int32Array.of(2, -1) };
    const results = new Map<string, Awaited<ReturnType<typeof perplexity>>>();
    for (const [nll, count] of [[2.5, 1], [NaN, 1], [Infinity, 1], [1000, 1], [0, 0]] as const) results.set(`${nll}/${count}`, await perplexity(scorer(nll, count), [window]));
    const run = (nll: number, count: number) => Effect.runSync(Effect.flip(checkFiniteLoss(results.get(`${nll}/${count}`)!, "m", "d.txt")));
    expect(() => Effect.runSync(checkFiniteLoss(results.get("2.5/1")!, "m", "d.txt"))).not.toThrow();
    for (const bad of [NaN, Infinity]) {
      const e = run(bad, 1);
      expect(e).toBeInstanceOf(CheckpointError);
      expect(e.file).toBe("m");
      expect(e.problem).toMatch(/loss is not finite .* on d\.txt/);
    }
    const huge = run(1000, 1);
    expect(huge).toBeInstanceOf(CheckpointError);
    expect(huge.problem).toMatch(/1000 nats per token on d\.txt gives an infinite perplexity/);
    const empty = run(0, 0);
    expect(empty).toBeInstanceOf(DataError);
    expect(empty.file).toBe("d.txt");
  });

  it("the eval command exits 1 with one line naming the file and the tensor", () => {
    const dir = copyOfDefaultModel();
    const file = join(dir, "model.safetensors");
    patchHalf(file, Q0, 17, HALF_NAN);
    const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
    const r = spawnSync(process.execPath, [bin, "eval", "--model", dir, "--data", text, "--seqlen", "16", "--backend", "cpu"], {
      encoding: "utf8",
      env: { ...process.env, CI: "true" },
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    // tfjs's cpu backend prints its own "install the node backend" banner on first use; that is not ours.
    const banner = (line: string) => line === "" || /^=+$/.test(line) || line.startsWith("Hi, looks like you are running TensorFlow.js");
    expect(r.stderr.split("\n").filter((line) => !banner(line))).toEqual([`evosparse: ${file}: tensor ${Q0} holds NaN at index 17`]);
  });
});
