/**
 * Child process of the queue benchmark: a real queue worker (`workerJob`, the worker
 * command's job) whose fitness is instant, so what the benchmark measures is the queue:
 * BullMQ, Redis and the search's client. Arguments: the Redis URL, the backend, the model.
 * A job's fitness is the sum of its allocation, returned at once. Stops on SIGTERM or
 * SIGINT, after the job in hand; its log goes to stderr, as the worker command's does.
 */
import { Effect } from "effect";
import type { BackendChoice } from "../src/backend/backend.ts";
import { workerJob } from "../src/jobs/worker.ts";
import type { OpenScorer } from "../src/queue/fitness-server.ts";

const [queue, backend, model] = process.argv.slice(2);
if (!queue || !backend || !model) {
  process.stderr.write("usage: queue-worker.ts REDIS_URL BACKEND MODEL\n");
  process.exit(2);
}

const until = new Promise<void>((resolve) => {
  process.once("SIGTERM", () => resolve());
  process.once("SIGINT", () => resolve());
});

const instant: OpenScorer = async () => ({
  score: async (allocation) => ({ ok: true, value: allocation.reduce((a, b) => a + b, 0) }),
  close: async () => {},
});

try {
  await Effect.runPromise(
    workerJob({
      queue,
      models: [model],
      concurrency: 1,
      backend: backend as BackendChoice,
      // The instant scorer holds no model: the memory check must not refuse the run.
      memoryMib: 4096,
      lockSeconds: 30,
      log: (line) => process.stderr.write(line + "\n"),
      until,
      openScorer: instant,
    }),
  );
} catch (e) {
  process.stderr.write(`queue-worker: ${(e as Error)?.message ?? String(e)}\n`);
  process.exit(1);
}
// Sockets are closed; tfjs's backend must not keep the process.
process.exit(0);
