/**
 * Per-block shapes: blocks with their own numbers of query heads, key/value heads and MLP
 * width (what structured pruning leaves), through config.json (evosparse_block_shapes),
 * the loader, the decoder against the float64 reference, the writer and the allocation
 * layout.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blockParams, layoutOf } from "../src/allocation/allocation.ts";
import { nmMismatch } from "../src/allocation/nm.ts";
import { initBackend } from "../src/backend/backend.ts";
import { BLOCK_SHAPES_KEY } from "../src/checkpoint/architectures/architecture.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { writeSafetensors } from "../src/checkpoint/safetensors.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { writeHuggingFace } from "../src/checkpoint/write-huggingface.ts";
import { CheckpointError } from "../src/errors.ts";
import { Decoder } from "../src/model/decoder.ts";
import type { BlockShape, HostBlock, ModelSpec } from "../src/model/spec.ts";
import { initWeights } from "../src/train/init.ts";
import { expectTaggedError } from "./helpers/errors.ts";
import { hfConfigs, hfTensors, referenceFromHf, type HfBlockShape, type HfCase } from "./helpers/hf-files.ts";
import { FAMILY_CASES, blockSourceOf, nextTokenTargets, randomIds, randomModel, type FamilyCase } from "./helpers/random-model.ts";
import { referenceLogits, referenceNll, referenceWeights, type ReferenceWeights } from "./helpers/reference.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-block-shapes-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend("wasm");
});

let folders = 0;
const freshDir = (): string => {
  const dir = join(root, `m${folders++}`);
  mkdirSync(dir, { recursive: true });
  return dir;
};

/** Grouped-query families: block 0 keeps the config's 4 heads / 2 kv heads / width 24, block 1 is cut to 2 / 1 / 16. */
const GQA_SHAPES: readonly HfBlockShape[] = [
  { heads: 4, kvHeads: 2, ffn: 24 },
  { heads: 2, kvHeads: 1, ffn: 16 },
];
/** Multi-head families (OPT, GPT-2): a removed key/value head takes its one query head with it. */
const MHA_SHAPES: readonly HfBlockShape[] = [
  { heads: 4, kvHeads: 4, ffn: 24 },
  { heads: 2, kvHeads: 2, ffn: 16 },
];

const CASES: ReadonlyArray<{ readonly c: HfCase; readonly shapes: readonly HfBlockShape[] }> = [
  { c: "llama", shapes: GQA_SHAPES },
  { c: "qwen2", shapes: GQA_SHAPES },
  { c: "opt", shapes: MHA_SHAPES },
  { c: "gpt2", shapes: MHA_SHAPES },
];

const configEntries = (shapes: readonly HfBlockShape[]) =>
  shapes.map((s) => ({ num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, intermediate_size: s.ffn }));

const specBlocks = (shapes: readonly HfBlockShape[]): BlockShape[] =>
  shapes.map((s) => ({ numHeads: s.heads, numKvHeads: s.kvHeads, intermediateSize: s.ffn }));

/** A transformers-layout folder whose blocks have `shapes`, with `config` (default: the case's config plus the key). */
const writeFolder = (c: HfCase, shapes: readonly HfBlockShape[], seed: number, config?: object) => {
  const dir = freshDir();
  const tensors = hfTensors(c, seed, shapes);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config ?? { ...hfConfigs[c], [BLOCK_SHAPES_KEY]: configEntries(shapes) }));
  writeSafetensors(join(dir, "model.safetensors"), [...tensors].map(([name, t]) => ({ name, dtype: "F32" as const, shape: t.shape, data: t.data })));
  return { dir, tensors };
};

const decoderOf = (ckpt: Checkpoint, options: Parameters<typeof Decoder.create>[3] = {}): Decoder =>
  Decoder.create(ckpt.spec, ckpt.readGlobals(), { numBlocks: ckpt.spec.numLayers, load: (i) => ckpt.readBlock(i) }, options);

/** Logits of one window through the public block-by-block API, as rows. */
const logitsOf = (d: Decoder, ids: Int32Array): number[][] => {
  let x = d.embed(ids, 1, ids.length);
  for (let i = 0; i < d.numBlocks; i++) {
    const next = d.runBlock(i, x, 1, ids.length);
    x.dispose();
    x = next;
  }
  const logits = d.headLogits(x);
  const rows = logits.arraySync() as number[][];
  tf.dispose([x, logits]);
  return rows;
};

/** The decoder's logits, summed NLL (resident and streamed) and differentiable loss against the float64 reference. */
const expectMatchesReference = async (ckpt: Checkpoint, reference: ReferenceWeights, seed: number): Promise<void> => {
  const spec = ckpt.spec;
  const seqlen = 10;
  const batch = 2;
  const ids = randomIds(batch * seqlen, spec.vocabSize, seed);
  const targets = nextTokenTargets(ids, batch, seqlen);
  const want = referenceNll(spec, reference, ids, targets, seqlen);
  const d = decoderOf(ckpt);
  try {
    const got = logitsOf(d, ids.subarray(0, seqlen));
    let worst = 0;
    let scale = 0;
    referenceLogits(spec, reference, ids.subarray(0, seqlen)).forEach((row, t) =>
      row.forEach((v, k) => {
        worst = Math.max(worst, Math.abs(v - got[t]![k]!));
        scale = Math.max(scale, Math.abs(v));
      }),
    );
    expect(scale).toBeGreaterThan(0.1);
    expect(worst).toBeLessThan(2e-4 * Math.max(1, scale));
    const nll = await d.nll(ids, targets, batch, seqlen);
    expect(nll.count).toBe(want.count);
    expect(Math.abs(nll.nll - want.nll)).toBeLessThan(1e-4 * want.count);
  } finally {
    d.dispose();
  }
  const streamed = decoderOf(ckpt, { streamed: true });
  try {
    const nll = await streamed.nll(ids, targets, batch, seqlen);
    expect(Math.abs(nll.nll - want.nll)).toBeLessThan(1e-4 * want.count);
  } finally {
    streamed.dispose();
  }
  const trainable = decoderOf(ckpt, { trainable: true });
  try {
    const loss = trainable.lossTensor(ids, targets, batch, seqlen);
    expect(Math.abs(loss.dataSync()[0]! - want.nll / want.count)).toBeLessThan(1e-4);
    loss.dispose();
  } finally {
    trainable.dispose();
  }
};

const allBlocks = (ckpt: Checkpoint): HostBlock[] => Array.from({ length: ckpt.spec.numLayers }, (_, i) => ckpt.readBlock(i));

const readJson = (file: string): Record<string, unknown> => JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;

describe("checkpoints whose blocks differ", () => {
  for (const { c, shapes } of CASES) {
    it(`${c}: config.json's ${BLOCK_SHAPES_KEY} gives each block its shapes, and the forward matches the float64 reference`, async () => {
      const { dir, tensors } = writeFolder(c, shapes, 21);
      const ckpt = openCheckpointSync(dir);
      try {
        expect(ckpt.spec.blocks).toEqual(specBlocks(shapes));
        expect(ckpt.spec.headDim).toBe(4);
        const block1 = ckpt.readBlock(1);
        const o = ckpt.spec.roles.o;
        expect(block1.linears[o]!.weight.shape).toEqual([2 * 4, 16]);
        await expectMatchesReference(ckpt, referenceFromHf(c, tensors, {}), 5);
      } finally {
        ckpt.close();
      }
    });

    it(`${c}: writeHuggingFace and reopening keep the per-block shapes and every weight`, async () => {
      const { dir } = writeFolder(c, shapes, 22);
      const src = openCheckpointSync(dir);
      const out = join(freshDir(), "copy");
      try {
        const blocks = allBlocks(src);
        writeHuggingFace(out, src.spec, src.readGlobals(), blocks);
        const config = readJson(join(out, "config.json"));
        expect(config[BLOCK_SHAPES_KEY]).toEqual(configEntries(shapes));
        const back = openCheckpointSync(out);
        try {
          expect(back.spec).toEqual(src.spec);
          blocks.forEach((b, i) => {
            const r = back.readBlock(i);
            for (const [name, l] of Object.entries(b.linears)) {
              expect(r.linears[name]!.weight.shape).toEqual(l.weight.shape);
              expect(Array.from(r.linears[name]!.weight.data)).toEqual(Array.from(l.weight.data));
              expect(r.linears[name]!.bias?.data).toEqual(l.bias?.data);
            }
          });
          // The reopened model is the same model: its forward matches the reference built from the source.
          await expectMatchesReference(back, referenceWeights(src.readGlobals(), blocks), 6);
        } finally {
          back.close();
        }
      } finally {
        src.close();
      }
    });
  }

  it("random models of every family with per-block shapes match the reference, resident and streamed", async () => {
    const shapesFor = (c: FamilyCase): BlockShape[] =>
      c === "opt-pre" || c === "opt-post-projected" || c === "gpt2"
        ? [
            { numHeads: 2, numKvHeads: 2, intermediateSize: 20 },
            { numHeads: 3, numKvHeads: 3, intermediateSize: 48 },
          ]
        : [
            { numHeads: 2, numKvHeads: 1, intermediateSize: 20 },
            { numHeads: 4, numKvHeads: 4, intermediateSize: 12 },
          ];
    for (const c of FAMILY_CASES) {
      const m = randomModel(c, 31, undefined, shapesFor(c));
      const seqlen = 7;
      const ids = randomIds(2 * seqlen, m.spec.vocabSize, 3);
      const targets = nextTokenTargets(ids, 2, seqlen);
      const want = referenceNll(m.spec, referenceWeights(m.globals, m.blocks), ids, targets, seqlen);
      for (const streamed of [false, true]) {
        const d = Decoder.create(m.spec, m.globals, blockSourceOf(m), { streamed });
        try {
          const got = await d.nll(ids, targets, 2, seqlen);
          expect(got.count).toBe(want.count);
          expect(Math.abs(got.nll - want.nll), `${c} streamed=${streamed}`).toBeLessThan(1e-4 * want.count);
        } finally {
          d.dispose();
        }
      }
    }
  });

  it("setBlock checks a block against its own shapes", async () => {
    const m = randomModel("llama-gqa", 41, undefined, [
      { numHeads: 4, numKvHeads: 2, intermediateSize: 48 },
      { numHeads: 2, numKvHeads: 1, intermediateSize: 16 },
    ]);
    const d = Decoder.create(m.spec, m.globals, blockSourceOf(m));
    try {
      // Block 0's weights do not fit block 1.
      expect(() => d.setBlock(1, m.blocks[0]!)).toThrow(CheckpointError);
      d.setBlock(1, m.blocks[1]!);
    } finally {
      d.dispose();
    }
  });

  it("a spec whose block list does not fit is refused when the model is built", async () => {
    const m = randomModel("llama-gqa", 42);
    const one = [{ numHeads: 4, numKvHeads: 2, intermediateSize: 48 }];
    expect(() => Decoder.create({ ...m.spec, blocks: one }, m.globals, blockSourceOf(m))).toThrow(/1 block shapes for 2 layers/);
    const badKv = [one[0]!, { numHeads: 4, numKvHeads: 3, intermediateSize: 48 }];
    expect(() => Decoder.create({ ...m.spec, blocks: badKv }, m.globals, blockSourceOf(m))).toThrow(/block 1: 4 attention heads cannot be shared among 3/);
  });

  it("training initialises each block with its own shapes", async () => {
    const spec: ModelSpec = {
      ...randomModel("llama-gqa", 1).spec,
      blocks: [
        { numHeads: 2, numKvHeads: 1, intermediateSize: 8 },
        { numHeads: 4, numKvHeads: 2, intermediateSize: 24 },
      ],
    };
    const { globals, blocks } = initWeights(spec, 0);
    expect(blocks[0]!.linears["q_proj"]!.weight.shape).toEqual([32, 16]);
    expect(blocks[1]!.linears["down_proj"]!.weight.shape).toEqual([24, 32]);
    Decoder.create(spec, globals, { numBlocks: 2, load: (i) => blocks[i]! }).dispose();
  });

  it("N:M checks every block's inputs and names the block when blocks differ", async () => {
    const spec: ModelSpec = {
      ...randomModel("llama-gqa", 1).spec,
      blocks: [
        { numHeads: 4, numKvHeads: 2, intermediateSize: 48 },
        { numHeads: 4, numKvHeads: 2, intermediateSize: 20 },
      ],
    };
    expect(nmMismatch(spec, 8)).toBe("down_proj of block 1 has 20 inputs, which do not split into groups of M = 8");
    expect(nmMismatch(spec, 4)).toBeUndefined();
  });
});

describe("config.json for equal blocks", () => {
  for (const c of ["llama", "qwen2", "opt", "gpt2"] as const) {
    it(`${c}: a uniform model is written without ${BLOCK_SHAPES_KEY}, with the config's own fields`, async () => {
      const dir = freshDir();
      const tensors = hfTensors(c, 7);
      writeFileSync(join(dir, "config.json"), JSON.stringify(hfConfigs[c]));
      writeSafetensors(join(dir, "model.safetensors"), [...tensors].map(([name, t]) => ({ name, dtype: "F32" as const, shape: t.shape, data: t.data })));
      const src = openCheckpointSync(dir);
      try {
        expect(src.spec.blocks).toBeUndefined();
        const out = join(freshDir(), "copy");
        writeHuggingFace(out, src.spec, src.readGlobals(), allBlocks(src));
        const config = readJson(join(out, "config.json"));
        expect(config).not.toHaveProperty(BLOCK_SHAPES_KEY);
        const original = hfConfigs[c] as Record<string, unknown>;
        for (const field of ["num_attention_heads", "num_key_value_heads", "intermediate_size", "ffn_dim", "n_head"]) {
          if (field in original) expect(config[field], field).toBe(original[field]);
        }
        // An explicit list of equal entries is the same uniform model.
        const spelled = join(freshDir(), "spelled");
        const same = Array.from({ length: src.spec.numLayers }, () => ({
          numHeads: src.spec.numHeads,
          numKvHeads: src.spec.numKvHeads,
          intermediateSize: src.spec.intermediateSize,
        }));
        writeHuggingFace(spelled, { ...src.spec, blocks: same }, src.readGlobals(), allBlocks(src));
        expect(readJson(join(spelled, "config.json"))).toEqual(config);
      } finally {
        src.close();
      }
    });
  }

  it("llama: blocks all cut to the same size keep transformers' own fields (head_dim is written)", async () => {
    const shapes = [
      { heads: 2, kvHeads: 1, ffn: 16 },
      { heads: 2, kvHeads: 1, ffn: 16 },
    ];
    const { dir } = writeFolder("llama", shapes, 8);
    const src = openCheckpointSync(dir);
    try {
      const out = join(freshDir(), "copy");
      writeHuggingFace(out, src.spec, src.readGlobals(), allBlocks(src));
      const config = readJson(join(out, "config.json"));
      expect(config).not.toHaveProperty(BLOCK_SHAPES_KEY);
      expect(config).toMatchObject({ num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 16, head_dim: 4 });
      const back = openCheckpointSync(out);
      expect(back.spec.blocks).toBeUndefined();
      expect(back.spec).toMatchObject({ numHeads: 2, numKvHeads: 1, intermediateSize: 16, headDim: 4 });
      back.close();
    } finally {
      src.close();
    }
  });

  it("opt: blocks all cut to fewer heads still need the key (the head size is hidden / heads)", async () => {
    const shapes = [
      { heads: 2, kvHeads: 2, ffn: 24 },
      { heads: 2, kvHeads: 2, ffn: 24 },
    ];
    const { dir } = writeFolder("opt", shapes, 9);
    const src = openCheckpointSync(dir);
    try {
      const out = join(freshDir(), "copy");
      writeHuggingFace(out, src.spec, src.readGlobals(), allBlocks(src));
      const config = readJson(join(out, "config.json"));
      expect(config).toMatchObject({ num_attention_heads: 4, ffn_dim: 24 });
      expect(config[BLOCK_SHAPES_KEY]).toEqual(configEntries(shapes));
      const back = openCheckpointSync(out);
      expect(back.spec).toEqual(src.spec);
      back.close();
    } finally {
      src.close();
    }
  });
});

describe("damaged evosparse_block_shapes", () => {
  const damaged = (c: HfCase, shapes: readonly HfBlockShape[], entries: unknown, pattern: RegExp) => {
    const { dir } = writeFolder(c, shapes, 12, { ...hfConfigs[c], [BLOCK_SHAPES_KEY]: entries });
    expectTaggedError(CheckpointError, () => openCheckpointSync(dir).close(), pattern, join(dir, "config.json"));
  };

  it("the wrong number of entries", async () => {
    damaged("llama", GQA_SHAPES, configEntries(GQA_SHAPES).slice(0, 1), /evosparse_block_shapes has 1 entries but the model has 2 layers/);
    damaged("gpt2", MHA_SHAPES, [...configEntries(MHA_SHAPES), configEntries(MHA_SHAPES)[0]], /evosparse_block_shapes has 3 entries/);
  });

  it("key/value heads that do not divide the heads", async () => {
    const entries = configEntries(GQA_SHAPES);
    entries[1] = { num_attention_heads: 3, num_key_value_heads: 2, intermediate_size: 16 };
    damaged("qwen2", GQA_SHAPES, entries, /evosparse_block_shapes\[1\]\.num_attention_heads \(3\) is not divisible by evosparse_block_shapes\[1\]\.num_key_value_heads \(2\)/);
  });

  it("sizes that are not positive integers, a missing field, or not a list", async () => {
    const entries = configEntries(MHA_SHAPES);
    damaged("opt", MHA_SHAPES, [entries[0], { ...entries[1], intermediate_size: 0 }], /evosparse_block_shapes\[1\]\.intermediate_size must be a positive integer, got 0/);
    damaged("opt", MHA_SHAPES, [{ ...entries[0], num_attention_heads: 2.5 }, entries[1]], /evosparse_block_shapes\[0\]\.num_attention_heads must be a positive integer/);
    damaged("llama", GQA_SHAPES, [configEntries(GQA_SHAPES)[0], { num_attention_heads: 2, num_key_value_heads: 1 }], /evosparse_block_shapes\[1\]\.intermediate_size must be a positive integer, got undefined/);
    damaged("llama", GQA_SHAPES, { num_attention_heads: 2 }, /evosparse_block_shapes must be a list/);
    damaged("llama", GQA_SHAPES, [configEntries(GQA_SHAPES)[0], 7], /evosparse_block_shapes\[1\] must be an object/);
  });

  it("shapes that do not match the tensors", async () => {
    // The blocks' entries swapped: block 0's tensors have 4 heads, the config says 2.
    damaged("llama", GQA_SHAPES, configEntries([...GQA_SHAPES].reverse()), /evosparse_block_shapes\[0\] \(2 attention heads, 1 key\/value heads, intermediate size 16, head size 4\) does not match model\.layers\.0\./);
    // One field off: block 1's q/o tensors have 2 heads, the config says 4 (k/v still fit).
    const gqa = configEntries(GQA_SHAPES);
    damaged("qwen2", GQA_SHAPES, [gqa[0], { ...gqa[1], num_attention_heads: 4 }], /evosparse_block_shapes\[1\] .* does not match model\.layers\.1\.self_attn\.q_proj\.weight/);
    const mha = configEntries(MHA_SHAPES);
    damaged("opt", MHA_SHAPES, [mha[0], { ...mha[1], intermediate_size: 24 }], /evosparse_block_shapes\[1\] .* does not match model\.decoder\.layers\.1\.fc1\.weight/);
    damaged("gpt2", MHA_SHAPES, [mha[0], { ...mha[1], num_attention_heads: 1, num_key_value_heads: 1 }], /evosparse_block_shapes\[1\] .* does not match transformer\.h\.1\.attn\.c_attn\.weight/);
  });

  it("without the key, a checkpoint whose blocks differ is refused as before (naming the tensor's file)", async () => {
    const { dir } = writeFolder("llama", GQA_SHAPES, 13, hfConfigs.llama);
    expectTaggedError(CheckpointError, () => openCheckpointSync(dir).close(), /shape mismatch for model\.layers\.1\./, join(dir, "model.safetensors"));
  });
});

describe("the allocation layout", () => {
  /** rows × cols of every linear of a block, written from the family's definition, not from linearShapes. */
  const expectedParams = (c: FamilyCase, d: number, headDim: number, s: BlockShape): Record<string, number> => {
    const q = s.numHeads * headDim;
    const kv = s.numKvHeads * headDim;
    const f = s.intermediateSize;
    if (c === "gpt2") return { "attn.c_attn": d * (q + 2 * kv), "attn.c_proj": q * d, "mlp.c_fc": d * f, "mlp.c_proj": f * d };
    if (c === "opt-pre" || c === "opt-post-projected") return { q_proj: d * q, k_proj: d * kv, v_proj: d * kv, out_proj: q * d, fc1: d * f, fc2: f * d };
    if (c === "llama2c") return { wq: d * q, wk: d * kv, wv: d * kv, wo: q * d, w1: d * f, w3: d * f, w2: f * d };
    return { q_proj: d * q, k_proj: d * kv, v_proj: d * kv, o_proj: q * d, gate_proj: d * f, up_proj: d * f, down_proj: f * d };
  };

  const blockShapeArb = fc
    .tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 300 }))
    .map(([kv, group, f]): BlockShape => ({ numHeads: kv * group, numKvHeads: kv, intermediateSize: f }));

  it("params per linear are rows × cols of that block's shapes", async () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...FAMILY_CASES),
        fc.integer({ min: 1, max: 6 }),
        fc.array(blockShapeArb, { minLength: 6, maxLength: 6 }),
        fc.boolean(),
        (c, layers, shapes, perBlock) => {
          const base = randomModel(c, 1).spec;
          const spec: ModelSpec = { ...base, numLayers: layers, ...(perBlock ? { blocks: shapes.slice(0, layers) } : {}) };
          const layout = layoutOf(spec);
          expect(layout).toHaveLength(layers * spec.linears.length);
          layout.forEach((entry, k) => {
            const block = Math.floor(k / spec.linears.length);
            expect(entry.block).toBe(block);
            expect(entry.linear).toBe(spec.linears[k % spec.linears.length]);
            const shape = perBlock ? shapes[block]! : { numHeads: base.numHeads, numKvHeads: base.numKvHeads, intermediateSize: base.intermediateSize };
            expect(entry.params).toBe(expectedParams(c, spec.hiddenSize, spec.headDim, shape)[entry.linear]);
          });
          const perBlockParams = blockParams(layout);
          perBlockParams.forEach((p, b) => {
            const shape = perBlock ? shapes[b]! : { numHeads: base.numHeads, numKvHeads: base.numKvHeads, intermediateSize: base.intermediateSize };
            expect(p).toBe(Object.values(expectedParams(c, spec.hiddenSize, spec.headDim, shape)).reduce((a, v) => a + v, 0));
          });
        },
      ),
      { numRuns: 200 },
    );
  });

  it("a model opened with per-block shapes has the layout of its tensors", async () => {
    const { dir } = writeFolder("llama", GQA_SHAPES, 14);
    const ckpt = openCheckpointSync(dir);
    try {
      const layout = layoutOf(ckpt.spec);
      for (const entry of layout) {
        const [rows, cols] = ckpt.readBlock(entry.block).linears[entry.linear]!.weight.shape as [number, number];
        expect(entry.params).toBe(rows * cols);
      }
      expect(blockParams(layout)).toEqual([16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 24, 16 * 8 + 2 * 16 * 4 + 8 * 16 + 3 * 16 * 16]);
    } finally {
      ckpt.close();
    }
  });
});
