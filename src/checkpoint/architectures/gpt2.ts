import { Schema } from "effect";
import { CheckpointError } from "../../errors.ts";
import type { ModelSpec } from "../../model/spec.ts";
import {
  type Architecture,
  blockShapesConfig,
  decodeConfig,
  firstId,
  Positive,
  multiHeadConfigShape,
  requireDivisible,
  Size,
  TokenId,
  withBlockShapes,
} from "./architecture.ts";

const Gpt2Config = Schema.Struct({
  model_type: Schema.Literal("gpt2"),
  vocab_size: Size,
  n_embd: Size,
  n_layer: Size,
  n_head: Size,
  n_positions: Size,
  n_inner: Schema.optional(Schema.NullOr(Size)),
  layer_norm_epsilon: Schema.optional(Positive),
  activation_function: Schema.optional(Schema.String),
  bos_token_id: TokenId,
  eos_token_id: TokenId,
});

const LINEARS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] as const;

export const gpt2: Architecture = {
  modelTypes: ["gpt2"],
  specFromConfig: (raw, file): ModelSpec => {
    const c = decodeConfig(Gpt2Config, raw, file);
    requireDivisible(file, "n_embd / n_head", c.n_embd, c.n_head);
    const act = c.activation_function ?? "gelu_new";
    if (!["gelu_new", "gelu_pytorch_tanh"].includes(act)) {
      throw new CheckpointError({ file, problem: `activation_function ${act} is not supported (expected gelu_new)` });
    }
    const spec: ModelSpec = {
      family: "gpt2",
      vocabSize: c.vocab_size,
      hiddenSize: c.n_embd,
      numLayers: c.n_layer,
      numHeads: c.n_head,
      numKvHeads: c.n_head,
      headDim: c.n_embd / c.n_head,
      intermediateSize: c.n_inner ?? 4 * c.n_embd,
      maxPositions: c.n_positions,
      norm: "layer",
      normEps: c.layer_norm_epsilon ?? 1e-5,
      normBefore: true,
      positions: { kind: "learned", offset: 0 },
      activation: "gelu_tanh",
      linears: LINEARS,
      roles: { qkv: "attn.c_attn", o: "attn.c_proj", up: "mlp.c_fc", down: "mlp.c_proj" },
      biasedLinears: LINEARS,
      tiedEmbeddings: true,
      finalNorm: true,
      embedDim: c.n_embd,
      bosTokenId: firstId(c.bos_token_id),
      eosTokenId: firstId(c.eos_token_id),
    };
    // Per-block sizes (evosparse_block_shapes) override n_head and n_inner per block.
    return withBlockShapes(spec, raw, file);
  },
  configFromSpec: (spec) => {
    const own = multiHeadConfigShape(spec);
    return {
      architectures: ["GPT2LMHeadModel"],
      model_type: "gpt2",
      vocab_size: spec.vocabSize,
      n_embd: spec.hiddenSize,
      n_layer: spec.numLayers,
      n_head: own.numHeads,
      n_positions: spec.maxPositions,
      n_inner: own.intermediateSize,
      layer_norm_epsilon: spec.normEps,
      activation_function: "gelu_new",
      ...(spec.bosTokenId !== undefined ? { bos_token_id: spec.bosTokenId } : {}),
      ...(spec.eosTokenId !== undefined ? { eos_token_id: spec.eosTokenId } : {}),
      torch_dtype: "float32",
      ...blockShapesConfig(spec, own),
    };
  },
  prefixes: ["transformer.", ""],
  writePrefix: "transformer.",
  globalNames: (_spec, p) => ({
    embed: `${p}wte.weight`,
    positions: `${p}wpe.weight`,
    finalNorm: { weight: `${p}ln_f.weight`, bias: `${p}ln_f.bias` },
  }),
  blockNames: (spec, prefix, i) => {
    const p = `${prefix}h.${i}.`;
    // Conv1D stores weights as [in, out] already: no transpose.
    const lin = (name: string) => ({ weight: { name: `${p}${name}.weight`, transposed: false }, bias: `${p}${name}.bias` });
    return {
      attnNorm: { weight: `${p}ln_1.weight`, bias: `${p}ln_1.bias` },
      mlpNorm: { weight: `${p}ln_2.weight`, bias: `${p}ln_2.bias` },
      linears: Object.fromEntries(spec.linears.map((name) => [name, lin(name)])),
    };
  },
  // attn.bias / attn.masked_bias are causal-mask buffers, not weights.
  ignored: [/^lm_head\.weight$/, /(^|\.)h\.\d+\.attn\.(masked_)?bias$/],
};
