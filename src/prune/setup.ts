/**
 * The start of every pruning run, built in this one place for the prune, search and stats
 * commands, every fitness worker and the benchmarks: checkpoint -> tokenizer ->
 * calibration windows (docs/methods.md, "Standard protocol"), then Pruners over them.
 */
import { nmMismatch } from "../allocation/nm.ts";
import { patternText, type Pattern } from "../allocation/pattern.ts";
import { openCheckpointSync } from "../checkpoint/open.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { calibrationWindows } from "../data/calibration.ts";
import { UsageError } from "../errors.ts";
import { tokenizerFor } from "../eval/inputs.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import type { CalibrationMode } from "./pipeline.ts";
import type { PruneMetric } from "./prune-linear.ts";
import { Pruner, type PrunerOptions } from "./pruner.ts";

/** What decides a run's calibration: serialisable, so every worker builds the same. */
export interface CalibrationSetup {
  readonly model: string;
  readonly tokenizer?: string;
  readonly calib: string;
  readonly field?: string;
  readonly nsamples: number;
  /** Window length; the model's context when absent. */
  readonly seqlen?: number;
  readonly seed: number;
  /** A pattern the model must fit, checked before any calibration work. */
  readonly pattern?: Pattern;
  /**
   * The calibration windows themselves, drawn elsewhere (a queue worker receives them as
   * data): `calib` is then not read.
   */
  readonly calibrationTokens?: readonly Int32Array[];
  /**
   * Called with the checkpoint and the window length before any calibration window is
   * drawn; throws to refuse the run (its memory plan for `nsamples` windows).
   */
  readonly beforeDrawing?: (checkpoint: Checkpoint, seqlen: number) => void;
}

export interface CalibratedModel {
  readonly checkpoint: Checkpoint;
  readonly tokenizer: Tokenizer;
  readonly seqlen: number;
  readonly calibration: Int32Array[];
  /** Closes the checkpoint. */
  close(): void;
}

/**
 * Opens the checkpoint (headers only) and draws the calibration windows. A window longer
 * than the model's context is refused here, for every command alike.
 */
export const openCalibratedModel = (setup: CalibrationSetup): CalibratedModel => {
  const checkpoint = openCheckpointSync(setup.model, setup.tokenizer ? { tokenizer: setup.tokenizer } : {});
  try {
    const context = checkpoint.spec.maxPositions;
    const seqlen = setup.seqlen ?? context;
    if (seqlen > context) throw new UsageError({ problem: `--seqlen ${seqlen} exceeds the model's context of ${context}` });
    const mismatch = setup.pattern?.kind === "nm" ? nmMismatch(checkpoint.spec, setup.pattern.m) : undefined;
    if (mismatch) throw new UsageError({ problem: `--pattern ${patternText(setup.pattern!)} does not fit ${setup.model}: ${mismatch}` });
    setup.beforeDrawing?.(checkpoint, seqlen);
    const tokenizer = tokenizerFor(checkpoint);
    const calibration = setup.calibrationTokens ? [...setup.calibrationTokens] : calibrationWindows({ source: setup.calib, field: setup.field ?? "text", samples: setup.nsamples, seqlen, seed: setup.seed }, tokenizer);
    return { checkpoint, tokenizer, seqlen, calibration, close: () => checkpoint.close() };
  } catch (error) {
    checkpoint.close();
    throw error;
  }
};

export interface PrunerSetup {
  readonly metric: PruneMetric;
  readonly mode: CalibrationMode;
  /** Calibration windows per forward pass. */
  readonly batch?: number;
}

/** How a Pruner runs (from the run's memory plan); none of it changes a result. */
export type PrunerRunning = Omit<PrunerOptions, "metric" | "mode" | "calibration" | "batch">;

export const createPruner = (model: CalibratedModel, setup: PrunerSetup, running: PrunerRunning = {}): Pruner =>
  Pruner.create(model.checkpoint, { ...running, metric: setup.metric, mode: setup.mode, calibration: model.calibration, ...(setup.batch ? { batch: setup.batch } : {}) });
