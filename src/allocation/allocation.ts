/**
 * An allocation: the sparsity of every prunable linear of every block. Methods that
 * decide per block expand to per-linear entries with `perBlock`, so everything downstream
 * (pruning, CSV files, reports) sees one shape.
 */
import { linearShapes } from "../model/spec.ts";
import type { ModelSpec } from "../model/spec.ts";

/** One prunable linear of the model: where it is and how many weights it holds. */
export interface LayoutEntry {
  readonly block: number;
  readonly linear: string;
  readonly params: number;
}

/** The model's prunable linears in canonical order: block-major, then spec.linears order. */
export type Layout = readonly LayoutEntry[];

export interface AllocationEntry extends LayoutEntry {
  /** Fraction of this linear's weights set to zero, in [0, 1). */
  readonly sparsity: number;
  /** N:M pattern (N zeros in every M consecutive inputs); absent for unstructured. */
  readonly n?: number;
  readonly m?: number;
}

export type Allocation = readonly AllocationEntry[];

/** Biases, norms and embeddings are never pruned, so only weight matrices count. */
export const layoutOf = (spec: ModelSpec): Layout => {
  const layout: LayoutEntry[] = [];
  for (let block = 0; block < spec.numLayers; block++) {
    // Blocks may differ in size once structured pruning has removed heads or channels.
    const shapes = linearShapes(spec, block);
    for (const linear of spec.linears) {
      const [rows, cols] = shapes[linear];
      layout.push({ block, linear, params: rows * cols });
    }
  }
  return layout;
};

/** Number of blocks a layout covers (blocks are numbered 0..L-1). */
export const blockCount = (layout: Layout): number =>
  layout.reduce((most, entry) => Math.max(most, entry.block + 1), 0);

/** Prunable weights per block: the weights of a per-block projection. */
export const blockParams = (layout: Layout): number[] => {
  const params = new Array<number>(blockCount(layout)).fill(0);
  for (const entry of layout) params[entry.block] += entry.params;
  return params;
};

/** Pruned prunable weights / all prunable weights (docs/methods.md global sparsity). */
export const globalSparsity = (entries: Allocation): number => {
  let pruned = 0;
  let total = 0;
  for (const entry of entries) {
    pruned += entry.params * entry.sparsity;
    total += entry.params;
  }
  if (!(total > 0)) throw new RangeError("an allocation without parameters has no global sparsity");
  return pruned / total;
};

const checkBlockVector = (values: readonly number[], layout: Layout, what: string): void => {
  const blocks = blockCount(layout);
  if (values.length !== blocks) {
    throw new RangeError(`${values.length} per-block ${what} for a model of ${blocks} blocks`);
  }
};

/** Every linear of block l gets sparsities[l]. */
export const perBlock = (sparsities: readonly number[], layout: Layout): Allocation => {
  checkBlockVector(sparsities, layout, "sparsities");
  return layout.map((entry) => ({ ...entry, sparsity: sparsities[entry.block] }));
};

/** Linear k of the layout gets sparsities[k]: an allocation chosen per linear. */
export const perLinear = (sparsities: readonly number[], layout: Layout): Allocation => {
  if (sparsities.length !== layout.length) throw new RangeError(`${sparsities.length} sparsities for ${layout.length} prunable linears`);
  return layout.map((entry, k) => {
    const sparsity = sparsities[k]!;
    if (!(sparsity >= 0 && sparsity < 1)) throw new RangeError(`sparsity ${sparsity} of block ${entry.block} ${entry.linear} is outside [0, 1)`);
    return { ...entry, sparsity };
  });
};

/** Every linear of block l gets the pattern ns[l]:m (sparsity ns[l] / m). */
export const perBlockNM = (ns: readonly number[], m: number, layout: Layout): Allocation => {
  checkBlockVector(ns, layout, "N values");
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`M = ${m} is not a positive integer`);
  for (const n of ns) {
    if (!Number.isInteger(n) || n < 0 || n >= m) {
      throw new RangeError(`N = ${n} is not an integer with 0 <= N < M = ${m}`);
    }
  }
  return layout.map((entry) => {
    const n = ns[entry.block];
    return { ...entry, sparsity: n / m, n, m };
  });
};

/** The per-block view of an allocation: parameter-weighted mean sparsity of each block. */
export const blockSparsities = (entries: Allocation): number[] => {
  const pruned: number[] = [];
  const total: number[] = [];
  for (const entry of entries) {
    pruned[entry.block] = (pruned[entry.block] ?? 0) + entry.params * entry.sparsity;
    total[entry.block] = (total[entry.block] ?? 0) + entry.params;
  }
  return Array.from(total, (t, block) => {
    if (!(t > 0)) throw new RangeError(`block ${block} has no parameters in the allocation`);
    return pruned[block] / t;
  });
};
