/**
 * Fitness of per-block ratios under structured pruning (`search --structured KIND`): the
 * dense model cut at the ratios by its groups' scores, perplexity on the fitness windows.
 * The calibration gradient is taken once per run. HyWIA learns its fusion once, at the
 * uniform ratios of the target, and every candidate is cut by those scores: learning per
 * candidate would cost a few dozen forward and backward passes each. The final report
 * cuts each allocation as `evosparse prune --structured` does (HyWIA learning at that
 * allocation's ratios), so the printed prune command repeats its numbers.
 */
import type { Checkpoint } from "../checkpoint/types.ts";
import { scoredTokens, type Window } from "../data/windows.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../engine/genome.ts";
import { groupEvidence, groupScores, modelPerplexity, removeAt, type BlockList, type GroupEvidence, type Globals, type StructuredImportance } from "../prune/structured.ts";
import type { BlockGroupScores } from "../prune/group-importance.ts";
import { DEFAULT_FUSION_LEARNING } from "../prune/hywia.ts";
import type { BlockAllocation } from "./plugin.ts";

export interface StructuredFitness {
  /** Perplexity on the fitness windows of the model cut at the ratios. */
  score(ratios: BlockAllocation): Promise<Fitness>;
  /** Perplexity on `windows` of the model cut at the ratios as the prune command cuts it. */
  final(ratios: BlockAllocation, windows: readonly Window[]): Promise<number>;
  dense(windows: readonly Window[]): Promise<number>;
}

export const structuredFitness = (
  checkpoint: Checkpoint,
  options: {
    readonly importance: StructuredImportance;
    readonly target: number;
    /** HyWIA's fusion learning steps (its default when absent). */
    readonly fusionSteps?: number;
    readonly calibration: readonly Int32Array[];
    /** The fitness windows, also HyWIA's validation windows. */
    readonly windows: readonly Window[];
    readonly seed: number;
    readonly batch: number;
    /** Blocks read from the checkpoint when used, never all in memory (a model larger than memory). */
    readonly streamed?: boolean;
  },
): StructuredFitness => {
  const spec = checkpoint.spec;
  const streamed = options.streamed ?? false;
  let model: { globals: Globals; dense: BlockList } | undefined;
  const host = () =>
    (model ??= streamed
      ? { globals: checkpoint.globalSource(), dense: { numBlocks: spec.numLayers, load: (i: number) => checkpoint.readBlock(i) } }
      : { globals: checkpoint.readGlobals(), dense: Array.from({ length: spec.numLayers }, (_, i) => checkpoint.readBlock(i)) });
  const fusion = { ...DEFAULT_FUSION_LEARNING, ...(options.fusionSteps !== undefined ? { steps: options.fusionSteps } : {}) };
  let evidence: Promise<GroupEvidence> | undefined;
  const evidenceOf = () => (evidence ??= groupEvidence(spec, host().globals, host().dense, options.importance, options.calibration, options.seed, streamed));
  const scoresAt = async (ratios: readonly number[]) =>
    (await groupScores(spec, host().globals, host().dense, await evidenceOf(), { ratios, calibration: options.calibration, validation: options.windows, fusion }, {}, streamed)).scores;
  let base: Promise<BlockGroupScores[]> | undefined;
  const windowTokens = scoredTokens(options.windows);
  const cutPerplexity = async (scores: readonly BlockGroupScores[], ratios: readonly number[], windows: readonly Window[]) => {
    const cut = removeAt(spec, host().dense, scores, ratios);
    return modelPerplexity(cut.spec, host().globals, cut.blocks, windows, options.batch, streamed);
  };
  return {
    score: async (ratios) => {
      try {
        base ??= scoresAt(Array.from({ length: spec.numLayers }, () => options.target));
        const ppl = await cutPerplexity(await base, ratios, options.windows);
        return { ...fitnessOk(ppl), tokens: windowTokens };
      } catch (error) {
        return fitnessFailed((error as Error)?.message ?? String(error));
      }
    },
    final: async (ratios, windows) => cutPerplexity(await scoresAt(ratios), ratios, windows),
    dense: (windows) => modelPerplexity(spec, host().globals, host().dense, windows, options.batch, streamed),
  };
};
