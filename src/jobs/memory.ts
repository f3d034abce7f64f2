/**
 * A job's memory plan: sizes from the checkpoint's headers, the run's workload, the budget
 * (`--memory` or what the machine has) and the backend; printed in one line, or the run is
 * refused in one line before any work (src/memory/plan.ts).
 */
import { existsSync, statfsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { Effect } from "effect";
import type { Checkpoint } from "../checkpoint/types.ts";
import { UsageError } from "../errors.ts";
import { memoryBudget } from "../memory/budget.ts";
import { describePlan, modelSizes, planMemory, type MemoryPlan, type Workload } from "../memory/plan.ts";

export interface MemoryOptions {
  /** `--memory`: MiB this run may use. */
  readonly memoryMib?: number;
  /** `--streamed`: stream blocks even where the model would fit. */
  readonly streamed?: boolean;
  /** Where the run's scratch folder would go: what waits on disk must fit the free space there. */
  readonly scratchNear?: string;
}

/** Free bytes on the file system of `path` (or of its nearest existing folder). */
const freeDiskBytes = (path: string): number => {
  let at = resolve(path);
  while (!existsSync(at) && dirname(at) !== at) at = dirname(at);
  try {
    const s = statfsSync(at);
    return s.bavail * s.bsize;
  } catch {
    return Infinity;
  }
};

/**
 * The plan, or a UsageError saying why the run cannot fit, without logging: jobs call it
 * before drawing calibration windows (openCalibratedModel's beforeDrawing), so that an
 * absurd --nsamples is refused before the windows themselves take the memory.
 */
export const planOrRefuse = (checkpoint: Checkpoint, backend: string, workload: Workload, options: MemoryOptions): MemoryPlan => {
  const result = Effect.runSync(Effect.result(planRun(checkpoint, backend, workload, options)));
  if (result._tag === "Failure") throw result.failure;
  return result.success;
};

export const planRun = (checkpoint: Checkpoint, backend: string, workload: Workload, options: MemoryOptions, log?: (line: string) => void): Effect.Effect<MemoryPlan, UsageError> =>
  Effect.suspend((): Effect.Effect<MemoryPlan, UsageError> => {
    const budget = { ...memoryBudget(backend, options.memoryMib), ...(options.scratchNear !== undefined ? { diskBytes: freeDiskBytes(options.scratchNear) } : {}) };
    const plan = planMemory(modelSizes(checkpoint.spec, checkpoint.bytesPerWeight), workload, budget, options.streamed ? { streamed: true } : {});
    if ("refused" in plan) {
      const hints = [
        workload.calibration ? "fewer --nsamples" : undefined,
        "a shorter --seqlen",
        workload.forward.batch > 1 ? "a smaller --batch" : undefined,
        (workload.copies ?? 1) > 1 ? "fewer --workers" : undefined,
        budget.source === "--memory" ? "a larger --memory" : undefined,
      ].filter((h) => h !== undefined);
      return Effect.fail(new UsageError({ problem: `${checkpoint.path}: this run ${plan.refused}; try ${hints.join(", ")}` }));
    }
    log?.(describePlan(plan));
    return Effect.succeed(plan);
  });
