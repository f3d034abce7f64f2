/**
 * A fitness worker: its own backend and its own copy of the model, pruning and scoring the
 * allocations it is sent, one at a time.
 */
import { parentPort, workerData } from "node:worker_threads";
import { initBackend } from "../backend/backend.ts";
import { serve } from "../workers/spawn.ts";
import { openFitnessModel, type FitnessWorkerData } from "./fitness-setup.ts";
import type { BlockAllocation } from "./plugin.ts";

const setup = workerData.data as FitnessWorkerData;
await initBackend(setup.backend, { share: setup.share });
const model = openFitnessModel(setup);
const score = model.score;

// null asks whether the model is ready: answered once the setup above has finished.
await serve(parentPort!, async (allocation: BlockAllocation | null) => {
  if (allocation === null) return { value: "ready" };
  const start = performance.now();
  const fitness = await score(allocation);
  return { value: { ...fitness, seconds: (performance.now() - start) / 1000 } };
});
