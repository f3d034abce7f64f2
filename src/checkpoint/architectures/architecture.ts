import { Result, Schema } from "effect";
import { CheckpointError } from "../../errors.ts";
import type { ModelSpec } from "../../model/spec.ts";

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

/** bos/eos ids are a number, a list (LLaMA-3 instruct lists several eos ids) or null. */
export const TokenId = Schema.optional(Schema.NullOr(Schema.Union([Schema.Number, Schema.Array(Schema.Number)])));

export const firstId = (id: number | readonly number[] | null | undefined): number | undefined =>
  id === null || id === undefined ? undefined : typeof id === "number" ? id : id[0];

export const requireDivisible = (file: string, what: string, a: number, b: number): void => {
  if (a % b !== 0) throw new CheckpointError({ file, problem: `invalid config: ${what} (${a} is not divisible by ${b})` });
};
