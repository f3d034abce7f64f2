/**
 * The plugin interface of allocation methods. A plugin sees the model only through the
 * numbers in MethodContext (block sizes, target, bounds, per-block statistics and element
 * scores as plain arrays); it never touches tensors, checkpoints or the backend. It returns
 * per-block sparsities, which the host expands to every linear, prunes and evaluates.
 *
 * Three kinds of method share this interface, so every method is run and reported alike:
 *  - direct:  one allocation computed from statistics (uniform, owl, mrp);
 *  - grid:    a finite list of candidates, the best by fitness wins (atp);
 *  - evolve:  a genome handed to the evolutionary engine (dsa, msp, msp-nm, evopress), and
 *             optionally the engine strategy to run it with (evopress: staged (1+λ)).
 */
import type { Schema } from "effect";
import type { Bounds } from "../allocation/project.ts";
import type { Genome } from "../engine/genome.ts";
import type { Strategy } from "../engine/strategy.ts";
import type { BlockAllocation, Pattern } from "../allocation/pattern.ts";
import type { StagedPlan } from "./plan.ts";

// A plugin's whole interface is this module, so it re-exports the allocation types it uses.
export type { BlockAllocation, Pattern } from "../allocation/pattern.ts";

/** Statistics of the dense model, per block, measured once per run by the host. */
export interface BlockStatistics {
  /** OWL's outlier share D_l of each block (M = 5), on the run's metric scores. */
  outlierShares(): readonly number[];
  /** Empirical Fisher trace of each block (sum over its prunable weights). */
  fisherTraces(): readonly number[];
  /** The element scores of block l's prunable linears, concatenated in layout order. */
  elementScores(block: number): Float32Array;
  /**
   * MRP's non-outlier ratio of block l when the block alone is pruned at `sparsity` with the
   * run's metric: over all its weights with pruned ones scored 0 ("zero", the default: the rule as the
   * paper means it) or over its surviving weights ("excluded", an option; see
   * docs/methods.md, "MRP"). Deterministic.
   */
  nonOutlierRatio(block: number, sparsity: number, pruned?: "excluded" | "zero"): number;
  /** DLP's layer score: the mean Wanda score over each block's prunable weights (needs "scores"). */
  meanWandaScores?(): readonly number[];
  /**
   * AlphaPruning's heavy-tail exponent α of each prunable linear's weight spectrum
   * (MethodContext.linears order), fitted as AlphaPruning fits it (docs/methods.md).
   */
  spectralAlphas?(): readonly number[];
}

export type StatisticsNeed = "scores" | "fisher";

export interface MethodContext {
  readonly blocks: number;
  /** The run's pruning metric, for methods whose published settings differ by metric. */
  readonly metric?: "wanda" | "magnitude" | "sparsegpt";
  /** Prunable weights of each block: the weights of every mean and projection. */
  readonly blockParams: readonly number[];
  /**
   * Every prunable linear (block, name, weights) in layout order, for methods that choose
   * one sparsity per linear: such a method returns one entry per linear, in this order.
   */
  readonly linears: readonly { readonly block: number; readonly linear: string; readonly params: number }[];
  /** Target global sparsity S. */
  readonly target: number;
  readonly bounds: Bounds;
  readonly pattern: Pattern;
  readonly statistics: BlockStatistics;
  /**
   * An allocation to start the search from instead of uniform (`--start`: a cheap method's
   * result or an allocation file), per block or per linear (its length says which).
   * Methods that can use it seed their first parent or individual with it.
   */
  readonly start?: { readonly label: string; readonly sparsities: BlockAllocation };
}


export interface GridCandidate {
  /** Readable name of the candidate, e.g. "beta=0.004". */
  readonly label: string;
  readonly allocation: BlockAllocation;
}

export type Method<Space> =
  | { readonly kind: "direct"; allocate(context: MethodContext, space: Space): BlockAllocation }
  | { readonly kind: "grid"; candidates(context: MethodContext, space: Space): readonly GridCandidate[] }
  | {
      readonly kind: "evolve";
      genome(context: MethodContext, space: Space): Genome<any, BlockAllocation>;
      /**
       * The engine strategy to search with, over genomes of `genome`; without it the
       * engine's generational GA, sized by the run's population.
       */
      strategy?(context: MethodContext, space: Space): Strategy<any, BlockAllocation>;
    };

export interface MethodPlugin<Space = unknown> {
  /**
   * The method's name in reports and run folders; a built-in's is its folder's, the name
   * used on the command line (`--method <name>`). A user's plugin is named on the command
   * line by its file or package instead.
   */
  readonly name: string;
  readonly describe: string;
  /** Decodes and validates a search-space file; errors name the file and the field. */
  readonly spaceSchema: Schema.Top & { readonly Type: Space };
  /**
   * The space file used when --space is not given: a user's plugin keeps it beside its own
   * file (a path relative to it), a built-in in search-spaces/.
   */
  readonly defaultSpace: string;
  /**
   * Patterns the method supports; the host refuses other combinations with a clear error.
   * Under an N:M pattern the host rounds each block's sparsity to a whole n_l of M, keeping
   * the mean N (src/allocation/nm.ts), unless the plugin already returns n_l / M.
   */
  readonly patterns: readonly Pattern["kind"][];
  readonly method: Method<Space>;
  /**
   * The dense statistics the method reads, measured by the host before it runs (each is a
   * pass over the calibration windows, so a method that needs none costs none):
   * "scores" for element scores, outlier shares and non-outlier ratios, "fisher" for
   * Fisher traces.
   */
  readonly needs?: readonly StatisticsNeed[];
  /** The method starts from MethodContext.start when the run gives one (`--start`). */
  readonly startable?: boolean;
  /**
   * The sparsities each linear (MethodContext.linears, in order) can take, when they are a
   * known, finite set: a SparseGPT run then prunes a linear at one of them when a
   * candidate first asks for it, from factors made ahead (src/prune/levels.ts), instead of
   * keeping every Hessian. Needs only the context's sizes, target and bounds, not its
   * statistics.
   */
  levels?(context: MethodContext, space: Space): readonly (readonly number[])[];
  /** How a user asks this method for fewer levels: the run names it when they may not fit on disk. */
  readonly fewerLevels?: string;
  /**
   * A staged method's plan (children and stages) as its space fixes it; undefined when the
   * space leaves it to the run, which then derives one from its budget and hands it back
   * through `withStagedPlan` (src/search/plan.ts). A stage without tokens reads 0 (the
   * run's fitness windows).
   */
  stagedPlan?(space: Space): StagedPlan | undefined;
  withStagedPlan?(space: Space, plan: StagedPlan): Space;
}
