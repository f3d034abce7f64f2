/**
 * What the evolutionary engine needs of a genome: nothing about language models, only how
 * to make, vary, name and decode individuals. G is the genome, P the phenotype it decodes
 * to (for evosparse plugins, a per-block allocation); the engine treats both as opaque.
 */
import type { Rng } from "../rng.ts";

export interface Genome<G, P> {
  /**
   * Individual `index` of the first generation. A plugin may seed some indices
   * deterministically (e.g. from statistics of the model) and draw the rest from `rng`.
   */
  create(rng: Rng, index: number): G;
  mutate(genome: G, rng: Rng): G;
  crossover(a: G, b: G, rng: Rng): G;
  /** Canonical identity of a genome: equal keys mean the same genome. */
  key(genome: G): string;
  decode(genome: G): P;
  /** One readable line, for history files and progress lines. */
  describe(genome: G): string;
  /** JSON-safe form for checkpoints; `restore(encode(g))` must equal g. */
  encode(genome: G): unknown;
  restore(json: unknown): G;
  /** Numbers describing a genome, for surrogate models of fitness (optional). */
  features?(genome: G): readonly number[];
}

/**
 * Outcome of evaluating one phenotype: lower fitness is better (perplexity). `seconds` is
 * the time the evaluation took, when the evaluator can tell (e.g. measured on a worker);
 * otherwise the engine charges each phenotype an equal share of its batch's time. `tokens`
 * is the number of fitness tokens the evaluation spent (a whole number; 0 when left out),
 * recorded in the history.
 */
export type Fitness =
  | { readonly ok: true; readonly value: number; readonly seconds?: number; readonly tokens?: number }
  | { readonly ok: false; readonly error: string; readonly seconds?: number; readonly tokens?: number };

/**
 * How the host should score one batch: stage `stage` of generation `generation`.
 *
 * - `tokens` undefined: the host's default fitness set (e.g. its fixed validation
 *   windows), the same for the whole run, so scores are comparable across generations;
 *   only these scores are cached across generations and count for the run's best.
 * - `tokens` given: score on that many fitness tokens. A host that draws a minibatch for
 *   it must derive the minibatch from (seed, generation, stage) alone, never from the
 *   batch, its order, the worker or anything drawn before, so that the worker count and
 *   resuming change nothing; such scores are cached only within their stage.
 *
 * A one-stage strategy asks stage 0 only; staged selection asks stage 0, 1, ... of the
 * same generation, typically on growing token counts.
 */
export interface Fidelity {
  readonly generation: number;
  readonly stage: number;
  readonly tokens?: number;
  /**
   * Score with the host's most faithful (and dearest) fitness on the same tokens, e.g. the
   * final protocol's pruning; such scores are cached only within their stage.
   */
  readonly exact?: true;
}

export const fitnessOk = (value: number): Fitness =>
  Number.isFinite(value) ? { ok: true, value } : { ok: false, error: `non-finite fitness ${value}` };

export const fitnessFailed = (error: string): Fitness => ({ ok: false, error });
