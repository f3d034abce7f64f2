import { Data } from "effect";

/** A checkpoint file (or folder) that cannot be read as a model. */
export class CheckpointError extends Data.TaggedError("CheckpointError")<{
  readonly file: string;
  readonly problem: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.problem}`;
  }
}

/** A tokenizer file that cannot be loaded. */
export class TokenizerError extends Data.TaggedError("TokenizerError")<{
  readonly file: string;
  readonly problem: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.problem}`;
  }
}

/** An input text or data file that cannot be used as asked. */
export class DataError extends Data.TaggedError("DataError")<{
  readonly file: string;
  readonly problem: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.problem}`;
  }
}

/** A backend that was asked for and could not be initialised. */
export class BackendError extends Data.TaggedError("BackendError")<{
  readonly backend: string;
  readonly problem: string;
}> {
  override get message(): string {
    return `backend ${this.backend}: ${this.problem}`;
  }
}

/** Flags or arguments that do not make sense together. */
export class UsageError extends Data.TaggedError("UsageError")<{
  readonly problem: string;
}> {
  override get message(): string {
    return this.problem;
  }
}

export type EvosparseError = CheckpointError | TokenizerError | DataError | BackendError | UsageError;

export const isEvosparseError = (e: unknown): e is EvosparseError =>
  typeof e === "object" &&
  e !== null &&
  "_tag" in e &&
  ["CheckpointError", "TokenizerError", "DataError", "BackendError", "UsageError"].includes(
    (e as { _tag: string })._tag,
  );
