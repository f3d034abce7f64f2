/**
 * A worker that breaks is an infrastructure failure: the search stops with a WorkerError,
 * and the candidate it was scoring is neither judged nor cached.
 */
import { Effect, Exit, Cause } from "effect";
import { describe, expect, it } from "vitest";
import type { EngineState } from "../src/engine/state.ts";
import { evolve } from "../src/engine/evolve.ts";
import { WorkerError } from "../src/errors.ts";
import { workerPoolEvaluator } from "../src/search/evaluators.ts";
import type { FitnessSetup } from "../src/search/fitness-setup.ts";
import type { Genome } from "../src/engine/genome.ts";

const entry = new URL("./fixtures/crashing-fitness-worker.ts", import.meta.url);
// The fixture ignores its setup; the evaluator only passes it on.
const setup = {} as FitnessSetup;

const failureOf = <A, E>(exit: Exit.Exit<A, E>): unknown => (Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined);

/** Genomes are numbers; every individual is a new phenotype, so each one is evaluated. */
const counter: Genome<number, readonly number[]> = {
  create: (_rng, index) => index,
  mutate: (g, rng) => g + 1 + rng.int(1000),
  crossover: (a) => a,
  decode: (g) => [g],
  describe: (g) => String(g),
  key: (g) => String(g),
  encode: (g) => g,
  restore: (json) => json as number,
};

describe("a fitness worker that breaks", () => {
  it("fails the batch with a WorkerError instead of a candidate's failed fitness", async () => {
    const exit = await Effect.runPromiseExit(
      Effect.scoped(Effect.flatMap(workerPoolEvaluator(setup, 1, undefined, entry), (pool) => pool.evaluate([[0.5], [0.6], [0.7]]))),
    );
    const error = failureOf(exit);
    expect(error).toBeInstanceOf(WorkerError);
    expect((error as WorkerError).message).toBe("fitness worker: worker exited with code 3");
  });

  it("stops the engine; the saved state holds no fitness for the candidate it was scoring", async () => {
    const saved: EngineState[] = [];
    const exit = await Effect.runPromiseExit(
      Effect.scoped(
        Effect.flatMap(workerPoolEvaluator(setup, 1, undefined, entry), (pool) =>
          evolve({
            genome: counter,
            phenotypeKey: (p) => String(p[0]),
            evaluate: pool.evaluate,
            seed: 0,
            population: 1,
            generations: 5,
            checkpoint: { load: () => undefined, save: (state) => saved.push(state) },
          }),
        ),
      ),
    );
    expect(failureOf(exit)).toBeInstanceOf(WorkerError);
    // Generation 0 (one candidate, scored) was saved; generation 1 died with the worker.
    expect(saved).toHaveLength(1);
    const last = saved.at(-1)!;
    expect(last.cache).toEqual([["0", { ok: true, value: 11 }]]);
    expect(last.history.every((r) => r.error === undefined)).toBe(true);
  });
});
