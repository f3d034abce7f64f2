import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { writeSafetensors, writeShardedSafetensors } from "../src/checkpoint/safetensors.ts";
import { writeHuggingFace } from "../src/checkpoint/write-huggingface.ts";
import { permuteRopeRows } from "../src/checkpoint/llama2c.ts";
import { CheckpointError } from "../src/errors.ts";
import { linearShapes } from "../src/model/spec.ts";
import { asset, haveAssets } from "./helpers/assets.ts";
import { hfConfigs, hfTensors, type HfCase } from "./helpers/hf-files.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-ckpt-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = () => {
  const d = join(root, `m${counter++}`);
  mkdirSync(d);
  return d;
};

/** Writes a Hugging Face folder from a config and a name -> tensor table, as transformers would. */
const writeFolder = (config: object, tensors: ReturnType<typeof hfTensors>, dtype: "F32" | "F16" | "BF16" = "F32") => {
  const dir = freshDir();
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSafetensors(
    join(dir, "model.safetensors"),
    [...tensors.entries()].map(([name, t]) => ({ name, dtype, shape: t.shape, data: t.data })),
  );
  return dir;
};

const expectCheckpointError = (f: () => unknown, pattern: RegExp) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CheckpointError);
    expect((e as Error).message).toMatch(pattern);
    return;
  }
  throw new Error("expected a CheckpointError");
};

describe("Hugging Face checkpoints", () => {
  for (const c of Object.keys(hfConfigs) as HfCase[]) {
    it(`${c}: opens, with weights in [in, out] layout matching the file`, () => {
      const config = hfConfigs[c];
      const tensors = hfTensors(c, 1);
      const dir = writeFolder(config, tensors);
      const ckpt = openCheckpointSync(dir);
      try {
        expect(ckpt.format).toBe("huggingface");
        expect(ckpt.spec.numLayers).toBe(2);
        const block = ckpt.readBlock(1);
        const shapes = linearShapes(ckpt.spec, 1);
        expect(Object.keys(block.linears).sort()).toEqual([...ckpt.spec.linears].sort());
        for (const name of ckpt.spec.linears) expect(block.linears[name]!.weight.shape).toEqual(shapes[name]);
        const g = ckpt.readGlobals();
        expect(g.embed.shape).toEqual([config.vocab_size, (config as { word_embed_proj_dim?: number }).word_embed_proj_dim ?? ckpt.spec.hiddenSize]);
      } finally {
        ckpt.close();
      }
    });
  }

  it("reads every linear exactly as stored (transposed from torch's [out, in])", () => {
    const tensors = hfTensors("llama", 2);
    const ckpt = openCheckpointSync(writeFolder(hfConfigs.llama, tensors));
    const q = ckpt.readBlock(0).linears["q"]!.weight;
    const file = tensors.get("model.layers.0.self_attn.q_proj.weight")!;
    const [out, inDim] = file.shape as [number, number];
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) expect(q.data[i * out + o]).toBe(file.data[o * inDim + i]);
    const gpt = hfTensors("gpt2", 2);
    const g = openCheckpointSync(writeFolder(hfConfigs.gpt2, gpt));
    expect(Array.from(g.readBlock(1).linears["mlp.c_fc"]!.weight.data)).toEqual(Array.from(gpt.get("transformer.h.1.mlp.c_fc.weight")!.data));
    ckpt.close();
    g.close();
  });

  it("writes and reads back the same weights (F32 exactly, F16 within half precision)", () => {
    const src = openCheckpointSync(writeFolder(hfConfigs.qwen2, hfTensors("qwen2", 3)));
    const blocks = [0, 1].map((i) => src.readBlock(i));
    const globals = src.readGlobals();
    for (const dtype of ["F32", "F16", "BF16"] as const) {
      const out = join(freshDir(), "copy");
      writeHuggingFace(out, src.spec, globals, blocks, { dtype });
      const back = openCheckpointSync(out);
      expect(back.spec).toEqual(src.spec);
      const a = blocks[1]!.linears["k"]!;
      const b = back.readBlock(1).linears["k"]!;
      const tol = { F32: 0, F16: 1e-3, BF16: 8e-3 }[dtype];
      a.weight.data.forEach((v, i) => expect(Math.abs(b.weight.data[i]! - v)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(v))));
      a.bias!.data.forEach((v, i) => expect(Math.abs(b.bias!.data[i]! - v)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(v))));
      back.close();
    }
    src.close();
  });

  it("reads a sharded checkpoint (model.safetensors.index.json) like a single file", () => {
    const tensors = hfTensors("mistral", 4);
    const dir = freshDir();
    writeFileSync(join(dir, "config.json"), JSON.stringify(hfConfigs.mistral));
    writeShardedSafetensors(dir, [...tensors].map(([name, t]) => ({ name, dtype: "BF16" as const, shape: t.shape, data: t.data })), 4000);
    expect(existsSync(join(dir, "model.safetensors"))).toBe(false);
    const single = openCheckpointSync(writeFolder(hfConfigs.mistral, tensors, "BF16"));
    const sharded = openCheckpointSync(dir);
    expect(sharded.spec).toEqual(single.spec);
    expect(sharded.spec.slidingWindow).toBe(4096);
    expect(Array.from(sharded.readBlock(1).linears["down"]!.weight.data)).toEqual(Array.from(single.readBlock(1).linears["down"]!.weight.data));
    expect(Array.from(sharded.readGlobals().embed.data)).toEqual(Array.from(single.readGlobals().embed.data));
    sharded.close();
    single.close();
  });

  it("rejects an unknown model_type, naming config.json", () => {
    const dir = writeFolder({ ...hfConfigs.llama, model_type: "mamba" }, hfTensors("llama", 1));
    expectCheckpointError(() => openCheckpointSync(dir), /config\.json: unknown model_type "mamba" \(supported: llama, mistral, qwen2, opt, gpt2; a record for another is given with --architecture FILE\)/);
  });

  it("rejects a config field of the wrong type, naming it", () => {
    const dir = writeFolder({ ...hfConfigs.llama, hidden_size: "wide" }, hfTensors("llama", 1));
    expectCheckpointError(() => openCheckpointSync(dir), /config\.json: invalid config: .*hidden_size/);
  });

  it("rejects a missing tensor, an extra tensor and a shape mismatch", () => {
    const missing = hfTensors("llama", 1);
    missing.delete("model.layers.1.mlp.down_proj.weight");
    expectCheckpointError(() => openCheckpointSync(writeFolder(hfConfigs.llama, missing)), /missing tensor model\.layers\.1\.mlp\.down_proj\.weight/);

    const extra = hfTensors("llama", 1);
    extra.set("model.layers.2.mlp.down_proj.weight", extra.get("model.layers.1.mlp.down_proj.weight")!);
    expectCheckpointError(() => openCheckpointSync(writeFolder(hfConfigs.llama, extra)), /model\.safetensors: unexpected tensor model\.layers\.2\.mlp\.down_proj\.weight/);

    const wrong = hfTensors("llama", 1);
    const up = wrong.get("model.layers.0.mlp.up_proj.weight")!;
    wrong.set("model.layers.0.mlp.up_proj.weight", { shape: [up.shape[1]!, up.shape[0]!], data: up.data });
    expectCheckpointError(() => openCheckpointSync(writeFolder(hfConfigs.llama, wrong)), /shape mismatch for model\.layers\.0\.mlp\.up_proj\.weight: file has \[16, 24\], config implies \[24, 16\]/);
  });

  it("rejects a truncated safetensors file and a folder without a model", () => {
    const dir = writeFolder(hfConfigs.llama, hfTensors("llama", 1));
    const file = join(dir, "model.safetensors");
    truncateSync(file, statSync(file).size - 10);
    expectCheckpointError(() => openCheckpointSync(dir), /model\.safetensors: .*(truncated|past the end)/);
    expectCheckpointError(() => openCheckpointSync(freshDir()), /neither a Hugging Face folder/);
    expectCheckpointError(() => openCheckpointSync(join(root, "nope")), /no such file or folder/);
  });

  it("any corruption of config.json is rejected with a CheckpointError, never a crash", () => {
    const dir = writeFolder(hfConfigs.llama, hfTensors("llama", 1));
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify({ ...hfConfigs.llama, num_hidden_layers: v }))), (text) => {
        writeFileSync(join(dir, "config.json"), text);
        try {
          openCheckpointSync(dir).close();
        } catch (e) {
          expect(e).toBeInstanceOf(CheckpointError);
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe("llama2.c checkpoints", () => {
  it("permuting q/k rows maps interleaved RoPE pairs to rotate-half pairs", () => {
    // Rows of one head, hd = 4: interleaved pairs (0,1), (2,3) become (0,2), (1,3).
    const rows = { shape: [4, 1], data: Float32Array.from([10, 11, 12, 13]) };
    expect(Array.from(permuteRopeRows(rows, 1).data)).toEqual([10, 12, 11, 13]);
  });

  describe.skipIf(!haveAssets)("stories260K", () => {
    it("reads the header as the assets README describes", () => {
      const ckpt = openCheckpointSync(asset("models", "stories260K", "stories260K.bin"));
      expect(ckpt.spec).toMatchObject({ hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8, numKvHeads: 4, vocabSize: 512, maxPositions: 512, tiedEmbeddings: true });
      expect(ckpt.tokenizerPath).toMatch(/tok512\.bin$/);
      const b = ckpt.readBlock(4);
      expect(b.linears["w1"]!.weight.shape).toEqual([64, 172]);
      expect(b.linears["wk"]!.weight.shape).toEqual([64, 32]);
      ckpt.close();
      // A folder holding one checkpoint works the same way.
      const viaFolder = openCheckpointSync(asset("models", "stories260K"));
      expect(viaFolder.spec).toEqual(ckpt.spec);
      viaFolder.close();
    });

    it("reads the version-1 export of the same weights identically", () => {
      // Rebuild stories260K as llama2.c's version-1 export: 256-byte header, norms first.
      const legacy = readFileSync(asset("models", "stories260K", "stories260K.bin"));
      const f = new Float32Array(legacy.buffer.slice(legacy.byteOffset + 28, legacy.byteOffset + legacy.length));
      const [dim, hid, L, V, seq] = [64, 172, 5, 512, 512];
      const kv = 32;
      const sizes = { embed: V * dim, rms_att: L * dim, wq: L * dim * dim, wk: L * kv * dim, wv: L * kv * dim, wo: L * dim * dim, rms_ffn: L * dim, w1: L * hid * dim, w2: L * dim * hid, w3: L * hid * dim, rms_final: dim };
      const at: Record<string, Float32Array> = {};
      let o = 0;
      for (const [k, n] of Object.entries(sizes)) {
        at[k] = f.subarray(o, o + n);
        o += n;
      }
      const header = Buffer.alloc(256);
      header.writeUInt32LE(0x616b3432, 0);
      header.writeInt32LE(1, 4);
      [dim, hid, L, 8, 4, V, seq].forEach((v, i) => header.writeInt32LE(v, 8 + 4 * i));
      header.writeUInt8(1, 36);
      const order = ["rms_att", "rms_ffn", "rms_final", "embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3"];
      const body = Buffer.concat(order.map((k) => Buffer.from(at[k]!.buffer.slice(at[k]!.byteOffset, at[k]!.byteOffset + at[k]!.byteLength))));
      const dir = freshDir();
      writeFileSync(join(dir, "v1.bin"), Buffer.concat([header, body]));
      const v1 = openCheckpointSync(join(dir, "v1.bin"), { tokenizer: asset("models", "stories260K", "tok512.bin") });
      const ref = openCheckpointSync(asset("models", "stories260K", "stories260K.bin"));
      expect(v1.spec).toEqual(ref.spec);
      for (const name of ref.spec.linears) expect(Array.from(v1.readBlock(3).linears[name]!.weight.data)).toEqual(Array.from(ref.readBlock(3).linears[name]!.weight.data));
      expect(Array.from(v1.readGlobals().embed.data)).toEqual(Array.from(ref.readGlobals().embed.data));
      v1.close();
      ref.close();
    });

    it("rejects truncated copies and trailing bytes", () => {
      const dir = freshDir();
      const file = join(dir, "model.bin");
      copyFileSync(asset("models", "stories260K", "stories260K.bin"), file);
      truncateSync(file, 1_000_000);
      expectCheckpointError(() => openCheckpointSync(file), /model\.bin: truncated file: 1000000 bytes, the header implies 1056540/);
      writeFileSync(file, Buffer.concat([readFileSync(asset("models", "stories260K", "stories260K.bin")), Buffer.alloc(8)]));
      expectCheckpointError(() => openCheckpointSync(file), /8 unexpected trailing bytes/);
      writeFileSync(file, Buffer.alloc(10));
      expectCheckpointError(() => openCheckpointSync(file), /truncated file/);
    });
  });
});
