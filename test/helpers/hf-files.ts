/**
 * Small Hugging Face checkpoints written the way transformers lays them out: config.json
 * field names, tensor names, torch.nn.Linear weights as [out, in], GPT-2 Conv1D as
 * [in, out]. The name tables here are written from transformers' modeling files, apart
 * from the loader's, so a test that compares the two checks the loader's mapping.
 */
import type { HostTensor } from "../../src/model/spec.ts";
import type { ReferenceWeights } from "./reference.ts";
import { mulberry32 } from "./random-model.ts";

const V = 40;
const D = 16;
const H = 4;
const KV = 2;
const F = 24;
const L = 2;
const P = 32;

const llamaBase = {
  vocab_size: V,
  hidden_size: D,
  intermediate_size: F,
  num_hidden_layers: L,
  num_attention_heads: H,
  num_key_value_heads: KV,
  max_position_embeddings: P,
  rms_norm_eps: 1e-5,
  hidden_act: "silu",
  bos_token_id: 1,
  eos_token_id: 2,
};

export const hfConfigs = {
  llama: { ...llamaBase, model_type: "llama", rope_theta: 10000, tie_word_embeddings: false },
  llama3: {
    ...llamaBase,
    model_type: "llama",
    rope_theta: 500000,
    tie_word_embeddings: true,
    eos_token_id: [2, 3],
    rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8 },
  },
  mistral: { ...llamaBase, model_type: "mistral", rope_theta: 1000000, sliding_window: 4096 },
  qwen2: { ...llamaBase, model_type: "qwen2", rope_theta: 1000000, tie_word_embeddings: true },
  opt: {
    model_type: "opt",
    vocab_size: V,
    hidden_size: D,
    ffn_dim: F,
    num_hidden_layers: L,
    num_attention_heads: H,
    max_position_embeddings: P,
    do_layer_norm_before: true,
    word_embed_proj_dim: D,
    activation_function: "relu",
  },
  "opt-350m": {
    model_type: "opt",
    vocab_size: V,
    hidden_size: D,
    ffn_dim: F,
    num_hidden_layers: L,
    num_attention_heads: H,
    max_position_embeddings: P,
    do_layer_norm_before: false,
    word_embed_proj_dim: 8,
    activation_function: "relu",
  },
  gpt2: { model_type: "gpt2", vocab_size: V, n_embd: D, n_layer: L, n_head: H, n_positions: P, activation_function: "gelu_new", layer_norm_epsilon: 1e-5 },
} as const;

export type HfCase = keyof typeof hfConfigs;

type Entry = { name: string; shape: number[]; kind: "weight" | "norm" | "bias" };

/** One block's sizes when blocks differ (config.json's evosparse_block_shapes); the head size stays D / H. */
export interface HfBlockShape {
  readonly heads: number;
  readonly kvHeads: number;
  readonly ffn: number;
}

const HD = D / H;

const llamaNames = (c: HfCase, shapes?: readonly HfBlockShape[]): Entry[] => {
  const cfg = hfConfigs[c] as { tie_word_embeddings?: boolean };
  const hd = HD;
  const out: Entry[] = [{ name: "model.embed_tokens.weight", shape: [V, D], kind: "weight" }, { name: "model.norm.weight", shape: [D], kind: "norm" }];
  if (!cfg.tie_word_embeddings) out.push({ name: "lm_head.weight", shape: [V, D], kind: "weight" });
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    out.push({ name: `${p}input_layernorm.weight`, shape: [D], kind: "norm" }, { name: `${p}post_attention_layernorm.weight`, shape: [D], kind: "norm" });
    const { heads, kvHeads, ffn } = shapes?.[i] ?? { heads: H, kvHeads: KV, ffn: F };
    const proj: Array<[string, number, number]> = [
      ["self_attn.q_proj", heads * hd, D],
      ["self_attn.k_proj", kvHeads * hd, D],
      ["self_attn.v_proj", kvHeads * hd, D],
      ["self_attn.o_proj", D, heads * hd],
      ["mlp.gate_proj", ffn, D],
      ["mlp.up_proj", ffn, D],
      ["mlp.down_proj", D, ffn],
    ];
    for (const [n, o, inDim] of proj) {
      out.push({ name: `${p}${n}.weight`, shape: [o, inDim], kind: "weight" });
      if (c === "qwen2" && /[qkv]_proj/.test(n)) out.push({ name: `${p}${n}.bias`, shape: [o], kind: "bias" });
    }
  }
  return out;
};

const optNames = (c: HfCase, shapes?: readonly HfBlockShape[]): Entry[] => {
  const cfg = hfConfigs[c] as { word_embed_proj_dim: number; do_layer_norm_before: boolean };
  const E = cfg.word_embed_proj_dim;
  const p0 = "model.decoder.";
  const out: Entry[] = [
    { name: `${p0}embed_tokens.weight`, shape: [V, E], kind: "weight" },
    { name: `${p0}embed_positions.weight`, shape: [P + 2, D], kind: "weight" },
  ];
  if (cfg.do_layer_norm_before) {
    out.push({ name: `${p0}final_layer_norm.weight`, shape: [D], kind: "norm" }, { name: `${p0}final_layer_norm.bias`, shape: [D], kind: "bias" });
  }
  if (E !== D) {
    out.push({ name: `${p0}project_in.weight`, shape: [D, E], kind: "weight" }, { name: `${p0}project_out.weight`, shape: [E, D], kind: "weight" });
  }
  for (let i = 0; i < L; i++) {
    const p = `${p0}layers.${i}.`;
    for (const n of ["self_attn_layer_norm", "final_layer_norm"]) {
      out.push({ name: `${p}${n}.weight`, shape: [D], kind: "norm" }, { name: `${p}${n}.bias`, shape: [D], kind: "bias" });
    }
    const { heads, kvHeads, ffn } = shapes?.[i] ?? { heads: H, kvHeads: H, ffn: F };
    const lin: Array<[string, number, number]> = [
      ["self_attn.q_proj", heads * HD, D],
      ["self_attn.k_proj", kvHeads * HD, D],
      ["self_attn.v_proj", kvHeads * HD, D],
      ["self_attn.out_proj", D, heads * HD],
      ["fc1", ffn, D],
      ["fc2", D, ffn],
    ];
    for (const [n, o, inDim] of lin) {
      out.push({ name: `${p}${n}.weight`, shape: [o, inDim], kind: "weight" }, { name: `${p}${n}.bias`, shape: [o], kind: "bias" });
    }
  }
  return out;
};

const gpt2Names = (shapes?: readonly HfBlockShape[]): Entry[] => {
  const out: Entry[] = [
    { name: "transformer.wte.weight", shape: [V, D], kind: "weight" },
    { name: "transformer.wpe.weight", shape: [P, D], kind: "weight" },
    { name: "transformer.ln_f.weight", shape: [D], kind: "norm" },
    { name: "transformer.ln_f.bias", shape: [D], kind: "bias" },
  ];
  for (let i = 0; i < L; i++) {
    const p = `transformer.h.${i}.`;
    for (const n of ["ln_1", "ln_2"]) out.push({ name: `${p}${n}.weight`, shape: [D], kind: "norm" }, { name: `${p}${n}.bias`, shape: [D], kind: "bias" });
    // Conv1D: [in, out].
    const { heads, kvHeads, ffn } = shapes?.[i] ?? { heads: H, kvHeads: H, ffn: 4 * D };
    const conv: Array<[string, number, number]> = [
      ["attn.c_attn", D, (heads + 2 * kvHeads) * HD],
      ["attn.c_proj", heads * HD, D],
      ["mlp.c_fc", D, ffn],
      ["mlp.c_proj", ffn, D],
    ];
    for (const [n, inDim, o] of conv) {
      out.push({ name: `${p}${n}.weight`, shape: [inDim, o], kind: "weight" }, { name: `${p}${n}.bias`, shape: [o], kind: "bias" });
    }
    // The causal-mask buffer older GPT-2 checkpoints carry.
    out.push({ name: `${p}attn.bias`, shape: [1, 1, P, P], kind: "bias" });
  }
  return out;
};

const entriesOf = (c: HfCase, shapes?: readonly HfBlockShape[]): Entry[] =>
  c === "gpt2" ? gpt2Names(shapes) : c === "opt" || c === "opt-350m" ? optNames(c, shapes) : llamaNames(c, shapes);

/**
 * Seeded random tensors under their transformers names, in transformers' layout; `shapes`
 * gives each of the L blocks its own heads and MLP width.
 */
export const hfTensors = (c: HfCase, seed: number, shapes?: readonly HfBlockShape[]): Map<string, HostTensor> => {
  const random = mulberry32(seed);
  const out = new Map<string, HostTensor>();
  for (const e of entriesOf(c, shapes)) {
    const n = e.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const fanIn = e.shape.length === 2 ? Math.min(...e.shape) : 1;
    for (let i = 0; i < n; i++) {
      const u = 2 * random() - 1;
      data[i] = e.kind === "norm" ? 1 + 0.3 * u : e.kind === "bias" ? 0.2 * u : (0.9 / Math.sqrt(fanIn)) * u;
    }
    out.set(e.name, { shape: e.shape, data });
  }
  return out;
};

const f64 = (t: HostTensor | undefined): Float64Array | undefined => (t ? Float64Array.from(t.data) : undefined);

/** torch [out, in] -> row-major [in][out]. */
const fromTorchLinear = (t: HostTensor): Float64Array => {
  const [o, i] = t.shape as [number, number];
  const out = new Float64Array(o * i);
  for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) out[c * o + r] = t.data[r * i + c]!;
  return out;
};

/**
 * The reference model's weights taken straight from the transformers-named tensors, with
 * linear names as the reference reads them through the spec's roles.
 */
export const referenceFromHf = (c: HfCase, t: Map<string, HostTensor>, linearNames: Record<string, string>): ReferenceWeights => {
  const get = (n: string) => {
    const v = t.get(n);
    if (!v) throw new Error(`test table lacks ${n}`);
    return v;
  };
  const lin = (weight: string, bias: string | undefined, conv = false) => {
    const w = get(weight);
    const [a, b] = w.shape as [number, number];
    return {
      weight: conv ? Float64Array.from(w.data) : fromTorchLinear(w),
      bias: bias && t.has(bias) ? f64(t.get(bias)) : undefined,
      inDim: conv ? a : b,
      outDim: conv ? b : a,
    };
  };
  if (c === "gpt2") {
    return {
      embed: f64(get("transformer.wte.weight"))!,
      positions: f64(get("transformer.wpe.weight")),
      finalNormWeight: f64(get("transformer.ln_f.weight")),
      finalNormBias: f64(get("transformer.ln_f.bias")),
      blocks: Array.from({ length: L }, (_, i) => {
        const p = `transformer.h.${i}.`;
        return {
          attnNormWeight: f64(get(`${p}ln_1.weight`))!,
          attnNormBias: f64(get(`${p}ln_1.bias`)),
          mlpNormWeight: f64(get(`${p}ln_2.weight`))!,
          mlpNormBias: f64(get(`${p}ln_2.bias`)),
          linears: Object.fromEntries(
            ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"].map((n) => [linearNames[n] ?? n, lin(`${p}${n}.weight`, `${p}${n}.bias`, true)]),
          ),
        };
      }),
    };
  }
  if (c === "opt" || c === "opt-350m") {
    const p0 = "model.decoder.";
    return {
      embed: f64(get(`${p0}embed_tokens.weight`))!,
      positions: f64(get(`${p0}embed_positions.weight`)),
      finalNormWeight: f64(t.get(`${p0}final_layer_norm.weight`)),
      finalNormBias: f64(t.get(`${p0}final_layer_norm.bias`)),
      projectIn: t.has(`${p0}project_in.weight`) ? fromTorchLinear(get(`${p0}project_in.weight`)) : undefined,
      projectOut: t.has(`${p0}project_out.weight`) ? fromTorchLinear(get(`${p0}project_out.weight`)) : undefined,
      blocks: Array.from({ length: L }, (_, i) => {
        const p = `${p0}layers.${i}.`;
        const names: Record<string, string> = { q: "self_attn.q_proj", k: "self_attn.k_proj", v: "self_attn.v_proj", out: "self_attn.out_proj", fc1: "fc1", fc2: "fc2" };
        return {
          attnNormWeight: f64(get(`${p}self_attn_layer_norm.weight`))!,
          attnNormBias: f64(get(`${p}self_attn_layer_norm.bias`)),
          mlpNormWeight: f64(get(`${p}final_layer_norm.weight`))!,
          mlpNormBias: f64(get(`${p}final_layer_norm.bias`)),
          linears: Object.fromEntries(Object.entries(names).map(([k, n]) => [linearNames[k] ?? k, lin(`${p}${n}.weight`, `${p}${n}.bias`)])),
        };
      }),
    };
  }
  const tied = !t.has("lm_head.weight");
  return {
    embed: f64(get("model.embed_tokens.weight"))!,
    finalNormWeight: f64(get("model.norm.weight")),
    lmHead: tied ? undefined : fromTorchLinear(get("lm_head.weight")),
    blocks: Array.from({ length: L }, (_, i) => {
      const p = `model.layers.${i}.`;
      const names: Record<string, string> = {
        q: "self_attn.q_proj",
        k: "self_attn.k_proj",
        v: "self_attn.v_proj",
        o: "self_attn.o_proj",
        gate: "mlp.gate_proj",
        up: "mlp.up_proj",
        down: "mlp.down_proj",
      };
      return {
        attnNormWeight: f64(get(`${p}input_layernorm.weight`))!,
        mlpNormWeight: f64(get(`${p}post_attention_layernorm.weight`))!,
        linears: Object.fromEntries(Object.entries(names).map(([k, n]) => [linearNames[k] ?? k, lin(`${p}${n}.weight`, `${p}${n}.bias`)])),
      };
    }),
  };
};
