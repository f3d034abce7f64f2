/**
 * Structured pruning of a whole model: score every block's groups (group-importance.ts,
 * hywia.ts), remove the lowest-scoring ones at each block's ratio, and return the smaller
 * model. A block's ratio is the fraction of its prunable parameters to remove: that fraction
 * of its key/value head groups, rounded down (LLM-Pruner prunes attention and MLP at one
 * ratio), and channels up to the block's share (group-importance.ts, groupCounts), so the
 * fraction achieved is at most the one asked for, short by less than a channel per block,
 * and is reported.
 *
 * The stages are separate so that a search scores many ratio vectors from one set of
 * gradients: `groupEvidence` (the calibration gradient, once), `groupScores` (HyWIA learns
 * its fusion at the given ratios), `removeAt` (the cut).
 */
import type { Window } from "../data/windows.ts";
import { perplexity } from "../eval/perplexity.ts";
import type { GlobalSource, HostBlock, HostGlobals, ModelSpec } from "../model/spec.ts";
import { linearShapes } from "../model/spec.ts";
import { Decoder, type BlockSource } from "../model/decoder.ts";
import { GROUP_IMPORTANCE_KINDS, groupImportance, groupCounts, groupSums, removalOf, scoresFromSums, type BlockGroupScores, type BlockGroupSums, type GroupImportanceKind } from "./group-importance.ts";
import { cutBlock, shapeAfterRemoval, type GroupRemoval } from "./groups.ts";
import { DEFAULT_FUSION_LEARNING, fuse, hybridScores, learnFusion, type FusionLearning, type FusionWeights, type HybridScores } from "./hywia.ts";
import { eachBlockGradients } from "./loss-gradients.ts";
import type { DenseBlocks } from "./pipeline.ts";

/**
 * A model's blocks: all in memory, or read one at a time (a checkpoint's, or cut from
 * them) for a model larger than memory. Every stage below takes either.
 */
export type BlockList = readonly HostBlock[] | DenseBlocks;

export const blockCount = (blocks: BlockList): number => ("load" in blocks ? blocks.numBlocks : blocks.length);
export const blockAt = (blocks: BlockList, i: number): HostBlock => ("load" in blocks ? blocks.load(i) : blocks[i]!);
const sourceOf = (blocks: BlockList): BlockSource => ({ numBlocks: blockCount(blocks), load: (i) => blockAt(blocks, i) });

/** The globals a decoder reads: whole in memory, or piecewise from the checkpoint. */
export type Globals = HostGlobals | GlobalSource;

/** HyWIA's learned fusion of the fine and coarse views (hywia.ts), or one of LLM-Pruner's importances. */
export type StructuredImportance = "hywia" | GroupImportanceKind;
export const STRUCTURED_IMPORTANCES = ["hywia", ...GROUP_IMPORTANCE_KINDS] as const satisfies readonly StructuredImportance[];

export interface StructuredRequest {
  readonly importance: StructuredImportance;
  /** How HyWIA learns its fusion weights (its defaults when absent). */
  readonly fusion?: FusionLearning;
  /**
   * Validation windows on which HyWIA's learned fusion is checked against a small grid of
   * fixed weights (FUSION_GRID); the fusion with the lowest perplexity is kept. Without
   * them the learned fusion is used as learned.
   */
  readonly validation?: readonly Window[];
  /** Per block, the fraction of its prunable parameters to remove, in [0, 1). */
  readonly ratios: readonly number[];
  /** Calibration windows for the gradient (element, vector, hywia) and HyWIA's fusion. */
  readonly calibration: readonly Int32Array[];
  /** Seed of the random baseline. */
  readonly seed?: number;
}

/** One fusion HyWIA compared on the validation windows. */
export interface FusionTrial {
  /** "learned", or "heads 1, channels 0.25" for a grid point: the fine view's weights (the same in every block). */
  readonly label: string;
  readonly ppl: number;
}

/** What HyWIA learned and chose, for the report. */
export interface FusionOutcome {
  /** Per block, the weights the groups were removed by. */
  readonly weights: readonly FusionWeights[];
  /** Per block, the weights learned (equal to `weights` when the learned fusion won). */
  readonly learned: readonly FusionWeights[];
  /** Calibration loss of the softly masked model at each learning step. */
  readonly losses: readonly number[];
  readonly trials: readonly FusionTrial[];
  readonly chosen: string;
}

export interface StructuredResult {
  readonly spec: ModelSpec;
  readonly blocks: BlockList;
  readonly removals: readonly GroupRemoval[];
  readonly scores: readonly BlockGroupScores[];
  readonly fusion?: FusionOutcome;
  /** Prunable parameters before and after, and the fraction removed. */
  readonly parameters: { readonly before: number; readonly after: number; readonly removed: number };
}

/** Weights (not biases) of the prunable linears of every block: what --sparsity is a fraction of. */
export const prunableParameters = (spec: ModelSpec): number => {
  let total = 0;
  for (let b = 0; b < spec.numLayers; b++) for (const [inF, outF] of Object.values(linearShapes(spec, b))) total += inF * outF;
  return total;
};

/** Prunable weights of each block. */
export const blockPrunableParameters = (spec: ModelSpec): number[] =>
  Array.from({ length: spec.numLayers }, (_, b) => Object.values(linearShapes(spec, b)).reduce((n, [i, o]) => n + i * o, 0));

/**
 * Fixed fusions HyWIA's learned one is checked against: the fine view's weight for head
 * groups and for channels, each from this list (25 pairs), the same in every block (1 and
 * 1 is LLM-Pruner's element importance, 0 and 0 its vector).
 */
export const FUSION_GRID = [1, 0.75, 0.5, 0.25, 0] as const;

/** The model-dependent, ratio-independent part of a structured importance. */
export type GroupEvidence =
  | { readonly kind: "hywia"; readonly views: readonly HybridScores[] }
  | { readonly kind: "element" | "vector"; readonly sums: readonly BlockGroupSums[] }
  | { readonly kind: "l2" | "random"; readonly scores: readonly BlockGroupScores[] };

/** What every ratio vector is scored from: one gradient pass over the calibration windows where the importance needs it. */
export const groupEvidence = async (
  spec: ModelSpec,
  globals: Globals,
  blocks: BlockList,
  importance: StructuredImportance,
  calibration: readonly Int32Array[],
  seed = 0,
  /** Stream the blocks through the gradient pass (a model larger than the backend's memory). */
  streamed = false,
  /** Blocks whose gradient evidence is known, of all (the pass finishes them last block first; l2 and random take none). */
  onBlock?: (done: number, total: number) => void,
): Promise<GroupEvidence> => {
  const n = blockCount(blocks);
  if (importance === "l2" || importance === "random") {
    return { kind: importance, scores: Array.from({ length: n }, (_, i) => groupImportance(spec, i, blockAt(blocks, i), undefined, importance, seed)) };
  }
  // Each block's sums as soon as its gradient is known: no model-sized gradient is kept.
  const sums: BlockGroupSums[] = new Array(n);
  let done = 0;
  const decoder = Decoder.create(spec, globals, sourceOf(blocks), { streamed });
  try {
    await eachBlockGradients(decoder, calibration, (i, gradients) => {
      sums[i] = groupSums(spec, i, blockAt(blocks, i), gradients);
      onBlock?.(++done, n);
    });
  } finally {
    decoder.dispose();
  }
  return importance === "hywia" ? { kind: "hywia", views: sums.map(hybridScores) } : { kind: importance, sums };
};

/** Fraction of the prunable weights removed, checked. */
const checkRatios = (spec: ModelSpec, ratios: readonly number[]): void => {
  if (ratios.length !== spec.numLayers) throw new RangeError(`${ratios.length} ratios for a model of ${spec.numLayers} blocks`);
  ratios.forEach((r, i) => {
    if (!(r >= 0 && r < 1)) throw new RangeError(`block ${i}: the ratio ${r} is outside [0, 1)`);
  });
};

/**
 * Each block's groups removed at its ratio: the smaller model and what it lost. Blocks in
 * memory are cut now; blocks read one at a time are cut when read (the smaller model is
 * then never held whole either).
 */
export interface Cut<B extends BlockList> {
  readonly spec: ModelSpec;
  readonly blocks: B;
  readonly removals: GroupRemoval[];
  readonly parameters: { readonly before: number; readonly after: number; readonly removed: number };
}

export function removeAt(spec: ModelSpec, blocks: readonly HostBlock[], scores: readonly BlockGroupScores[], ratios: readonly number[]): Cut<HostBlock[]>;
export function removeAt(spec: ModelSpec, blocks: BlockList, scores: readonly BlockGroupScores[], ratios: readonly number[]): Cut<BlockList>;
export function removeAt(spec: ModelSpec, blocks: BlockList, scores: readonly BlockGroupScores[], ratios: readonly number[]): Cut<BlockList> {
  checkRatios(spec, ratios);
  if (blockCount(blocks) !== spec.numLayers) throw new RangeError(`${blockCount(blocks)} blocks for a model of ${spec.numLayers} blocks`);
  const removals = scores.map((s, i) => removalOf(s, groupCounts(spec, i, ratios[i]!)));
  const smallerSpec: ModelSpec = { ...spec, blocks: removals.map((removal, i) => shapeAfterRemoval(spec, i, removal)) };
  const cut: BlockList = "load" in blocks
    ? { numBlocks: spec.numLayers, load: (i: number) => cutBlock(spec, i, blocks.load(i), removals[i]!) }
    : blocks.map((b, i) => cutBlock(spec, i, b, removals[i]!));
  const before = prunableParameters(spec);
  const after = prunableParameters(smallerSpec);
  return { spec: smallerSpec, blocks: cut, removals, parameters: { before, after, removed: 1 - after / before } };
}

/** Perplexity of a model on windows (a fresh decoder, disposed after; its blocks streamed when asked). */
export const modelPerplexity = async (spec: ModelSpec, globals: Globals, blocks: BlockList, windows: readonly Window[], batch = 4, streamed = false): Promise<number> => {
  const decoder = Decoder.create(spec, globals, sourceOf(blocks), { streamed });
  try {
    return (await perplexity(decoder, windows, { batch })).ppl;
  } finally {
    decoder.dispose();
  }
};

/**
 * The groups' scores at these ratios. HyWIA learns its fusion against the dense model at
 * the ratios, then, with validation windows, keeps whichever of the learned fusion and
 * FUSION_GRID prunes to the lowest validation perplexity (ties: the learned one).
 */
/** What HyWIA's fusion reports as it goes: each learning step's loss, then the trials of the learned and fixed weights by validation perplexity. */
export interface FusionProgress {
  readonly onStep?: (step: number, loss: number) => void;
  readonly onTrial?: (done: number, total: number) => void;
}

export const groupScores = async (
  spec: ModelSpec,
  globals: Globals,
  blocks: BlockList,
  evidence: GroupEvidence,
  request: Pick<StructuredRequest, "ratios" | "calibration" | "fusion" | "validation">,
  progress: FusionProgress = {},
  /** The grid's cut models are streamed (HyWIA's learning itself needs the model resident). */
  streamed = false,
): Promise<{ scores: BlockGroupScores[]; fusion?: FusionOutcome }> => {
  if (evidence.kind !== "hywia") {
    if ("scores" in evidence) return { scores: [...evidence.scores] };
    const kind = evidence.kind;
    return { scores: evidence.sums.map((s) => scoresFromSums(s, kind)) };
  }
  checkRatios(spec, request.ratios);
  const views = evidence.views;
  const decoder = Decoder.create(spec, globals, sourceOf(blocks));
  let learned;
  try {
    learned = await learnFusion(decoder, views, request.ratios, request.calibration, request.fusion ?? DEFAULT_FUSION_LEARNING, progress.onStep);
  } finally {
    decoder.dispose();
  }
  const candidates: Array<{ label: string; weights: readonly FusionWeights[] }> = [{ label: "learned", weights: learned.weights }];
  if (request.validation && request.validation.length > 0) {
    for (const heads of FUSION_GRID) {
      for (const channels of FUSION_GRID) {
        const w = { heads: { fine: heads, coarse: 1 - heads }, channels: { fine: channels, coarse: 1 - channels } };
        candidates.push({ label: `heads ${heads}, channels ${channels}`, weights: Array.from({ length: spec.numLayers }, () => w) });
      }
    }
  }
  const scoresOf = (weights: readonly FusionWeights[]) => views.map((v, i) => fuse(v, weights[i]!));
  const trials: FusionTrial[] = [];
  let best = candidates[0]!;
  if (candidates.length > 1) {
    let bestPpl = Infinity;
    progress.onTrial?.(0, candidates.length);
    for (const c of candidates) {
      const cut = removeAt(spec, blocks, scoresOf(c.weights), request.ratios);
      const ppl = await modelPerplexity(cut.spec, globals, cut.blocks, request.validation!, 4, streamed);
      trials.push({ label: c.label, ppl });
      progress.onTrial?.(trials.length, candidates.length);
      if (ppl < bestPpl) {
        bestPpl = ppl;
        best = c;
      }
    }
  }
  return {
    scores: scoresOf(best.weights),
    fusion: { weights: best.weights, learned: learned.weights, losses: learned.losses, trials, chosen: best.label },
  };
};

export const structuredPrune = async (
  spec: ModelSpec,
  globals: Globals,
  blocks: BlockList,
  request: StructuredRequest,
  onFusionStep?: (step: number, loss: number) => void,
): Promise<StructuredResult> => {
  checkRatios(spec, request.ratios);
  const evidence = await groupEvidence(spec, globals, blocks, request.importance, request.calibration, request.seed ?? 0);
  const { scores, fusion } = await groupScores(spec, globals, blocks, evidence, request, onFusionStep ? { onStep: onFusionStep } : {});
  const cut = removeAt(spec, blocks, scores, request.ratios);
  return { ...cut, scores, ...(fusion ? { fusion } : {}) };
};
