/**
 * Seconds spent in each stage of pruning and evaluation, accumulated across blocks so a
 * report can show which stage is slow. SparseGPT chooses its mask while it updates the
 * weights, column by column, so its whole solve counts as masking.
 */
export interface StageTimings {
  /** Block forward passes over the calibration windows. */
  forward: number;
  /** Input statistics: feature norms and Hessians. */
  statistics: number;
  /** Element scores and their sort orders. */
  scoring: number;
  /** Masks, applying them, and SparseGPT's weight update. */
  masking: number;
  /** Perplexity of the pruned model. */
  evaluation: number;
}

export const emptyTimings = (): StageTimings => ({ forward: 0, statistics: 0, scoring: 0, masking: 0, evaluation: 0 });

/** Runs `f`, adding its wall time to `timings[stage]` when timings are kept. */
export const timed = <T>(timings: StageTimings | undefined, stage: keyof StageTimings, f: () => T): T => {
  if (!timings) return f();
  const start = performance.now();
  try {
    return f();
  } finally {
    timings[stage] += (performance.now() - start) / 1000;
  }
};
