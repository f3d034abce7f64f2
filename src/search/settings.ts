/**
 * A search's settings as one Effect Schema: what settings.json holds and a resumed run
 * decodes, what the API and the command line fill in (the search job's flag table names a
 * flag for each), and the source of the queue's setup record fields, so the four agree.
 */
import { Schema } from "effect";
import { PatternSchema } from "../allocation/pattern.ts";
import { TEXT_FORMATS } from "../data/text-source.ts";
import { CALIBRATION_MODES } from "../prune/pipeline.ts";
import { PRUNE_METRICS } from "../prune/prune-linear.ts";
import { STRUCTURED_IMPORTANCES } from "../prune/structured.ts";

/** The importance a structured run scores its head groups and channels by. */
export const StructuredImportanceSchema = Schema.Literals(STRUCTURED_IMPORTANCES);

/** Everything that decides a run's result; saved so a resumed run is the same run. */
export const SearchSettings = Schema.Struct({
  method: Schema.String,
  space: Schema.String,
  sparsity: Schema.Number,
  metric: Schema.Literals(PRUNE_METRICS),
  pattern: PatternSchema,
  model: Schema.String,
  tokenizer: Schema.optional(Schema.String),
  calib: Schema.String,
  field: Schema.String,
  nsamples: Schema.Int,
  /** Seed of the calibration windows: 0 like the prune command, whatever the search seed. */
  calibSeed: Schema.Int,
  seqlen: Schema.Int,
  fitnessData: Schema.String,
  fitnessWindows: Schema.Int,
  eval: Schema.String,
  evalFormat: Schema.Literals(TEXT_FORMATS),
  evalWindows: Schema.optional(Schema.Int),
  population: Schema.Int,
  /** Generations at most; absent: as many as the budget pays for (10 without a budget). */
  generations: Schema.optional(Schema.Int),
  budgetEvals: Schema.optional(Schema.Int),
  /** Fitness tokens the search may spend, every stage's included. */
  budgetTokens: Schema.optional(Schema.Int),
  timeBudgetSeconds: Schema.optional(Schema.Number),
  patience: Schema.optional(Schema.Int),
  seed: Schema.Int,
  mode: Schema.Literals(CALIBRATION_MODES),
  finalMode: Schema.Literals(CALIBRATION_MODES),
  batch: Schema.Int,
  /** Structured pruning: whole head groups and channels removed at each block's ratio, scored by this importance. */
  structured: Schema.optional(StructuredImportanceSchema),
  /** HyWIA: steps learning its fusion weights. */
  fusionSteps: Schema.optional(Schema.Int),
  /** An allocation the method starts from instead of uniform: a direct method's name or an allocation CSV. */
  start: Schema.optional(Schema.String),
  /** Screening stages of the generational strategy, as `--screen` writes them (64@1024,16@4096). */
  screen: Schema.optional(Schema.String),
  /** What fitness measures: perplexity (absent, as in runs before the choice existed) or KL from the dense model. */
  fitness: Schema.optional(Schema.String),
  /** Training-free allocations scored beside the search, comma-separated; absent (runs of earlier versions): uniform and OWL. */
  baselines: Schema.optional(Schema.String),
  /**
   * Calibration windows (the first of the run's) a stage scored with the final protocol
   * prunes each candidate with; absent (runs of earlier versions): all of them.
   */
  exactCalibration: Schema.optional(Schema.Int),
  /**
   * Fitness tokens a second, as the run measured them scoring its baselines; recorded when
   * it has a time budget, whose plan is derived at this rate, so that a resumed run (whose
   * budget may have changed) counts its generations at the same rate.
   */
  tokensPerSecond: Schema.optional(Schema.Number),
  /**
   * The stage plan the run derived from its budget (or its default without one), kept so a
   * resumed run searches with the same plan; absent when the space file fixes one.
   */
  plan: Schema.optional(
    Schema.Struct({
      offspring: Schema.Int,
      stages: Schema.Array(Schema.Struct({ survivors: Schema.Int, tokens: Schema.Int, exact: Schema.optional(Schema.Boolean) })),
      tokensPerGeneration: Schema.Int,
      generations: Schema.Int,
      from: Schema.String,
    }),
  ),
});
export type SearchSettings = typeof SearchSettings.Type;
