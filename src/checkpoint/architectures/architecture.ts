import { Result, Schema } from "effect";
import { CheckpointError } from "../../errors.ts";
import { blockShape, nominalBlockShape, sameBlockShape, uniformBlockShape, type BlockShape, type ModelSpec } from "../../model/spec.ts";

/**
 * Where one canonical weight lives in a Hugging Face checkpoint. `transposed` means the
 * file stores the matrix as torch.nn.Linear does, [out, in], while the model wants
 * [in, out]; GPT-2's Conv1D weights are already [in, out].
 */
export interface TensorBinding {
  readonly name: string;
  readonly transposed: boolean;
}

export interface NormNames {
  readonly weight: string;
  readonly bias?: string;
}

export interface BlockNames {
  readonly attnNorm: NormNames;
  readonly mlpNorm: NormNames;
  readonly linears: Readonly<Record<string, { readonly weight: TensorBinding; readonly bias?: string }>>;
}

export interface GlobalNames {
  readonly embed: string;
  readonly positions?: string;
  readonly finalNorm?: NormNames;
  readonly lmHead?: TensorBinding;
  readonly projectIn?: TensorBinding;
  readonly projectOut?: TensorBinding;
}

/**
 * One Hugging Face architecture: how its config.json becomes a ModelSpec, and the table
 * of tensor names. Adding an architecture means adding one such record.
 */
export interface Architecture {
  /** `model_type` values of config.json this record reads. */
  readonly modelTypes: readonly string[];
  specFromConfig(config: unknown, file: string): ModelSpec;
  /** The config.json that reads back as `spec` (used when writing checkpoints). */
  configFromSpec(spec: ModelSpec): Record<string, unknown>;
  /**
   * Name prefixes seen in the wild for this family (e.g. GPT-2 weights saved from
   * GPT2Model lack "transformer."); the loader picks the one the file uses.
   */
  readonly prefixes: readonly string[];
  globalNames(spec: ModelSpec, prefix: string): GlobalNames;
  blockNames(spec: ModelSpec, prefix: string, block: number): BlockNames;
  /** Tensors a checkpoint may carry that are not weights (e.g. GPT-2's causal-mask buffers). */
  readonly ignored: readonly RegExp[];
  /** The prefix the writer uses. */
  readonly writePrefix: string;
}

/** Decodes config.json with a Schema; a mismatch names the file and the field. */
export const decodeConfig = <S extends Schema.Top>(
  schema: S,
  config: unknown,
  file: string,
): S["Type"] => {
  const result = Schema.decodeUnknownResult(schema as never)(config) as Result.Result<S["Type"], { message: string }>;
  if (Result.isFailure(result)) {
    throw new CheckpointError({ file, problem: `invalid config: ${result.failure.message.replace(/\n\s*/g, " ")}` });
  }
  return result.success;
};

/** A positive whole number, for sizes in config.json. */
export const Size = Schema.Int.check(Schema.isGreaterThan(0));

/**
 * A positive finite number, for epsilons, RoPE bases and scaling factors: zero or a
 * negative value there would make every forward overflow or divide by zero, and be blamed
 * on the text; it is config.json's field that is wrong.
 */
export const Positive = Schema.Finite.check(Schema.isGreaterThan(0));

/** bos/eos ids are a number, a list (LLaMA-3 instruct lists several eos ids) or null. */
export const TokenId = Schema.optional(Schema.NullOr(Schema.Union([Schema.Number, Schema.Array(Schema.Number)])));

export const firstId = (id: number | readonly number[] | null | undefined): number | undefined =>
  id === null || id === undefined ? undefined : typeof id === "number" ? id : id[0];

export const requireDivisible = (file: string, what: string, a: number, b: number): void => {
  if (a % b !== 0) throw new CheckpointError({ file, problem: `invalid config: ${what} (${a} is not divisible by ${b})` });
};

/**
 * config.json key of the per-block sizes, for models whose blocks differ (structured pruning
 * removes whole attention heads and MLP channels): one object per block, in block order,
 * `{"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 320}` (LLaMA's
 * field names for every architecture; num_key_value_heads defaults to num_attention_heads).
 * It overrides the architecture's own head and MLP fields block by block; those keep the
 * values that give the head size (head_dim, or hidden / heads for OPT and GPT-2). It is
 * written only when the architecture's own fields cannot give every block's sizes, so a
 * model whose blocks are equal gets the config transformers loads as it is.
 */
export const BLOCK_SHAPES_KEY = "evosparse_block_shapes";

/**
 * Reads `evosparse_block_shapes` when config.json has it, checked against the layer count
 * (one entry per block of positive whole sizes, heads divisible by key/value heads; each
 * block's shapes are checked against the tensors when the checkpoint is opened). The spec
 * gets `blocks` only when some block differs from the spec's own sizes.
 */
export const withBlockShapes = (spec: ModelSpec, raw: unknown, file: string): ModelSpec => {
  const value = typeof raw === "object" && raw !== null ? (raw as Record<string, unknown>)[BLOCK_SHAPES_KEY] : undefined;
  if (value === undefined || value === null) return spec;
  const fail = (problem: string): never => {
    throw new CheckpointError({ file, problem: `invalid config: ${problem}` });
  };
  if (!Array.isArray(value)) fail(`${BLOCK_SHAPES_KEY} must be a list with one entry per block`);
  const entries = value as unknown[];
  if (entries.length !== spec.numLayers) {
    fail(`${BLOCK_SHAPES_KEY} has ${entries.length} entries but the model has ${spec.numLayers} layers`);
  }
  const blocks = entries.map((entry, i): BlockShape => {
    const where = `${BLOCK_SHAPES_KEY}[${i}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) return fail(`${where} must be an object`);
    const e = entry as Record<string, unknown>;
    const size = (field: string, fallback?: unknown): number => {
      const v = e[field] ?? fallback;
      if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) fail(`${where}.${field} must be a positive integer, got ${JSON.stringify(v)}`);
      return v as number;
    };
    const numHeads = size("num_attention_heads");
    const numKvHeads = size("num_key_value_heads", e.num_attention_heads);
    const intermediateSize = size("intermediate_size");
    if (numHeads % numKvHeads !== 0) {
      fail(`${where}.num_attention_heads (${numHeads}) is not divisible by ${where}.num_key_value_heads (${numKvHeads})`);
    }
    return { numHeads, numKvHeads, intermediateSize };
  });
  const nominal = nominalBlockShape(spec);
  return blocks.every((b) => sameBlockShape(b, nominal)) ? spec : { ...spec, blocks };
};

/**
 * The per-block key for config.json when `own`, the sizes the architecture's own fields will
 * say, are not every block's sizes; nothing otherwise.
 */
export const blockShapesConfig = (spec: ModelSpec, own: BlockShape): Record<string, unknown> => {
  const shapes = Array.from({ length: spec.numLayers }, (_, i) => blockShape(spec, i));
  if (shapes.every((s) => sameBlockShape(s, own))) return {};
  return {
    [BLOCK_SHAPES_KEY]: shapes.map((s) => ({
      num_attention_heads: s.numHeads,
      num_key_value_heads: s.numKvHeads,
      intermediate_size: s.intermediateSize,
    })),
  };
};

/**
 * The sizes config.json's own fields can say for an architecture whose head size is
 * hidden / heads and whose heads all have their own keys (OPT, GPT-2): the blocks' common
 * sizes when they fit that, otherwise the heads that give the head size (and the blocks'
 * sizes go under BLOCK_SHAPES_KEY).
 */
export const multiHeadConfigShape = (spec: ModelSpec): BlockShape => {
  const common = uniformBlockShape(spec);
  if (common && common.numHeads === common.numKvHeads && common.numHeads * spec.headDim === spec.hiddenSize) return common;
  const heads = spec.hiddenSize / spec.headDim;
  if (!Number.isInteger(heads)) {
    throw new Error(`a ${spec.family} config cannot say head size ${spec.headDim} with hidden size ${spec.hiddenSize}`);
  }
  return { numHeads: heads, numKvHeads: heads, intermediateSize: common?.intermediateSize ?? spec.intermediateSize };
};
