/**
 * From a plugin's per-block sparsities to a perplexity: expand to every linear, prune with
 * the run's Pruner, score the fitness windows. Lower is better.
 */
import { blockParams, perBlock, perBlockNM, type Allocation, type Layout } from "../allocation/allocation.ts";
import { defaultBounds, type Bounds } from "../allocation/project.ts";
import { nmFromSparsities } from "../allocation/nm.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import type { Window } from "../data/windows.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../engine/genome.ts";
import type { Pruner } from "../prune/pruner.ts";
import type { BlockAllocation, MethodContext, Pattern } from "./plugin.ts";
import { ModelStatistics } from "./statistics.ts";

export const toAllocation = (sparsities: BlockAllocation, layout: Layout, pattern: Pattern): Allocation =>
  pattern.kind === "nm" ? perBlockNM(nmFromSparsities(sparsities, pattern.m, pattern.n), pattern.m, layout) : perBlock(sparsities, layout);

/** The target global sparsity of a run: S, or N/M for an N:M pattern. */
export const targetOf = (pattern: Pattern, sparsity: number | undefined): number =>
  pattern.kind === "nm" ? pattern.n / pattern.m : sparsity!;

export const methodContext = (
  checkpoint: Checkpoint,
  pruner: Pruner,
  calibration: readonly Int32Array[],
  target: number,
  pattern: Pattern,
  bounds: Bounds = defaultBounds,
): MethodContext => ({
  blocks: checkpoint.spec.numLayers,
  blockParams: blockParams(pruner.layout),
  target,
  bounds,
  pattern,
  statistics: new ModelStatistics(checkpoint, pruner, calibration),
});

/**
 * Perplexity of the model pruned at an allocation. Failures of one candidate (a singular
 * Hessian, a non-finite loss) become a failed Fitness, so a search records them and goes on.
 */
export const allocationFitness = (pruner: Pruner, windows: readonly Window[], pattern: Pattern) => (sparsities: BlockAllocation): Fitness => {
  try {
    pruner.apply(toAllocation(sparsities, pruner.layout, pattern));
    return fitnessOk(pruner.perplexity(windows).ppl);
  } catch (error) {
    return fitnessFailed((error as Error)?.message ?? String(error));
  }
};
