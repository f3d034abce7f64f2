/**
 * Ranking and selection over scores (lower is better; a failed evaluation scores
 * +Infinity, worse than any value). Ties go to the lower index, so results never depend
 * on sort stability or evaluation order.
 */
import type { Rng } from "../rng.ts";
import type { StoredFitness } from "./state.ts";

export const score = (fitness: StoredFitness): number => (fitness.ok ? fitness.value : Infinity);

const beats = (scores: readonly number[], a: number, b: number): boolean =>
  scores[a]! < scores[b]! || (scores[a] === scores[b] && a < b);

/** Indices from best to worst. */
export const ranking = (scores: readonly number[]): number[] =>
  scores.map((_, i) => i).sort((a, b) => (beats(scores, a, b) ? -1 : beats(scores, b, a) ? 1 : 0));

/** The winner of `size` contestants drawn uniformly with replacement. */
export const tournament = (scores: readonly number[], size: number, rng: Rng): number => {
  let winner = rng.int(scores.length);
  for (let k = 1; k < size; k++) {
    const contestant = rng.int(scores.length);
    if (beats(scores, contestant, winner)) winner = contestant;
  }
  return winner;
};

export const median = (values: readonly number[]): number | undefined => {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
