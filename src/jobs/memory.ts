/**
 * A job's memory plan: sizes from the checkpoint's headers, the run's workload, the budget
 * (`--memory` or what the machine has) and the backend; printed in one line, or the run is
 * refused in one line before any work (src/memory/plan.ts).
 */
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
}

export const planRun = (checkpoint: Checkpoint, backend: string, workload: Workload, options: MemoryOptions, log?: (line: string) => void): Effect.Effect<MemoryPlan, UsageError> =>
  Effect.suspend((): Effect.Effect<MemoryPlan, UsageError> => {
    const budget = memoryBudget(backend, options.memoryMib);
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
