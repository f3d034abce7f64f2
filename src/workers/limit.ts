/**
 * How many worker threads a machine can run well: one per core (each worker runs its own
 * single-threaded backend, so more than the cores only queue for them), and no more model
 * copies than the available memory holds.
 */
import { availableParallelism, freemem } from "node:os";

export interface WorkerBudget {
  /** Cores this process may use. */
  readonly cores: number;
  /** Memory the system can still give (MemAvailable on Linux). */
  readonly availableBytes: number;
  /** What one worker holds: its backend and its copy of the model. */
  readonly perWorkerBytes: number;
}

export const machineBudget = (perWorkerBytes: number): WorkerBudget => ({
  cores: availableParallelism(),
  availableBytes: freemem(),
  perWorkerBytes,
});

/** The most workers the budget allows; always at least one. */
export const workerLimit = (budget: WorkerBudget): number =>
  Math.max(1, Math.min(budget.cores, Math.floor(budget.availableBytes / Math.max(1, budget.perWorkerBytes))));

/** Why `requested` workers are more than the budget allows, in words, or undefined. */
export const workerExcess = (requested: number, budget: WorkerBudget): string | undefined => {
  const limit = workerLimit(budget);
  if (requested <= limit) return undefined;
  const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`;
  return limit < budget.cores
    ? `${limit} fit in the ${mib(budget.availableBytes)} of memory available (about ${mib(budget.perWorkerBytes)} each)`
    : `this machine has ${budget.cores} core${budget.cores === 1 ? "" : "s"}`;
};
