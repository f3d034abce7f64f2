/**
 * The records the engine keeps: one history line per candidate per stage of a generation,
 * and the JSON-safe state saved after every generation, from which a run resumes exactly.
 *
 * The saved state is versioned. Version 1 (written today) holds the driver's own records
 * and, under `strategy`, the strategy's state as the strategy encodes it. Version 0 is the
 * unversioned format written before strategies existed (a generational GA only); it is
 * still read, and converted, so a run saved then resumes into the same history.
 */
import { Result, Schema } from "effect";
import { DataError } from "../errors.ts";
import type { GenerationalJson } from "./generational.ts";

export type StopReason = "generations" | "budget" | "time" | "patience";

/** The version `decodeEngineState` converts every state it reads to, and the driver writes. */
export const ENGINE_STATE_VERSION = 1;

/** Fitness as stored: failures keep their message, values are always finite. */
export const StoredFitness = Schema.Union([
  Schema.Struct({ ok: Schema.Literal(true), value: Schema.Finite }),
  Schema.Struct({ ok: Schema.Literal(false), error: Schema.String }),
]);
export type StoredFitness = typeof StoredFitness.Type;

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

const historyFields = {
  generation: Count,
  /** Position of the candidate in its stage's proposal. */
  index: Count,
  /** `genome.describe` of the individual. */
  genome: Schema.String,
  /** Phenotype key: the fitness cache's key. */
  key: Schema.String,
  /** null when the evaluation failed or gave a non-finite value. */
  fitness: Schema.NullOr(Schema.Finite),
  error: Schema.optional(Schema.String),
  /** The fitness came from the cache (an earlier or same-stage twin); no evaluation. */
  cached: Schema.Boolean,
  /** Time of this evaluation; 0 when cached. */
  seconds: Schema.Finite,
};

export const HistoryRecord = Schema.Struct({
  ...historyFields,
  /** Stage of the generation (Fidelity.stage); absent for stage 0, the only one of one-stage strategies. */
  stage: Schema.optional(Count),
  /** Fitness tokens this evaluation spent, as the host reported them; 0 when cached or not reported. */
  tokens: Count,
});
export type HistoryRecord = typeof HistoryRecord.Type;

/** One line per generation, for progress bars. */
export interface GenerationRecord {
  readonly generation: number;
  /** Candidates of the generation's first stage (fewer than asked when the budget cut it). */
  readonly size: number;
  /** Real evaluations so far, this generation included. */
  readonly evaluations: number;
  /**
   * Best fitness so far; undefined while every evaluation has failed. With a strategy that
   * has a leader: the leader's fitness, the score it was chosen on.
   */
  readonly best: number | undefined;
  /** Median of the generation's successful fitness values on the host's default fidelity. */
  readonly median: number | undefined;
  /** Failed evaluations of the generation, cached repeats of failures included. */
  readonly failed: number;
  /** Wall-clock seconds of the whole run so far, earlier runs of a resumed search included. */
  readonly seconds: number;
}

const Best = Schema.NullOr(Schema.Struct({ genome: Schema.Unknown, key: Schema.String, fitness: Schema.Finite }));

export const EngineState = Schema.Struct({
  version: Schema.Literal(ENGINE_STATE_VERSION),
  /** The seed the run was started with; a resume under another seed would not be the same run. */
  seed: Schema.Number,
  /** Generations completed: the next one to run. */
  generation: Count,
  evaluations: Count,
  /** Wall-clock seconds spent by the runs before this state was saved. */
  seconds: Schema.Finite,
  /** Generations since the best fitness last improved (with a leader: since the leader last changed). */
  stale: Count,
  /** Fitness by phenotype key, on the host's default fidelity (the only fidelity cached across generations). */
  cache: Schema.Array(Schema.Tuple([Schema.String, StoredFitness])),
  history: Schema.Array(HistoryRecord),
  /** The best so far (with a leader: the latest leader), genome as `genome.encode` gives it. */
  best: Best,
  /** The strategy's own state, as its `encode` gives it; `name` must match the resuming strategy's. */
  strategy: Schema.Struct({ name: Schema.String, state: Schema.Unknown }),
});
export type EngineState = typeof EngineState.Type;

/** Version 0: the unversioned state of the generational GA before strategies. */
const EngineStateV0 = Schema.Struct({
  seed: Schema.Number,
  generation: Count,
  evaluations: Count,
  seconds: Schema.Finite,
  stale: Count,
  /** The last generation, genomes as `genome.encode` gives them. */
  population: Schema.Array(Schema.Struct({ genome: Schema.Unknown, key: Schema.String })),
  cache: Schema.Array(Schema.Tuple([Schema.String, StoredFitness])),
  history: Schema.Array(Schema.Struct(historyFields)),
  best: Best,
});
type EngineStateV0 = typeof EngineStateV0.Type;

const decodeWith = <S extends Schema.ConstraintDecoder<unknown>>(schema: S, json: unknown, file: string): S["Type"] => {
  const result = Schema.decodeUnknownResult(schema)(json, { onExcessProperty: "error" });
  if (Result.isFailure(result)) {
    throw new DataError({ file, problem: `invalid search state: ${result.failure.message.replace(/\n\s*/g, " ")}` });
  }
  return result.success;
};

/**
 * A version 0 state as version 1: its records with no tokens spent (none were reported
 * then), and its population as the generational strategy's state, each individual with
 * the fitness the old engine would have looked up in its cache.
 */
const fromVersion0 = (old: EngineStateV0, file: string): EngineState => {
  const cache = new Map(old.cache);
  const population = old.population.map((p) => {
    const fitness = cache.get(p.key);
    if (fitness === undefined) throw new DataError({ file, problem: `invalid search state: the population's key ${p.key} has no cached fitness` });
    return { genome: p.genome, key: p.key, fitness: fitness.ok ? fitness.value : null };
  });
  const strategy: GenerationalJson = { population };
  return {
    version: ENGINE_STATE_VERSION,
    seed: old.seed,
    generation: old.generation,
    evaluations: old.evaluations,
    seconds: old.seconds,
    stale: old.stale,
    cache: old.cache,
    history: old.history.map((r) => ({ ...r, tokens: 0 })),
    best: old.best,
    strategy: { name: "generational", state: strategy },
  };
};

/**
 * Checks a state read back from a checkpoint file, of any version this engine knows, and
 * gives it in the current version; a mismatch or an unknown version names the file.
 */
export const decodeEngineState = (json: unknown, file: string): EngineState => {
  const version = typeof json === "object" && json !== null && !Array.isArray(json) && "version" in json ? json.version : 0;
  if (version === 0) return fromVersion0(decodeWith(EngineStateV0, json, file), file);
  if (version === ENGINE_STATE_VERSION) return decodeWith(EngineState, json, file);
  throw new DataError({
    file,
    problem: `search state version ${JSON.stringify(version)} is unknown: this evosparse reads versions 0 (unversioned) to ${ENGINE_STATE_VERSION}`,
  });
};
