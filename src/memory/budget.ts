/**
 * How much memory a run may plan for: `--memory MIB` when given, else what the machine can
 * still give (Linux's MemAvailable, or the cgroup's limit when it is lower), and what the
 * backend itself can hold: the wasm heap's 4 GiB for wasm and native, no own limit for the
 * others (a GPU's memory is its driver's to manage).
 */
import { freemem, totalmem } from "node:os";
import { HEAP_BACKENDS } from "../model/backend-traits.ts";
import { WASM_HEAP_BYTES, type MemoryBudget } from "./plan.ts";

const MiB = 2 ** 20;

/** What the machine can still give this process. */
export const availableMemory = (): number => {
  const constrained = typeof process.constrainedMemory === "function" ? process.constrainedMemory() : 0;
  const limit = constrained > 0 && constrained < totalmem() ? constrained - process.memoryUsage.rss() : Infinity;
  return Math.max(0, Math.min(freemem(), limit));
};

export const memoryBudget = (backend: string, memoryMib?: number): MemoryBudget => ({
  bytes: memoryMib !== undefined ? memoryMib * MiB : availableMemory(),
  source: memoryMib !== undefined ? "--memory" : "available",
  backendBytes: HEAP_BACKENDS.includes(backend) ? WASM_HEAP_BYTES : Infinity,
  backendInProcess: HEAP_BACKENDS.includes(backend) || backend === "cpu",
});
