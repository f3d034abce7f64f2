/**
 * The records the engine keeps: one history line per individual per generation, and the
 * JSON-safe state saved after every generation, from which a run resumes exactly.
 */
import { Result, Schema } from "effect";
import { DataError } from "../errors.ts";

export type StopReason = "generations" | "budget" | "time" | "patience";

/** Fitness as stored: failures keep their message, values are always finite. */
export const StoredFitness = Schema.Union([
  Schema.Struct({ ok: Schema.Literal(true), value: Schema.Finite }),
  Schema.Struct({ ok: Schema.Literal(false), error: Schema.String }),
]);
export type StoredFitness = typeof StoredFitness.Type;

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

export const HistoryRecord = Schema.Struct({
  generation: Count,
  index: Count,
  /** `genome.describe` of the individual. */
  genome: Schema.String,
  /** Phenotype key: the fitness cache's key. */
  key: Schema.String,
  /** null when the evaluation failed or gave a non-finite value. */
  fitness: Schema.NullOr(Schema.Finite),
  error: Schema.optional(Schema.String),
  /** The fitness came from the cache (an earlier or same-generation twin); no evaluation. */
  cached: Schema.Boolean,
  /** Time of this evaluation; 0 when cached. */
  seconds: Schema.Finite,
});
export type HistoryRecord = typeof HistoryRecord.Type;

/** One line per generation, for progress bars. */
export interface GenerationRecord {
  readonly generation: number;
  /** Individuals in the generation (fewer than the population when the budget cut it). */
  readonly size: number;
  /** Real evaluations so far, this generation included. */
  readonly evaluations: number;
  /** Best fitness so far; undefined while every evaluation has failed. */
  readonly best: number | undefined;
  /** Median of the generation's successful fitness values. */
  readonly median: number | undefined;
  readonly failed: number;
  /** Wall-clock seconds of the whole run so far, earlier runs of a resumed search included. */
  readonly seconds: number;
}

const Individual = Schema.Struct({ genome: Schema.Unknown, key: Schema.String });

export const EngineState = Schema.Struct({
  /** The seed the run was started with; a resume under another seed would not be the same run. */
  seed: Schema.Number,
  /** Generations completed: the next one to run. */
  generation: Count,
  evaluations: Count,
  /** Wall-clock seconds spent by the runs before this state was saved. */
  seconds: Schema.Finite,
  /** Generations since the best fitness last improved. */
  stale: Count,
  /** The last generation, genomes as `genome.encode` gives them. */
  population: Schema.Array(Individual),
  cache: Schema.Array(Schema.Tuple([Schema.String, StoredFitness])),
  history: Schema.Array(HistoryRecord),
  best: Schema.NullOr(Schema.Struct({ genome: Schema.Unknown, key: Schema.String, fitness: Schema.Finite })),
});
export type EngineState = typeof EngineState.Type;

/** Checks a state read back from a checkpoint file; a mismatch names the file and the field. */
export const decodeEngineState = (json: unknown, file: string): EngineState => {
  const result = Schema.decodeUnknownResult(EngineState)(json);
  if (Result.isFailure(result)) {
    throw new DataError({ file, problem: `invalid search state: ${result.failure.message.replace(/\n\s*/g, " ")}` });
  }
  return result.success;
};
