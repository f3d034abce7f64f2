/**
 * The worker command's job: a long-running fitness server on a job queue. It checks its
 * model copies and the queue's address, resolves its backend (the family the runs it
 * serves must share), serves runs until `until` resolves (a signal), then finishes or
 * returns the jobs in hand and stops.
 */
import { existsSync } from "node:fs";
import { freemem, hostname } from "node:os";
import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { DataError, QueueError, UsageError } from "../errors.ts";
import { parseQueueAddress } from "../queue/address.ts";
import { FitnessServer, type OpenScorer } from "../queue/fitness-server.ts";
import { threadScorer } from "../queue/thread-scorer.ts";

export interface WorkerRequest {
  readonly queue: string;
  readonly models: readonly string[];
  readonly concurrency: number;
  readonly backend: BackendChoice;
  /** MiB the runs' models may hold together (default: 80% of the memory free at start). */
  readonly memoryMib?: number;
  readonly lockSeconds: number;
  /** The leanest memory plan for every run (`--streamed`). */
  readonly streamed?: boolean;
  readonly log: (line: string) => void;
  /** Resolves when the worker should stop. */
  readonly until: Promise<unknown>;
  /** What scores a run (the benchmark's instant fitness replaces the model). */
  readonly openScorer?: OpenScorer;
}

export interface WorkerSummary {
  readonly jobs: number;
}

export const workerJob = (request: WorkerRequest) =>
  Effect.gen(function* () {
    const address = yield* Effect.try({ try: () => parseQueueAddress(request.queue), catch: (e) => e as UsageError });
    if (request.models.length === 0) return yield* new UsageError({ problem: "--model: name at least one model this worker serves" });
    for (const model of request.models) if (!existsSync(model)) return yield* new DataError({ file: model, problem: "no such file or folder" });
    const backend = yield* initBackendEffect(request.backend);
    const name = `${hostname()}-${process.pid}`;
    const memoryBytes = (request.memoryMib ?? Math.floor((0.8 * freemem()) / 2 ** 20)) * 2 ** 20;
    const server = yield* Effect.tryPromise({
      try: () =>
        FitnessServer.start({
          address,
          models: request.models,
          backend: backend.name,
          ...(request.streamed ? { streamed: true } : {}),
          concurrency: request.concurrency,
          memoryBytes,
          lockSeconds: request.lockSeconds,
          name,
          log: request.log,
          openScorer: request.openScorer ?? threadScorer,
        }),
      catch: (e) => (e instanceof QueueError ? e : new QueueError({ problem: (e as Error)?.message ?? String(e) })),
    });
    request.log(
      `worker ${name}: backend ${describeBackend(backend)}; serving ${request.models.join(", ")}, ${request.concurrency} job${request.concurrency > 1 ? "s" : ""} at a time, ` +
        `within ${Math.round(memoryBytes / 2 ** 20)} MiB; waiting for searches on ${address.shown}`,
    );
    yield* Effect.promise(() => request.until);
    request.log(`worker ${name}: stopping; the jobs in hand finish first`);
    yield* Effect.promise(() => server.stop());
    request.log(`worker ${name}: stopped after ${server.jobs} job${server.jobs === 1 ? "" : "s"}`);
    return { jobs: server.jobs } satisfies WorkerSummary;
  });
