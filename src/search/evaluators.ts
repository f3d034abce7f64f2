/**
 * Where candidates are scored: in this thread, or spread over worker threads that each
 * hold their own backend and model. Either way a batch comes back in the order it was
 * given, so the search's history does not depend on the number of workers.
 */
import { Effect, Queue } from "effect";
import type { Fidelity, Fitness } from "../engine/genome.ts";
import { WorkerError } from "../errors.ts";
import { spawnTsWorker, WorkerChannel } from "../workers/spawn.ts";
import { configureNativeThreads } from "../backend/native-blas.ts";
import type { FitnessModel, FitnessRequest, FitnessSetup, FitnessWorkerData } from "./fitness-setup.ts";
import type { BlockAllocation } from "./plugin.ts";

export interface FitnessEvaluator {
  readonly workers: number;
  /** Scores a batch on the default fitness windows, or for a fidelity with tokens on its stage's minibatch. */
  evaluate(batch: readonly BlockAllocation[], fidelity?: Fidelity): Effect.Effect<readonly Fitness[], Error>;
}

export const inProcessEvaluator = (model: FitnessModel, onEach?: () => void): FitnessEvaluator => {
  const score = model.score;
  return {
    workers: 1,
    // One candidate after another: they share the one model.
    evaluate: (batch, fidelity) =>
      Effect.forEach(batch, (allocation) =>
        Effect.promise(async () => {
          const start = performance.now();
          const fitness = await score(allocation, fidelity);
          onEach?.();
          return { ...fitness, seconds: (performance.now() - start) / 1000 };
        }),
      ),
  };
};

/**
 * N worker threads, acquired for the scope and terminated when it closes (also when the
 * search is interrupted). Each worker takes the next candidate as soon as it is free.
 */
export const workerPoolEvaluator = (
  setup: FitnessSetup,
  workers: number,
  onEach?: () => void,
  /** The worker module (tests swap in one that misbehaves). */
  entry: URL = new URL("./fitness-worker.ts", import.meta.url),
) =>
  Effect.acquireRelease(
    Effect.sync(() => Array.from({ length: workers }, () => new WorkerChannel(spawnTsWorker(entry, { ...setup, share: workers } satisfies FitnessWorkerData)))),
    // BLAS threads are one setting for the whole process: the workers' share of the cores
    // would otherwise stay with the main thread for the work after the search.
    (channels) =>
      Effect.promise(() => Promise.all(channels.map((c) => c.terminate()))).pipe(Effect.tap(() => Effect.sync(() => configureNativeThreads(1)))),
  ).pipe(
    // Every worker has built its model before the search starts, so a failing setup stops
    // the run at once and search times count evaluations only.
    Effect.tap((channels) =>
      Effect.tryPromise({
        try: () => Promise.all(channels.map((c) => c.request<string>(null))),
        catch: (e) => new WorkerError({ problem: `failed to start: ${(e as Error)?.message ?? String(e)}` }),
      }),
    ),
    Effect.flatMap((channels) =>
      Effect.gen(function* () {
        // Free workers, shared by every batch: batches evaluated at the same time (a queue
        // worker's concurrent jobs) never put two candidates on one worker.
        const free = yield* Queue.unbounded<WorkerChannel>();
        for (const channel of channels) yield* Queue.offer(free, channel);
        const evaluator: FitnessEvaluator = {
          workers,
          // Each candidate borrows a free worker and gives it back; Effect runs as many at
          // once as there are workers, keeps the batch order, and interrupts the lot if the
          // search is interrupted (the scope then terminates the threads).
          evaluate: (batch, fidelity) =>
            Effect.forEach(
              batch,
              (allocation) =>
                Effect.acquireUseRelease(
                  Queue.take(free),
                  (channel) =>
                    // A candidate's own failure comes back as a Fitness; a rejected request means
                    // the worker itself broke, which says nothing of the candidate: the search
                    // stops with it, and nothing of it is cached.
                    Effect.tryPromise({
                      try: () => channel.request<Fitness>({ allocation, ...(fidelity ? { fidelity } : {}) } satisfies FitnessRequest),
                      catch: (e) => new WorkerError({ problem: (e as Error)?.message ?? String(e) }),
                    }).pipe(Effect.tap(() => Effect.sync(() => onEach?.()))),
                  (channel) => Queue.offer(free, channel),
                ),
              { concurrency: channels.length },
            ),
        };
        return evaluator;
      }),
    ),
  );
