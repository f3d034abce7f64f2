/**
 * A crash at a chosen point, for the tests of resuming: with EVOSPARSE_CRASH_AFTER set to
 * `generation:N` (a search) or `lora-step:N` (a LoRA recovery), the process kills itself
 * with SIGKILL right after generation N's state, or the checkpoint at step N, is on disk,
 * leaving the files exactly as a crash there would, with no polling and no race. Unset,
 * nothing happens.
 */
export type CrashPoint = "generation" | "lora-step";

export const crashPoint = (point: CrashPoint, count: number): void => {
  if (process.env.EVOSPARSE_CRASH_AFTER === `${point}:${count}`) process.kill(process.pid, "SIGKILL");
};
