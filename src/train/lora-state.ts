/**
 * The checkpoint of a LoRA recovery run: the adapters and their AdamW moments
 * (state.safetensors: param/<name>, m/<name>, v/<name>) and a record (state.json) of the
 * step to resume at, the optimizer's step, the adapter names in order, the loss log, and
 * the settings that decide the result. A checkpoint is only resumed by a run with the same
 * settings: resuming with others would give weights that neither run describes.
 * state.json is read back through a Schema, so a damaged file is one clear error naming it.
 */
import { existsSync } from "node:fs";
import { readBoundedUtf8 } from "../reads.ts";
import { join } from "node:path";
import { Result, Schema } from "effect";
import { openSafetensors, writeSafetensors } from "../checkpoint/safetensors.ts";
import { DataError } from "../errors.ts";
import { markerContent, OUTPUT_MARKER, stagingFolder, writeStagedFolder } from "../output/folder.ts";
import { writeNewFile } from "../files.ts";

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

/** Everything that decides a run's result besides the step count reached. */
export const LoraSettings = Schema.Struct({
  rank: Count,
  alpha: Schema.Finite,
  lr: Schema.Finite,
  batch: Count,
  seqlen: Count,
  seed: Count,
  steps: Count,
  /** The architecture and every block's sizes. */
  model: Schema.String,
  /** A hash of the base weights: pruned models of one architecture share their shapes. */
  weights: Schema.String,
  /** The training tokens' count and hash. */
  tokens: Schema.String,
});
export type LoraSettings = typeof LoraSettings.Type;

export const LoraStepLogSchema = Schema.Struct({ step: Count, loss: Schema.Finite });

export const LoraState = Schema.Struct({
  /** Steps done: the next one to run. */
  step: Count,
  /** AdamW's own step count (bias correction). */
  optimizerStep: Count,
  /** Adapter factor names, in the order of the optimizer's slots. */
  names: Schema.Array(Schema.String),
  log: Schema.Array(LoraStepLogSchema),
  settings: LoraSettings,
});
export type LoraState = typeof LoraState.Type;

export const STATE_FILE = "state.json";
export const TENSORS_FILE = "state.safetensors";

export const decodeLoraState = (text: string, file: string): LoraState => {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
  const result = Schema.decodeUnknownResult(LoraState)(json, { onExcessProperty: "error" });
  if (Result.isFailure(result)) throw new DataError({ file, problem: `invalid LoRA state: ${result.failure.message.replace(/\n\s*/g, " ")}` });
  return result.success;
};

/** The checkpoint's content: its record and, per adapter factor in `state.names` order, shape, values and moments. */
export interface LoraCheckpoint {
  readonly state: LoraState;
  readonly shapes: readonly (readonly number[])[];
  readonly values: readonly Float32Array[];
  readonly m: readonly Float32Array[];
  readonly v: readonly Float32Array[];
}

export const hasLoraCheckpoint = (dir: string): boolean => existsSync(join(dir, STATE_FILE));

/** Written whole in a staging folder and moved into place, so a run killed mid-write leaves the previous checkpoint. */
export const writeLoraCheckpoint = (dir: string, c: LoraCheckpoint): void => {
  const staging = stagingFolder(dir);
  writeStagedFolder(dir, staging, () => {
    const tensors = c.state.names.flatMap((name, i) => [
      { name: `param/${name}`, dtype: "F32" as const, shape: c.shapes[i]!, data: c.values[i]! },
      { name: `m/${name}`, dtype: "F32" as const, shape: c.shapes[i]!, data: c.m[i]! },
      { name: `v/${name}`, dtype: "F32" as const, shape: c.shapes[i]!, data: c.v[i]! },
    ]);
    writeSafetensors(join(staging, TENSORS_FILE), tensors);
    writeNewFile(join(staging, STATE_FILE), JSON.stringify(c.state));
    writeNewFile(join(staging, OUTPUT_MARKER), markerContent("lora checkpoint", [TENSORS_FILE, STATE_FILE]));
  });
};

const SETTING_KEYS = ["rank", "alpha", "lr", "batch", "seqlen", "seed", "steps", "model", "weights", "tokens"] as const;

const settingDifference = (key: (typeof SETTING_KEYS)[number], was: string | number, now: string | number): string => {
  switch (key) {
    case "model":
      return `was written for another model (${was}), not this one (${now})`;
    case "weights":
      return `was written for other weights (fingerprint ${was}, this model's is ${now})`;
    case "tokens":
      return `was written for other training tokens (${was}, not ${now})`;
    default:
      return `was written with ${key} ${was}, but this run has ${key} ${now}`;
  }
};

/**
 * Reads the checkpoint in `dir` for a run with `settings` whose adapter factors are
 * `names` with `shapes`; refuses one written by a different run, naming what differs.
 */
export const readLoraCheckpoint = (
  dir: string,
  expected: { readonly settings: LoraSettings; readonly names: readonly string[]; readonly shapes: readonly (readonly number[])[] },
): LoraCheckpoint => {
  const file = join(dir, STATE_FILE);
  const state = decodeLoraState(readBoundedUtf8(file, "state"), file);
  const refuse = (problem: string): never => {
    throw new DataError({ file, problem: `${problem}; resume with that run's settings, or remove ${dir} to start afresh` });
  };
  for (const key of SETTING_KEYS) {
    if (state.settings[key] !== expected.settings[key]) refuse(settingDifference(key, state.settings[key], expected.settings[key]));
  }
  if (state.names.length !== expected.names.length || state.names.some((n, i) => n !== expected.names[i])) {
    refuse(`names adapters [${state.names.join(", ")}], but this run has [${expected.names.join(", ")}]`);
  }
  if (state.step >= state.settings.steps || state.log.length !== state.step) {
    throw new DataError({ file, problem: `is inconsistent: step ${state.step} of ${state.settings.steps} with ${state.log.length} logged steps` });
  }
  const tensorsFile = join(dir, TENSORS_FILE);
  const st = openSafetensors(tensorsFile);
  try {
    const read = (prefix: string, name: string, shape: readonly number[]): Float32Array => {
      const entry = st.tensors.get(`${prefix}/${name}`);
      if (entry !== undefined && (entry.shape.length !== shape.length || entry.shape.some((n, i) => n !== shape[i]))) {
        throw new DataError({ file: tensorsFile, problem: `${prefix}/${name} has shape [${entry.shape.join(", ")}] but the adapter needs [${shape.join(", ")}]` });
      }
      return st.read(`${prefix}/${name}`);
    };
    const each = (prefix: string) => state.names.map((n, i) => read(prefix, n, expected.shapes[i]!));
    return { state, shapes: expected.shapes, values: each("param"), m: each("m"), v: each("v") };
  } finally {
    st.close();
  }
};
