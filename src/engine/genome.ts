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
}

/**
 * Outcome of evaluating one phenotype: lower fitness is better (perplexity). `seconds` is
 * the time the evaluation took, when the evaluator can tell (e.g. measured on a worker);
 * otherwise the engine charges each phenotype an equal share of its batch's time.
 */
export type Fitness =
  | { readonly ok: true; readonly value: number; readonly seconds?: number }
  | { readonly ok: false; readonly error: string; readonly seconds?: number };

export const fitnessOk = (value: number): Fitness =>
  Number.isFinite(value) ? { ok: true, value } : { ok: false, error: `non-finite fitness ${value}` };

export const fitnessFailed = (error: string): Fitness => ({ ok: false, error });
