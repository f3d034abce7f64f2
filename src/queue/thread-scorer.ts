/**
 * A queue worker's scorer for one run: worker threads, each with its own backend and copy
 * of the run's fitness model (the same as `search --workers`). The model never runs on the
 * main thread, which stays free to renew the jobs' locks in Redis while candidates are
 * scored.
 */
import { Effect, Exit, Scope } from "effect";
import { workerPoolEvaluator } from "../search/evaluators.ts";
import type { OpenScorer } from "./fitness-server.ts";

export const threadScorer: OpenScorer = async (setup, concurrency) => {
  const scope = await Effect.runPromise(Scope.make());
  const close = () => Effect.runPromise(Scope.close(scope, Exit.void));
  try {
    const pool = await Effect.runPromise(Scope.provide(scope)(workerPoolEvaluator(setup, concurrency)));
    return {
      score: async (allocation, fidelity) => (await Effect.runPromise(pool.evaluate([allocation], fidelity)))[0]!,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
};
