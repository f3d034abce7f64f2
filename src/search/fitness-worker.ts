/**
 * A fitness worker: its own backend and its own copy of the model, pruning and scoring the
 * allocations it is sent, one at a time.
 */
import { parentPort, workerData } from "node:worker_threads";
import { initBackend } from "../backend/backend.ts";
import { loadArchitecturesFromEnvironment } from "../checkpoint/architectures/index.ts";
import { serve } from "../workers/spawn.ts";
import { openFitnessModel, type FitnessRequest, type FitnessWorkerData } from "./fitness-setup.ts";

const setup = workerData.data as FitnessWorkerData;
// The architecture records the run loaded (--architecture), before the model is opened.
await loadArchitecturesFromEnvironment();
await initBackend(setup.backend, { share: setup.share });
const model = openFitnessModel(setup);
const score = model.score;

// null asks whether the model is ready: answered once the setup above has finished.
await serve(parentPort!, async (request: FitnessRequest | null) => {
  if (request === null) return { value: "ready" };
  const start = performance.now();
  const fitness = await score(request.allocation, request.fidelity);
  return { value: { ...fitness, seconds: (performance.now() - start) / 1000 } };
});
