/**
 * What a method plugin's author imports (`evosparse/plugin`): the plugin interface, the
 * engine's genome and strategies, and the allocation helpers the built-in methods use.
 * Everything here works on numbers; a plugin never sees tensors.
 *
 *   import { Schema, projectToTarget } from "evosparse/plugin";
 *   export const plugin = { name: "tilt", spaceSchema: Schema.Struct({ ... }), ... };
 */
export type { MethodPlugin, MethodContext, Method, GridCandidate, BlockStatistics, StatisticsNeed, BlockAllocation, Pattern } from "../search/plugin.ts";
export type { Genome, Fitness, Fidelity } from "../engine/genome.ts";
export type { FitnessMeasurePlugin, WindowLoss } from "../search/fitness-measure.ts";
export type { Strategy, Proposal, Scored, Told, Leader, StageContext } from "../engine/strategy.ts";
export { staged, stageSizes, type StagedOptions, type Stage } from "../engine/staged.ts";
export { generational, type GenerationalOptions } from "../engine/generational.ts";
export { projectToTarget, weightedMean, defaultBounds, type Bounds } from "../allocation/project.ts";
export { BoundsSchema, BetweenSchema, RangeSchema, IntRangeSchema, effectiveBounds } from "../allocation/space-schema.ts";
export { clampNonFinite, minmax, normaliseTraces, fisherSeed, type TraceNormalisation } from "../allocation/normalise.ts";
export { uniform, owl, atpRamp, atpBetaGrid } from "../allocation/baselines.ts";
export { Rng } from "../rng.ts";
export { UsageError, DataError } from "../errors.ts";
/** The effect Schema a plugin's spaceSchema is written with: the host's own copy, so it decodes it. */
export { Schema } from "effect";
