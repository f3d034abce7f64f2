/**
 * The fitness windows of a stage of staged selection (EvoPress): a fresh random minibatch
 * of the fitness text for each (generation, stage), shared by every candidate of the
 * stage. It depends on the search seed, the generation and the stage alone, so workers,
 * their number and resuming draw the same windows.
 */
import type { Window } from "../data/windows.ts";
import { Rng } from "../rng.ts";

const scored = (w: Window): number => w.targets.reduce((n, t) => n + (t >= 0 ? 1 : 0), 0);

/**
 * Windows of `pool` drawn without replacement until they hold at least `tokens` scored
 * tokens (all of the pool when it holds fewer), in the order drawn.
 */
export const stageWindows = (pool: readonly Window[], tokens: number, seed: number, generation: number, stage: number): Window[] => {
  if (!(Number.isInteger(tokens) && tokens >= 1)) throw new RangeError(`a stage of ${tokens} tokens: a whole number >= 1 is needed`);
  const rng = new Rng(seed).split("fitness minibatch").split(generation).split(stage);
  const order = Array.from(pool.keys());
  const picked: Window[] = [];
  let total = 0;
  // A partial Fisher-Yates shuffle: each step draws one of the windows not drawn yet.
  for (let i = 0; i < order.length && total < tokens; i++) {
    const j = i + rng.int(order.length - i);
    [order[i], order[j]] = [order[j]!, order[i]!];
    const w = pool[order[i]!]!;
    picked.push(w);
    total += scored(w);
  }
  return picked;
};
