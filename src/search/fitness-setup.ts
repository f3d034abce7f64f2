/**
 * Everything a fitness evaluation needs, built the same way in the main thread and in
 * every worker from one serialisable description, so all copies score a candidate alike:
 * the same checkpoint, the same seeded calibration windows, the same fitness windows.
 */
import type { BackendChoice } from "../backend/backend.ts";
import { openCheckpointSync } from "../checkpoint/open.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { calibrationWindows } from "../data/calibration.ts";
import type { Window } from "../data/windows.ts";
import { evaluationWindows, tokenizerFor } from "../eval/inputs.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import type { PruneMetric } from "../prune/prune-linear.ts";
import { Pruner } from "../prune/pruner.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import type { Pattern } from "./plugin.ts";

export interface FitnessSetup {
  readonly model: string;
  readonly tokenizer?: string;
  readonly metric: PruneMetric;
  /** Calibration mode of fitness evaluations. */
  readonly mode: CalibrationMode;
  readonly pattern: Pattern;
  readonly calib: string;
  readonly field: string;
  readonly nsamples: number;
  readonly seqlen: number;
  readonly seed: number;
  /** Validation text the fitness perplexity is measured on (never the test text). */
  readonly fitnessData: string;
  readonly fitnessWindows: number;
  readonly batch?: number;
  readonly backend: BackendChoice;
}

export interface FitnessModel {
  readonly checkpoint: Checkpoint;
  readonly tokenizer: Tokenizer;
  readonly calibration: Int32Array[];
  readonly pruner: Pruner;
  readonly windows: Window[];
  dispose(): void;
}

export const openFitnessModel = (setup: FitnessSetup, mode: CalibrationMode = setup.mode): FitnessModel => {
  const checkpoint = openCheckpointSync(setup.model, setup.tokenizer ? { tokenizer: setup.tokenizer } : {});
  try {
    const tokenizer = tokenizerFor(checkpoint);
    const calibration = calibrationWindows({ source: setup.calib, field: setup.field, samples: setup.nsamples, seqlen: setup.seqlen, seed: setup.seed }, tokenizer);
    const windows = evaluationWindows({ data: setup.fitnessData, format: "text", maxWindows: setup.fitnessWindows }, tokenizer, setup.seqlen);
    const pruner = Pruner.create(checkpoint, { metric: setup.metric, mode, calibration, ...(setup.batch ? { batch: setup.batch } : {}) });
    return {
      checkpoint,
      tokenizer,
      calibration,
      pruner,
      windows,
      dispose: () => {
        pruner.dispose();
        checkpoint.close();
      },
    };
  } catch (error) {
    checkpoint.close();
    throw error;
  }
};
