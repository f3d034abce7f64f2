import { Data, Effect } from "effect";

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

/**
 * The machinery that scores candidates broke (a worker thread crashed or exited, a setup
 * failed): an infrastructure failure, never a candidate's fitness. The search stops with
 * it; what was saved resumes.
 */
export class WorkerError extends Data.TaggedError("WorkerError")<{
  readonly problem: string;
}> {
  override get message(): string {
    return `fitness worker: ${this.problem}`;
  }
}

/**
 * The job queue failed: Redis unreachable at start or away for longer than the timeout, or
 * a queue job that failed on every attempt. Like WorkerError, never a candidate's fitness.
 */
export class QueueError extends Data.TaggedError("QueueError")<{
  readonly problem: string;
}> {
  override get message(): string {
    return `queue: ${this.problem}`;
  }
}

/**
 * The backend could not allocate a tensor: a run the memory plan did not foresee. It names
 * the tensor; on a wasm heap (wasm, native) the backend is unusable afterwards.
 */
export class BackendMemoryError extends Data.TaggedError("BackendMemoryError")<{
  readonly what: string;
  readonly bytes: number;
  readonly detail: string;
}> {
  override get message(): string {
    return `the backend ran out of memory allocating ${this.what} (${(this.bytes / 2 ** 20).toFixed(0)} MiB): ${this.detail}; give a smaller --memory, --nsamples or --seqlen so that the run is planned to stream`;
  }
}

export type EvosparseError = CheckpointError | TokenizerError | DataError | BackendError | UsageError | WorkerError | QueueError | BackendMemoryError;

const TAGS: ReadonlySet<string> = new Set(["CheckpointError", "TokenizerError", "DataError", "BackendError", "UsageError", "WorkerError", "QueueError", "BackendMemoryError"]);

export const isEvosparseError = (e: unknown): e is EvosparseError =>
  typeof e === "object" && e !== null && "_tag" in e && TAGS.has((e as { _tag: string })._tag);

/**
 * Runs code that reports bad input by throwing one of the errors above: those become the
 * Effect's typed failure, anything else (a bug) a defect. It replaces casting whatever was
 * thrown to the error type one hopes it is.
 */
export const attempt = <A>(run: () => A): Effect.Effect<A, EvosparseError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(run());
    } catch (error) {
      return isEvosparseError(error) ? Effect.fail(error) : Effect.die(error);
    }
  });

/** `attempt` for asynchronous code. */
export const attemptPromise = <A>(run: () => Promise<A>): Effect.Effect<A, EvosparseError> =>
  Effect.flatMap(
    Effect.promise(() => run().then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error }))),
    (r) => (r.ok ? Effect.succeed(r.value) : isEvosparseError(r.error) ? Effect.fail(r.error) : Effect.die(r.error)),
  );
