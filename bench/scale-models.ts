/**
 * LLaMA-shaped checkpoints of real sizes with seeded random F16 weights, written by the
 * benchmark itself (nothing is downloaded): TinyLlama-1.1B's shapes and LLaMA-2-7B's. The
 * file is written tensor by tensor in the Hugging Face layout (torch.nn.Linear weights as
 * [out, in]), so generating a 13 GB checkpoint holds one chunk in memory, never a tensor.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { floatBitsToHalfBits } from "../src/checkpoint/dtype.ts";
import { byteLevelTokenizerJson } from "../src/tokenizer/byte-level.ts";

export interface LlamaShape {
  readonly name: string;
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly vocab: number;
  readonly context: number;
}

/** TinyLlama-1.1B: 22 blocks of width 2048, 32 heads sharing 4 key/value heads, SwiGLU 5632. */
export const TINYLLAMA_1B: LlamaShape = { name: "tinyllama-1.1b", hidden: 2048, intermediate: 5632, layers: 22, heads: 32, kvHeads: 4, vocab: 32000, context: 2048 };
/** LLaMA-2-7B: 32 blocks of width 4096, 32 heads, SwiGLU 11008. */
export const LLAMA2_7B: LlamaShape = { name: "llama2-6.7b", hidden: 4096, intermediate: 11008, layers: 32, heads: 32, kvHeads: 32, vocab: 32000, context: 4096 };

export const configOf = (s: LlamaShape) => ({
  model_type: "llama",
  architectures: ["LlamaForCausalLM"],
  hidden_size: s.hidden,
  intermediate_size: s.intermediate,
  num_hidden_layers: s.layers,
  num_attention_heads: s.heads,
  num_key_value_heads: s.kvHeads,
  vocab_size: s.vocab,
  max_position_embeddings: s.context,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: "silu",
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  torch_dtype: "float16",
});

interface Entry {
  readonly name: string;
  readonly shape: readonly number[];
  /** Norm weights are ones; everything else uniform with the given standard deviation. */
  readonly std: number;
}

const entriesOf = (s: LlamaShape): Entry[] => {
  const d = s.hidden;
  const kv = (s.hidden / s.heads) * s.kvHeads;
  const out: Entry[] = [
    { name: "model.embed_tokens.weight", shape: [s.vocab, d], std: 0.02 },
    { name: "model.norm.weight", shape: [d], std: 0 },
    { name: "lm_head.weight", shape: [s.vocab, d], std: 0.02 },
  ];
  for (let i = 0; i < s.layers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      { name: `${p}.input_layernorm.weight`, shape: [d], std: 0 },
      { name: `${p}.post_attention_layernorm.weight`, shape: [d], std: 0 },
      { name: `${p}.self_attn.q_proj.weight`, shape: [d, d], std: 0.02 },
      { name: `${p}.self_attn.k_proj.weight`, shape: [kv, d], std: 0.02 },
      { name: `${p}.self_attn.v_proj.weight`, shape: [kv, d], std: 0.02 },
      { name: `${p}.self_attn.o_proj.weight`, shape: [d, d], std: 0.02 },
      { name: `${p}.mlp.gate_proj.weight`, shape: [s.intermediate, d], std: 0.02 },
      { name: `${p}.mlp.up_proj.weight`, shape: [s.intermediate, d], std: 0.02 },
      { name: `${p}.mlp.down_proj.weight`, shape: [d, s.intermediate], std: 0.02 },
    );
  }
  return out;
};

export const parameterCount = (s: LlamaShape): number =>
  entriesOf(s).reduce((n, e) => n + e.shape.reduce((a, b) => a * b, 1), 0);

/**
 * Uniform F16 values with the given spread, drawn from a table of 4096 quantile midpoints:
 * two draws per 32-bit random number, so a 6.7B-parameter file takes about a minute.
 */
const fillRandomHalves = (out: Uint16Array, std: number, state: { x: number }): void => {
  if (std === 0) {
    out.fill(0x3c00);
    return;
  }
  const half = std * Math.sqrt(3);
  const table = new Uint16Array(4096);
  const f = new Float32Array(1);
  const bits = new Uint32Array(f.buffer);
  for (let j = 0; j < 4096; j++) {
    f[0] = (((j + 0.5) / 4096) * 2 - 1) * half;
    table[j] = floatBitsToHalfBits(bits[0]!);
  }
  let x = state.x;
  for (let i = 0; i < out.length; i += 2) {
    // xorshift32: fast, and plenty for weights nobody reads as data.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = table[x & 4095]!;
    if (i + 1 < out.length) out[i + 1] = table[(x >>> 12) & 4095]!;
  }
  state.x = x;
};

/**
 * Writes `dir` (config.json, model.safetensors, a byte-level tokenizer.json) unless it is
 * already there from an earlier run with the same shape and seed. Returns the folder.
 */
export const writeRandomLlama = (dir: string, shape: LlamaShape, seed = 1): string => {
  const stamp = join(dir, "generated.json");
  const wanted = JSON.stringify({ shape, seed, format: 1 });
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === wanted) return dir;
  mkdirSync(dir, { recursive: true });
  const entries = entriesOf(shape);
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, 1) * 2;
    header[e.name] = { dtype: "F16", shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20);
  padded.set(json);
  const length = new Uint8Array(8);
  new DataView(length.buffer).setBigUint64(0, BigInt(padded.byteLength), true);
  const file = join(dir, "model.safetensors");
  const partial = `${file}.partial`;
  const fd = openSync(partial, "w");
  const state = { x: (seed * 2654435761) >>> 0 || 1 };
  const chunk = new Uint16Array(1 << 24);
  try {
    writeSync(fd, length);
    writeSync(fd, padded);
    for (const e of entries) {
      let left = e.shape.reduce((a, b) => a * b, 1);
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        const part = chunk.subarray(0, n);
        fillRandomHalves(part, e.std, state);
        writeSync(fd, new Uint8Array(part.buffer, 0, n * 2));
        left -= n;
      }
    }
  } finally {
    closeSync(fd);
  }
  renameSync(partial, file);
  writeFileSync(join(dir, "config.json"), JSON.stringify(configOf(shape), null, 2) + "\n");
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(byteLevelTokenizerJson()));
  writeFileSync(stamp, wanted);
  return dir;
};
