import { Schema } from "effect";
import { CheckpointError } from "../../errors.ts";
import type { ModelSpec } from "../../model/spec.ts";
import {
  type Architecture,
  blockShapesConfig,
  decodeConfig,
  firstId,
  multiHeadConfigShape,
  requireDivisible,
  Size,
  TokenId,
  withBlockShapes,
} from "./architecture.ts";

const OptConfig = Schema.Struct({
  model_type: Schema.Literal("opt"),
  vocab_size: Size,
  hidden_size: Size,
  ffn_dim: Size,
  num_hidden_layers: Size,
  num_attention_heads: Size,
  max_position_embeddings: Size,
  do_layer_norm_before: Schema.optional(Schema.Boolean),
  word_embed_proj_dim: Schema.optional(Schema.NullOr(Size)),
  activation_function: Schema.optional(Schema.String),
  enable_bias: Schema.optional(Schema.Boolean),
  layer_norm_elementwise_affine: Schema.optional(Schema.Boolean),
  _remove_final_layer_norm: Schema.optional(Schema.Boolean),
  bos_token_id: TokenId,
  eos_token_id: TokenId,
});

const LINEARS = ["q", "k", "v", "out", "fc1", "fc2"] as const;

/** OPT's learned position table starts 2 rows in: a fairseq padding convention kept by transformers. */
const OPT_POSITION_OFFSET = 2;

export const opt: Architecture = {
  modelTypes: ["opt"],
  specFromConfig: (raw, file): ModelSpec => {
    const c = decodeConfig(OptConfig, raw, file);
    requireDivisible(file, "hidden_size / num_attention_heads", c.hidden_size, c.num_attention_heads);
    const act = c.activation_function ?? "relu";
    if (act !== "relu") throw new CheckpointError({ file, problem: `activation_function ${act} is not supported (expected relu)` });
    if (c.enable_bias === false || c.layer_norm_elementwise_affine === false) {
      throw new CheckpointError({ file, problem: "OPT without biases or affine layer norms is not supported" });
    }
    const normBefore = c.do_layer_norm_before ?? true;
    const spec: ModelSpec = {
      family: "opt",
      vocabSize: c.vocab_size,
      hiddenSize: c.hidden_size,
      numLayers: c.num_hidden_layers,
      numHeads: c.num_attention_heads,
      numKvHeads: c.num_attention_heads,
      headDim: c.hidden_size / c.num_attention_heads,
      intermediateSize: c.ffn_dim,
      maxPositions: c.max_position_embeddings,
      norm: "layer",
      normEps: 1e-5,
      normBefore,
      positions: { kind: "learned", offset: OPT_POSITION_OFFSET },
      activation: "relu",
      linears: LINEARS,
      roles: { q: "q", k: "k", v: "v", o: "out", up: "fc1", down: "fc2" },
      biasedLinears: LINEARS,
      tiedEmbeddings: true,
      // transformers builds the final norm only for pre-norm OPT (OPT-350m has none).
      finalNorm: normBefore && !(c._remove_final_layer_norm ?? false),
      embedDim: c.word_embed_proj_dim ?? c.hidden_size,
      bosTokenId: firstId(c.bos_token_id),
      eosTokenId: firstId(c.eos_token_id),
    };
    // Per-block sizes (evosparse_block_shapes) override num_attention_heads and ffn_dim per block.
    return withBlockShapes(spec, raw, file);
  },
  configFromSpec: (spec) => {
    const own = multiHeadConfigShape(spec);
    return {
      architectures: ["OPTForCausalLM"],
      model_type: "opt",
      vocab_size: spec.vocabSize,
      hidden_size: spec.hiddenSize,
      ffn_dim: own.intermediateSize,
      num_hidden_layers: spec.numLayers,
      num_attention_heads: own.numHeads,
      max_position_embeddings: spec.maxPositions,
      do_layer_norm_before: spec.normBefore,
      word_embed_proj_dim: spec.embedDim,
      activation_function: "relu",
      enable_bias: true,
      layer_norm_elementwise_affine: true,
      _remove_final_layer_norm: spec.normBefore && !spec.finalNorm,
      ...(spec.bosTokenId !== undefined ? { bos_token_id: spec.bosTokenId } : {}),
      ...(spec.eosTokenId !== undefined ? { eos_token_id: spec.eosTokenId } : {}),
      torch_dtype: "float32",
      ...blockShapesConfig(spec, own),
    };
  },
  prefixes: ["model.decoder.", "decoder."],
  writePrefix: "model.decoder.",
  globalNames: (spec, p) => ({
    embed: `${p}embed_tokens.weight`,
    positions: `${p}embed_positions.weight`,
    ...(spec.finalNorm ? { finalNorm: { weight: `${p}final_layer_norm.weight`, bias: `${p}final_layer_norm.bias` } } : {}),
    ...(spec.embedDim !== spec.hiddenSize
      ? {
          projectIn: { name: `${p}project_in.weight`, transposed: true },
          projectOut: { name: `${p}project_out.weight`, transposed: true },
        }
      : {}),
  }),
  blockNames: (_spec, prefix, i) => {
    const p = `${prefix}layers.${i}.`;
    const lin = (path: string) => ({ weight: { name: `${p}${path}.weight`, transposed: true }, bias: `${p}${path}.bias` });
    return {
      attnNorm: { weight: `${p}self_attn_layer_norm.weight`, bias: `${p}self_attn_layer_norm.bias` },
      mlpNorm: { weight: `${p}final_layer_norm.weight`, bias: `${p}final_layer_norm.bias` },
      linears: {
        q: lin("self_attn.q_proj"),
        k: lin("self_attn.k_proj"),
        v: lin("self_attn.v_proj"),
        out: lin("self_attn.out_proj"),
        fc1: lin("fc1"),
        fc2: lin("fc2"),
      },
    };
  },
  ignored: [/^lm_head\.weight$/],
};
