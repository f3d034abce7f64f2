/**
 * From a plugin's per-block sparsities to a perplexity: expand to every linear, prune with
 * the run's Pruner, score the fitness windows. Lower is better.
 */
import { blockParams } from "../allocation/allocation.ts";
import { toAllocation, type BlockAllocation, type Pattern } from "../allocation/pattern.ts";
import { defaultBounds, type Bounds } from "../allocation/project.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import type { Window } from "../data/windows.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../engine/genome.ts";
import type { Pruner } from "../prune/pruner.ts";
import type { MethodContext } from "./plugin.ts";
import { ModelStatistics } from "./statistics.ts";


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
