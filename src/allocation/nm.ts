import { linearShapes, uniformBlockShape, type ModelSpec } from "../model/spec.ts";
/**
 * Per-block N:M patterns from per-block sparsities. A block can only be pruned at n/M, so
 * each block gets n_l = round(s_l M); then the total of n is repaired to L·N with ±1 steps
 * on the blocks whose rounding was furthest off, so the mean pattern is the requested N:M
 * (for blocks of equal size, which every decoder here has, that is the target sparsity).
 */
export const nmFromSparsities = (sparsities: readonly number[], m: number, n: number): number[] => {
  if (!Number.isInteger(m) || m < 1 || !Number.isInteger(n) || n < 0 || n >= m) throw new RangeError(`${n}:${m} is not an N:M pattern with 0 <= N < M`);
  const exact = sparsities.map((s) => Math.min(m - 1, Math.max(0, s * m)));
  const ns = exact.map((x) => Math.min(m - 1, Math.max(0, Math.round(x))));
  const wanted = n * sparsities.length;
  let total = ns.reduce((a, b) => a + b, 0);
  while (total !== wanted) {
    const up = total < wanted;
    let best = -1;
    for (let l = 0; l < ns.length; l++) {
      if (up ? ns[l]! >= m - 1 : ns[l]! <= 0) continue;
      // The block whose rounding moved furthest against the needed direction; ties: lowest index.
      const gap = up ? exact[l]! - ns[l]! : ns[l]! - exact[l]!;
      const bestGap = best < 0 ? -Infinity : up ? exact[best]! - ns[best]! : ns[best]! - exact[best]!;
      if (gap > bestGap) best = l;
    }
    ns[best]! += up ? 1 : -1;
    total += up ? 1 : -1;
  }
  return ns;
};

/**
 * Why an N:M pattern cannot prune this model, or undefined when it can: every prunable
 * linear's inputs must split into whole groups of M. Checked when the model is opened,
 * before any calibration work.
 */
export const nmMismatch = (spec: ModelSpec, m: number): string | undefined => {
  // Blocks may differ in size (structured pruning); a block is named only then.
  const uniform = uniformBlockShape(spec) !== undefined;
  for (let block = 0; block < spec.numLayers; block++) {
    for (const [linear, [inputs]] of Object.entries(linearShapes(spec, block))) {
      const name = uniform ? linear : `${linear} of block ${block}`;
      if (inputs % m !== 0) return `${name} has ${inputs} inputs, which do not split into groups of M = ${m}`;
    }
  }
  return undefined;
};
