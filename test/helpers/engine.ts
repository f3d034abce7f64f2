/** The engine tests' toy problem and clock, shared by the strategy tests. */
import { Clock, Effect } from "effect";
import type { Fitness, Genome } from "../../src/engine/genome.ts";
import { Rng } from "../../src/rng.ts";
import { decodeEngineState, type EngineState } from "../../src/engine/state.ts";

// A toy problem: integer vectors in [0, MAX]^D, fitness = squared distance to TARGET. Small
// enough that phenotypes repeat, so the cache is exercised.
export type Vector = readonly number[];
export const TARGET = [3, 7, 1, 9];
export const MAX = 10;

export const vectorGenome = (dims = TARGET.length, max = MAX): Genome<Vector, Vector> => ({
  create: (rng) => Array.from({ length: dims }, () => rng.int(max + 1)),
  mutate: (v, rng) => {
    const out = [...v];
    const i = rng.int(dims);
    const step = rng.next() < 0.5 ? -1 : 1;
    out[i] = Math.min(max, Math.max(0, out[i]! + step));
    return out;
  },
  crossover: (a, b, rng) => a.map((x, i) => (rng.next() < 0.5 ? x : b[i]!)),
  key: (v) => v.join(","),
  decode: (v) => v,
  describe: (v) => `[${v.join(" ")}]`,
  encode: (v) => [...v],
  restore: (json) => {
    if (!Array.isArray(json) || !json.every((x) => Number.isInteger(x))) throw new Error("not a vector");
    return json as number[];
  },
});

export const sphere = (v: Vector): number => v.reduce((sum, x, i) => sum + (x - (TARGET[i] ?? 0)) ** 2, 0);

/** Time moves only when an evaluation says so, so recorded seconds are reproducible. */
export const fakeClock = () => {
  let millis = 0;
  const clock: Clock.Clock = {
    currentTimeMillisUnsafe: () => millis,
    currentTimeMillis: Effect.sync(() => millis),
    currentTimeNanosUnsafe: () => BigInt(millis) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(millis) * 1_000_000n),
    monotonicTimeNanosUnsafe: () => BigInt(millis) * 1_000_000n,
    monotonicTimeNanos: Effect.sync(() => BigInt(millis) * 1_000_000n),
    sleep: () => Effect.void,
  };
  return { clock, advance: (ms: number) => (millis += ms) };
};

export type Clocked = ReturnType<typeof fakeClock>;

/** A checkpoint store that keeps every saved state, as JSON would, and can start from one. */
export const store = (initial?: EngineState) => {
  const states: EngineState[] = [];
  return {
    states,
    checkpoint: {
      load: () => initial,
      save: (state: EngineState) => void states.push(decodeEngineState(JSON.parse(JSON.stringify(state)), "state.json")),
    },
  };
};

/**
 * Scores a batch concurrently, each candidate finishing after a random number of yields (so
 * in a scrambled order) and costing a second of the fake clock.
 */
export const scrambled = (time: Clocked, shuffleSeed: number, batch: readonly Vector[], score: (v: Vector) => Fitness) => {
  const rng = new Rng(shuffleSeed);
  const delays = batch.map(() => rng.int(8));
  return Effect.forEach(
    batch,
    (v, i) =>
      Effect.gen(function* () {
        for (let k = 0; k < delays[i]!; k++) yield* Effect.yieldNow;
        time.advance(1000);
        return score(v);
      }),
    { concurrency: "unbounded" },
  );
};
