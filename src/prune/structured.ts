/**
 * Structured pruning of a whole model: score every block's groups (group-importance.ts),
 * remove the lowest-scoring ones at each block's ratio, and return the smaller model.
 * A block's ratio is the fraction of its prunable parameters to remove; the same fraction
 * of its key/value head groups and of its MLP channels goes (LLM-Pruner prunes attention
 * and MLP at one ratio), rounded down to whole groups, so the fraction achieved is at most
 * the one asked for and is reported.
 */
import type { HostBlock, HostGlobals, ModelSpec } from "../model/spec.ts";
import { linearShapes } from "../model/spec.ts";
import { Decoder } from "../model/decoder.ts";
import { groupImportance, removalAt, type BlockGroupScores, type GroupImportanceKind } from "./group-importance.ts";
import { removeGroups, type GroupRemoval } from "./groups.ts";
import { lossGradients } from "./loss-gradients.ts";

export interface StructuredRequest {
  readonly importance: GroupImportanceKind;
  /** Per block, the fraction of its prunable parameters to remove, in [0, 1). */
  readonly ratios: readonly number[];
  /** Calibration windows for the gradient (element and vector importances). */
  readonly calibration: readonly Int32Array[];
  /** Seed of the random baseline. */
  readonly seed?: number;
}

export interface StructuredResult {
  readonly spec: ModelSpec;
  readonly blocks: HostBlock[];
  readonly removals: readonly GroupRemoval[];
  readonly scores: readonly BlockGroupScores[];
  /** Prunable parameters before and after, and the fraction removed. */
  readonly parameters: { readonly before: number; readonly after: number; readonly removed: number };
}

/** Weights (not biases) of the prunable linears of every block: what --sparsity is a fraction of. */
export const prunableParameters = (spec: ModelSpec): number => {
  let total = 0;
  for (let b = 0; b < spec.numLayers; b++) for (const [inF, outF] of Object.values(linearShapes(spec, b))) total += inF * outF;
  return total;
};

export const structuredPrune = async (
  spec: ModelSpec,
  globals: HostGlobals,
  blocks: readonly HostBlock[],
  request: StructuredRequest,
): Promise<StructuredResult> => {
  if (request.ratios.length !== spec.numLayers) {
    throw new RangeError(`${request.ratios.length} ratios for a model of ${spec.numLayers} blocks`);
  }
  request.ratios.forEach((r, i) => {
    if (!(r >= 0 && r < 1)) throw new RangeError(`block ${i}: the ratio ${r} is outside [0, 1)`);
  });
  const taylor = request.importance === "element" || request.importance === "vector";
  let gradients: Awaited<ReturnType<typeof lossGradients>> | undefined;
  if (taylor) {
    const decoder = Decoder.create(spec, globals, { numBlocks: spec.numLayers, load: (i) => blocks[i]! }, { trainable: true });
    try {
      gradients = await lossGradients(decoder, request.calibration);
    } finally {
      decoder.dispose();
    }
  }
  const scores = blocks.map((b, i) => groupImportance(spec, i, b, gradients?.[i], request.importance, request.seed ?? 0));
  const removals = scores.map((s, i) => removalAt(s, { heads: request.ratios[i]!, channels: request.ratios[i]! }));
  const smaller = removeGroups(spec, blocks, removals);
  const before = prunableParameters(spec);
  const after = prunableParameters(smaller.spec);
  return { ...smaller, removals, scores, parameters: { before, after, removed: 1 - after / before } };
};
