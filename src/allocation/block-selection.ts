/**
 * Which blocks a structured prune may touch (LLM-Pruner keeps the first and last blocks of
 * LLaMA-7B whole and prunes blocks 4-29 of 32). The target stays the fraction of all the
 * model's prunable weights: blocks kept whole get ratio 0 and the selected blocks' ratios
 * are scaled by one factor so that the weights removed add up to the same count.
 */

/**
 * Block indices from a list such as "4-29" or "0,2,5-7" (inclusive ranges), sorted and
 * without repeats. Throws a RangeError naming the part that is not a block of the model.
 */
export const parseBlockList = (text: string, numBlocks: number): number[] => {
  const selected = new Set<number>();
  const parts = text.split(",").map((p) => p.trim());
  for (const part of parts) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!match) throw new RangeError(`"${part}" is not a block number or a range such as 4-29`);
    const from = Number(match[1]);
    const to = match[2] === undefined ? from : Number(match[2]);
    if (to < from) throw new RangeError(`the range ${part} runs backwards`);
    if (to >= numBlocks) throw new RangeError(`block ${to} does not exist: the model has blocks 0-${numBlocks - 1}`);
    for (let b = from; b <= to; b++) selected.add(b);
  }
  return [...selected].sort((a, b) => a - b);
};

/**
 * The ratios with every block outside `selected` at 0 and the selected ones scaled so that
 * sum(ratio · params) is unchanged. When the selected ratios are all 0 (or vanishingly
 * small beside the removal) they share it evenly. Throws when the selected blocks cannot hold the removal (a ratio would reach 1).
 */
export const restrictToBlocks = (ratios: readonly number[], blockParams: readonly number[], selected: readonly number[]): number[] => {
  if (ratios.length !== blockParams.length) throw new RangeError(`${ratios.length} ratios for ${blockParams.length} blocks`);
  if (selected.length === 0) throw new RangeError("no block is selected");
  const chosen = new Set(selected);
  // Every block selected: the ratios exactly as they are.
  if (ratios.every((_, i) => chosen.has(i))) return [...ratios];
  const removed = ratios.reduce((n, r, i) => n + r * blockParams[i]!, 0);
  const inSelected = ratios.reduce((n, r, i) => n + (chosen.has(i) ? r * blockParams[i]! : 0), 0);
  const paramsSelected = blockParams.reduce((n, p, i) => n + (chosen.has(i) ? p : 0), 0);
  // Selected ratios that are (nearly) all zero carry nothing to scale: they share evenly.
  const proportional = inSelected > 0 && inSelected >= removed * 1e-12;
  const scale = removed / inSelected;
  const out = ratios.map((r, i) => {
    if (!chosen.has(i)) return 0;
    return proportional ? r * scale : removed / paramsSelected;
  });
  const over = out.findIndex((r) => r >= 1);
  if (over >= 0) {
    throw new RangeError(`blocks ${selected.join(",")} cannot lose ${(removed / blockParams.reduce((a, b) => a + b, 0)).toFixed(4)} of all prunable weights: block ${over} would need a ratio of ${out[over]!.toFixed(4)}`);
  }
  return out;
};
