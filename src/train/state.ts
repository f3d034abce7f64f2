/**
 * The record a training checkpoint keeps beside its tensors (state.json): the step to
 * resume at, the optimizer's step, the parameter names in order, and the loss log. Read
 * back through a Schema, so a damaged file is one clear error naming it.
 */
import { Result, Schema } from "effect";
import { DataError } from "../errors.ts";

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

export const StepLogSchema = Schema.Struct({
  step: Count,
  lr: Schema.Finite,
  trainLoss: Schema.Number,
  gradNorm: Schema.Number,
  valLoss: Schema.optional(Schema.Number),
  seconds: Schema.Finite,
});

export const TrainingState = Schema.Struct({
  /** Steps done: the next one to run. */
  step: Count,
  /** AdamW's own step count (bias correction). */
  optimizerStep: Count,
  /** Parameter names, in the order of the tensors param/, m/ and v/ in state.safetensors. */
  names: Schema.Array(Schema.String),
  log: Schema.Array(StepLogSchema),
});
export type TrainingState = typeof TrainingState.Type;

/**
 * Decodes a state.json's text. `check` sees the parsed file first and gives the state to
 * decode (the training job checks the record of what made the state there).
 */
export const decodeTrainingState = (text: string, file: string, check: (json: unknown) => unknown = (json) => json): TrainingState => {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
  const json = check(parsed);
  const result = Schema.decodeUnknownResult(TrainingState)(json, { onExcessProperty: "error" });
  if (Result.isFailure(result)) throw new DataError({ file, problem: `invalid training state: ${result.failure.message.replace(/\n\s*/g, " ")}` });
  return result.success;
};
