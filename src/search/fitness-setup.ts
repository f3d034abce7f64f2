/**
 * Everything a fitness evaluation needs, built the same way in the main thread and in
 * every worker from one serialisable description, so all copies score a candidate alike:
 * the same checkpoint, the same seeded calibration windows, the same fitness windows.
 */
import type { BackendChoice } from "../backend/backend.ts";
import type { ModelSpec } from "../model/spec.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { scoredTokens, type Window } from "../data/windows.ts";
import { evaluationWindows } from "../eval/inputs.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import type { Pruner } from "../prune/pruner.ts";
import { createPruner, openCalibratedModel, type CalibrationSetup, type PrunerRunning, type PrunerSetup } from "../prune/setup.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import type { StructuredImportance } from "../prune/structured.ts";
import { fitnessFailed, type Fidelity, type Fitness } from "../engine/genome.ts";
import { UsageError } from "../errors.ts";
import { DEFAULT_TOP_K, DenseReference } from "../eval/kl.ts";
import { memoryBudget } from "../memory/budget.ts";
import { KL_REFERENCE_PART, modelSizes, planMemory, type MemoryPlan, type Workload } from "../memory/plan.ts";
import { stageWindows } from "./minibatch.ts";
import { allocationFitness } from "./fitness.ts";
import { isBuiltInFitness, loadFitnessMeasure } from "./fitness-measure.ts";
import type { BlockAllocation, Pattern } from "./plugin.ts";
import { structuredFitness, type StructuredFitness } from "./structured-fitness.ts";

/** A run's calibration and pruner, plus the validation windows fitness is measured on. */
export interface FitnessSetup extends CalibrationSetup, PrunerSetup {
  readonly field: string;
  readonly seqlen: number;
  readonly pattern: Pattern;
  /** Validation text the fitness perplexity is measured on (never the test text). */
  readonly fitnessData: string;
  readonly fitnessWindows: number;
  readonly backend: BackendChoice;
  /** What fitness measures (default ppl): ppl, kl, or a user's measure (its file's absolute path or its package). */
  readonly fitness?: string;
  /** Seed of the stage minibatches (the search's seed). */
  readonly searchSeed?: number;
  /** Structured pruning: whole groups removed at each block's ratio, scored by this importance. */
  readonly structured?: { readonly importance: StructuredImportance; readonly target: number; readonly fusionSteps?: number };
  /**
   * The fitness windows and the whole fitness text's windows (stage minibatches are drawn
   * from them), tokenized elsewhere: `fitnessData` is then not read. With
   * `calibrationTokens`, a setup that reads no text file (a queue worker's).
   */
  readonly fitnessTokens?: { readonly windows: readonly Window[]; readonly pool: readonly Window[] };
  /**
   * How this copy runs (from the run's memory plan: streamed or resident, scratch folder,
   * caches): never part of what decides a result, so never part of a queue fingerprint.
   */
  readonly running?: PrunerRunning;
  /** Bytes the KL fitness's dense reference may keep on the backend (the oldest windows go first). */
  readonly referenceBytes?: number;
}

/** What a fitness worker is asked: one candidate, at a fidelity (the default windows when absent). */
export interface FitnessRequest {
  readonly allocation: BlockAllocation;
  readonly fidelity?: Fidelity;
}

/** What a fitness worker thread is started with: the setup, and how many workers compute at once. */
export interface FitnessWorkerData extends FitnessSetup {
  /** Workers computing at the same time: the native backend gives each its share of the cores. */
  readonly share: number;
}

export interface FitnessModel {
  readonly checkpoint: Checkpoint;
  readonly tokenizer: Tokenizer;
  readonly calibration: Int32Array[];
  readonly pruner: Pruner;
  readonly windows: Window[];
  /**
   * Fitness of per-block sparsities: pruned by the pruner, or cut structurally; on
   * `windows`, or for a fidelity with tokens on that stage's minibatch of the fitness text.
   */
  score(sparsities: BlockAllocation, fidelity?: Fidelity): Promise<Fitness>;
  /** The fitness tokens one evaluation at a fidelity costs (its windows' scored tokens). */
  tokensOf(fidelity?: Fidelity): number;
  /** Every window of the fitness text, the pool stage minibatches are drawn from. */
  pool(): readonly Window[];
  /** Present for structured runs. */
  readonly structured?: StructuredFitness;
  dispose(): void;
}

/**
 * What a fitness copy holds, for the memory plan (src/memory/plan.ts): the model, streamed
 * or resident, its calibration, the ranks of dense-mode masks, the KL reference, and for
 * structured runs a gradient pass. `largestStage`: the most fitness tokens one stage
 * scores (stage minibatches), which bounds what the KL reference needs at once.
 */
export const fitnessWorkload = (setup: FitnessSetup, spec: ModelSpec, copies: number, largestStage = 0, threads = 0): Workload => {
  const dense = setup.mode === "dense";
  const referenceTokens = 2 * Math.max(setup.fitnessWindows * setup.seqlen, largestStage);
  return {
    forward: { seqlen: setup.seqlen, batch: 1, tokens: Math.max(setup.fitnessWindows * setup.seqlen, largestStage) },
    // SparseGPT's levels (on disk) replace the Hessians a dense-mode run would keep.
    calibration: { windows: setup.nsamples, sparsegpt: setup.metric === "sparsegpt", keepHessians: dense && setup.metric === "sparsegpt" && !setup.running?.levels },
    ...(dense && setup.metric !== "sparsegpt" && !setup.structured ? { ranks: { bytesPerWeight: setup.metric === "magnitude" ? 4 : 2 } } : {}),
    ...(setup.fitness === "kl" ? { klReference: { tokens: referenceTokens, topK: Math.min(DEFAULT_TOP_K, spec.vocabSize) } } : {}),
    ...(setup.structured ? { gradients: { windows: setup.nsamples, resident: setup.structured.importance === "hywia" } } : {}),
    copies,
    ...(threads > 0 ? { threads } : {}),
  };
};

/** How a copy runs under a plan; a plan that keeps ranks and pruned blocks on disk puts them in `scratch`. */
export const runningOf = (plan: MemoryPlan, scratch: string): PrunerRunning => ({
  streamed: plan.streamed,
  streamedHead: plan.streamedHead,
  passTokens: plan.passTokens,
  activations: plan.activations,
  cacheBytes: plan.cacheBytes,
  ...(plan.spill ? { scratch } : {}),
});

/** The bytes the plan gives the KL reference (its LRU bound), when fitness is KL. */
export const referenceBytesOf = (plan: MemoryPlan, copies: number): number | undefined => {
  const part = plan.parts.find((p) => p.what === KL_REFERENCE_PART);
  return part ? part.bytes / Math.max(1, copies) : undefined;
};

/**
 * The plan of `copies` fitness copies on this machine (or within `memoryBytes`), with the
 * bytes one copy holds: what worker threads and queue workers are sized by.
 */
export const planFitness = (
  checkpoint: Checkpoint,
  setup: FitnessSetup,
  backend: string,
  copies: number,
  options: { readonly memoryMib?: number; readonly streamed?: boolean; readonly largestStage?: number; readonly threads?: number } = {},
) => {
  const budget = memoryBudget(backend, options.memoryMib);
  return planMemory(modelSizes(checkpoint.spec, checkpoint.bytesPerWeight), fitnessWorkload(setup, checkpoint.spec, copies, options.largestStage, options.threads), budget, options.streamed ? { streamed: true } : {});
};

export const openFitnessModel = (setup: FitnessSetup, mode: CalibrationMode = setup.mode): FitnessModel => {
  const model = openCalibratedModel(setup);
  try {
    const windows = setup.fitnessTokens ? [...setup.fitnessTokens.windows] : evaluationWindows({ data: setup.fitnessData, format: "text", maxWindows: setup.fitnessWindows }, model.tokenizer, model.seqlen);
    const pruner = createPruner(model, { metric: setup.metric, mode, ...(setup.batch ? { batch: setup.batch } : {}) }, {
      ...setup.running,
      ...(setup.pattern.kind === "nm" ? { rankGroup: { kind: "nm", m: setup.pattern.m } } : {}),
    });
    const structured = setup.structured
      ? structuredFitness(model.checkpoint, { ...setup.structured, calibration: model.calibration, windows, seed: setup.seed, batch: setup.batch ?? 1, streamed: setup.running?.streamed ?? false })
      : undefined;
    if (structured && setup.fitness === "kl") throw new UsageError({ problem: "--fitness kl is for unstructured pruning; structured searches score perplexity" });
    let disposed = false;
    const reference = setup.fitness === "kl" ? new DenseReference(undefined, setup.referenceBytes) : undefined;
    // A user's measure (a file's absolute path or a package), loaded on the first candidate.
    const measure = isBuiltInFitness(setup.fitness) ? undefined : () => loadFitnessMeasure(setup.fitness!);
    // Every window of the fitness text, drawn from for stage minibatches; read when first needed.
    let pool: readonly Window[] | undefined;
    const poolOf = (): readonly Window[] => (pool ??= setup.fitnessTokens?.pool ?? evaluationWindows({ data: setup.fitnessData, format: "text" }, model.tokenizer, model.seqlen));
    const windowsFor = (fidelity?: Fidelity): readonly Window[] => {
      if (fidelity?.tokens === undefined) return windows;
      return stageWindows(poolOf(), fidelity.tokens, setup.searchSeed ?? 0, fidelity.generation, fidelity.stage);
    };
    return {
      pool: poolOf,
      tokensOf: (fidelity) => scoredTokens(structured ? windows : windowsFor(fidelity)),
      score: (sparsities, fidelity) => {
        if (structured) {
          if (fidelity?.tokens !== undefined) return Promise.resolve(fitnessFailed("structured fitness has no stage minibatches"));
          return structured.score(sparsities);
        }
        return allocationFitness(pruner, windowsFor(fidelity), setup.pattern, reference, measure)(sparsities);
      },
      ...(structured ? { structured } : {}),
      checkpoint: model.checkpoint,
      tokenizer: model.tokenizer,
      calibration: model.calibration,
      pruner,
      windows,
      // Idempotent: a search frees its fitness copy before the final re-pruning, and its scope again.
      dispose: () => {
        if (disposed) return;
        disposed = true;
        reference?.dispose();
        pruner.dispose();
        model.close();
      },
    };
  } catch (error) {
    model.close();
    throw error;
  }
};
