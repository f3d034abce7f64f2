import { Schema } from "effect";
import { CheckpointError } from "../../errors.ts";
import { nominalBlockShape, uniformBlockShape, type ModelSpec } from "../../model/spec.ts";
import {
  type Architecture,
  type BlockNames,
  blockShapesConfig,
  decodeConfig,
  firstId,
  Positive,
  requireDivisible,
  Size,
  TokenId,
  withBlockShapes,
} from "./architecture.ts";

const Llama3Scaling = Schema.Struct({
  rope_type: Schema.optional(Schema.String),
  type: Schema.optional(Schema.String),
  factor: Positive,
  low_freq_factor: Schema.optional(Positive),
  high_freq_factor: Schema.optional(Positive),
  original_max_position_embeddings: Schema.optional(Size),
});

/** The config fields LLaMA 1/2/3, Mistral and Qwen2 share (transformers' names). */
const LlamaConfig = Schema.Struct({
  model_type: Schema.String,
  vocab_size: Size,
  hidden_size: Size,
  intermediate_size: Size,
  num_hidden_layers: Size,
  num_attention_heads: Size,
  num_key_value_heads: Schema.optional(Schema.NullOr(Size)),
  head_dim: Schema.optional(Schema.NullOr(Size)),
  max_position_embeddings: Schema.optional(Size),
  rms_norm_eps: Schema.optional(Positive),
  rope_theta: Schema.optional(Positive),
  rope_scaling: Schema.optional(Schema.NullOr(Llama3Scaling)),
  hidden_act: Schema.optional(Schema.String),
  tie_word_embeddings: Schema.optional(Schema.Boolean),
  attention_bias: Schema.optional(Schema.Boolean),
  mlp_bias: Schema.optional(Schema.Boolean),
  bos_token_id: TokenId,
  eos_token_id: TokenId,
  sliding_window: Schema.optional(Schema.NullOr(Size)),
  use_sliding_window: Schema.optional(Schema.Boolean),
});

const LINEARS = ["q", "k", "v", "o", "gate", "up", "down"] as const;

const makeLlamaLike = (
  modelTypes: readonly string[],
  family: "llama" | "mistral" | "qwen2",
  defaults: { readonly qkvBias: boolean; readonly tied: boolean },
): Architecture => {
  const specFromConfig = (raw: unknown, file: string): ModelSpec => {
    const c = decodeConfig(LlamaConfig, raw, file);
    const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
    requireDivisible(file, "num_attention_heads / num_key_value_heads", c.num_attention_heads, numKvHeads);
    if (!c.head_dim) requireDivisible(file, "hidden_size / num_attention_heads", c.hidden_size, c.num_attention_heads);
    const act = c.hidden_act ?? "silu";
    if (act !== "silu") throw new CheckpointError({ file, problem: `hidden_act ${act} is not supported (expected silu)` });
    if (c.mlp_bias) throw new CheckpointError({ file, problem: "mlp_bias is not supported" });
    const scaling = c.rope_scaling ?? undefined;
    const ropeType = scaling?.rope_type ?? scaling?.type;
    if (scaling && ropeType !== "llama3") {
      throw new CheckpointError({ file, problem: `rope_scaling type ${ropeType ?? "(none)"} is not supported (only llama3)` });
    }
    const spec: ModelSpec = {
      family,
      vocabSize: c.vocab_size,
      hiddenSize: c.hidden_size,
      numLayers: c.num_hidden_layers,
      numHeads: c.num_attention_heads,
      numKvHeads,
      headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
      intermediateSize: c.intermediate_size,
      maxPositions: c.max_position_embeddings ?? 2048,
      norm: "rms",
      normEps: c.rms_norm_eps ?? 1e-6,
      normBefore: true,
      positions: {
        kind: "rope",
        theta: c.rope_theta ?? 10000,
        ...(scaling
          ? {
              scaling: {
                factor: scaling.factor,
                lowFreqFactor: scaling.low_freq_factor ?? 1,
                highFreqFactor: scaling.high_freq_factor ?? 4,
                originalMaxPositions: scaling.original_max_position_embeddings ?? 8192,
              },
            }
          : {}),
      },
      activation: "silu",
      linears: LINEARS,
      roles: { q: "q", k: "k", v: "v", o: "o", gate: "gate", up: "up", down: "down" },
      tiedEmbeddings: c.tie_word_embeddings ?? defaults.tied,
      finalNorm: true,
      embedDim: c.hidden_size,
      bosTokenId: firstId(c.bos_token_id),
      eosTokenId: firstId(c.eos_token_id),
      // Qwen2 declares a window but only uses it with use_sliding_window = true.
      ...(c.sliding_window && (family === "mistral" || c.use_sliding_window) ? { slidingWindow: c.sliding_window } : {}),
      // Qwen2 always carries q/k/v biases; LLaMA's attention_bias adds o_proj's too.
      biasedLinears: (c.attention_bias ?? defaults.qkvBias) ? (family === "qwen2" ? ["q", "k", "v"] : ["q", "k", "v", "o"]) : [],
    };
    // Per-block sizes (evosparse_block_shapes) override the head and MLP fields read here.
    return withBlockShapes(spec, raw, file);
  };

  const blockNames = (spec: ModelSpec, prefix: string, i: number): BlockNames => {
    const p = `${prefix}layers.${i}.`;
    const biased = new Set(spec.biasedLinears ?? []);
    const proj = (name: string, sub: string) => ({
      weight: { name: `${p}${sub}.${name}_proj.weight`, transposed: true },
      ...(biased.has(name) ? { bias: `${p}${sub}.${name}_proj.bias` } : {}),
    });
    return {
      attnNorm: { weight: `${p}input_layernorm.weight` },
      mlpNorm: { weight: `${p}post_attention_layernorm.weight` },
      linears: {
        q: proj("q", "self_attn"),
        k: proj("k", "self_attn"),
        v: proj("v", "self_attn"),
        o: proj("o", "self_attn"),
        gate: proj("gate", "mlp"),
        up: proj("up", "mlp"),
        down: proj("down", "mlp"),
      },
    };
  };

  const configFromSpec = (spec: ModelSpec): Record<string, unknown> => {
    const pos = spec.positions;
    const scaling = pos.kind === "rope" ? pos.scaling : undefined;
    // head_dim is written, so equal blocks need no per-block key whatever their head count.
    const own = uniformBlockShape(spec) ?? nominalBlockShape(spec);
    return {
      architectures: [{ llama: "LlamaForCausalLM", mistral: "MistralForCausalLM", qwen2: "Qwen2ForCausalLM" }[family]],
      model_type: modelTypes[0],
      vocab_size: spec.vocabSize,
      hidden_size: spec.hiddenSize,
      intermediate_size: own.intermediateSize,
      num_hidden_layers: spec.numLayers,
      num_attention_heads: own.numHeads,
      num_key_value_heads: own.numKvHeads,
      head_dim: spec.headDim,
      max_position_embeddings: spec.maxPositions,
      rms_norm_eps: spec.normEps,
      rope_theta: pos.kind === "rope" ? pos.theta : 10000,
      rope_scaling: scaling
        ? {
            rope_type: "llama3",
            factor: scaling.factor,
            low_freq_factor: scaling.lowFreqFactor,
            high_freq_factor: scaling.highFreqFactor,
            original_max_position_embeddings: scaling.originalMaxPositions,
          }
        : null,
      hidden_act: "silu",
      tie_word_embeddings: spec.tiedEmbeddings,
      ...(family === "llama" ? { attention_bias: (spec.biasedLinears ?? []).length > 0 } : {}),
      ...(spec.slidingWindow !== undefined ? { sliding_window: spec.slidingWindow, use_sliding_window: true } : {}),
      ...(spec.bosTokenId !== undefined ? { bos_token_id: spec.bosTokenId } : {}),
      ...(spec.eosTokenId !== undefined ? { eos_token_id: spec.eosTokenId } : {}),
      torch_dtype: "float32",
      ...blockShapesConfig(spec, own),
    };
  };

  return {
    modelTypes,
    specFromConfig,
    configFromSpec,
    prefixes: ["model.", ""],
    writePrefix: "model.",
    globalNames: (spec, prefix) => ({
      embed: `${prefix}embed_tokens.weight`,
      finalNorm: { weight: `${prefix}norm.weight` },
      ...(spec.tiedEmbeddings ? {} : { lmHead: { name: "lm_head.weight", transposed: true } }),
    }),
    blockNames,
    // Tied checkpoints in the wild often still store lm_head.weight (a copy of the embedding).
    ignored: [/^lm_head\.weight$/, /rotary_emb\.inv_freq$/],
  };
};

export const llama = makeLlamaLike(["llama"], "llama", { qkvBias: false, tied: false });
export const mistral = makeLlamaLike(["mistral"], "mistral", { qkvBias: false, tied: false });
export const qwen2 = makeLlamaLike(["qwen2"], "qwen2", { qkvBias: true, tied: false });
