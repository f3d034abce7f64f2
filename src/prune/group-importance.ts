/**
 * Importance of the structured groups of a block (groups.ts), from the weights and, for
 * the Taylor importances, the gradient of the calibration loss with respect to them
 * (LLM-Pruner's vocabulary; docs/methods.md). Per weight, the first-order Taylor term is
 * t = w · dL/dw. Over a group's weights (its bias entries included):
 * - element: sum of |t| (fine-grained);
 * - vector: |sum of t| (coarse-grained, the group as a whole);
 * - l2: the Euclidean norm of the group's weights;
 * - random: a uniform draw (a baseline), fixed by the seed.
 */
import type { HostBlock, HostTensor, ModelSpec } from "../model/spec.ts";
import { blockShape } from "../model/spec.ts";
import { Rng } from "../rng.ts";
import type { GroupRemoval } from "./groups.ts";

export type GroupImportanceKind = "element" | "vector" | "l2" | "random";
export const GROUP_IMPORTANCE_KINDS = ["element", "vector", "l2", "random"] as const satisfies readonly GroupImportanceKind[];

/** One score per key/value head group and per MLP channel of a block. */
export interface BlockGroupScores {
  readonly kvHeads: Float64Array;
  readonly channels: Float64Array;
}

/** Running sums over a group's weights. */
interface Sums {
  abs: number;
  signed: number;
  squares: number;
}

/**
 * Calls visit(group, w, g) for every weight of every group of one kind: `columns` of an
 * [in, out] weight (and its bias) or `rows` of it, with `groupOf` mapping a column or row
 * index to its group (or -1 for none).
 */
const visit = (
  weight: HostTensor,
  gradient: HostTensor | undefined,
  along: "columns" | "rows",
  groupOf: (index: number) => number,
  add: (group: number, w: number, g: number) => void,
): void => {
  const out = weight.shape[weight.shape.length - 1]!;
  for (let e = 0; e < weight.data.length; e++) {
    const index = along === "columns" ? e % out : Math.floor(e / out);
    const group = groupOf(index);
    if (group >= 0) add(group, weight.data[e]!, gradient ? gradient.data[e]! : 0);
  }
};

/**
 * Scores of block `block`'s groups. `gradients` holds dL/dw in the block's layout (needed by
 * element and vector); `seed` fixes the random baseline.
 */
export const groupImportance = (
  spec: ModelSpec,
  block: number,
  weights: HostBlock,
  gradients: Pick<HostBlock, "linears"> | undefined,
  kind: GroupImportanceKind,
  seed = 0,
): BlockGroupScores => {
  const shape = blockShape(spec, block);
  if (kind === "random") {
    const rng = new Rng(seed).split(`block ${block}`);
    return {
      kvHeads: Float64Array.from({ length: shape.numKvHeads }, () => rng.next()),
      channels: Float64Array.from({ length: shape.intermediateSize }, () => rng.next()),
    };
  }
  if ((kind === "element" || kind === "vector") && !gradients) throw new RangeError(`${kind} importance needs the gradients`);
  const fresh = (n: number): Sums[] => Array.from({ length: n }, () => ({ abs: 0, signed: 0, squares: 0 }));
  const heads = fresh(shape.numKvHeads);
  const channels = fresh(shape.intermediateSize);
  const into = (sums: Sums[]) => (group: number, w: number, g: number) => {
    const s = sums[group]!;
    const t = w * g;
    s.abs += Math.abs(t);
    s.signed += t;
    s.squares += w * w;
  };
  const d = spec.headDim;
  const perKv = shape.numHeads / shape.numKvHeads;
  const qWidth = shape.numHeads * d;
  const kvWidth = shape.numKvHeads * d;
  const queryGroup = (c: number) => Math.floor(c / (perKv * d));
  const kvGroup = (c: number) => Math.floor(c / d);
  const r = spec.roles;
  const both = (name: string, along: "columns" | "rows", groupOf: (i: number) => number, sums: Sums[]) => {
    const l = weights.linears[name]!;
    const g = gradients?.linears[name];
    visit(l.weight, g?.weight, along, groupOf, into(sums));
    // A bias is over outputs: it belongs to the groups only where they own columns.
    if (l.bias && along === "columns") visit(l.bias, g?.bias, "columns", groupOf, into(sums));
  };
  if (r.qkv) {
    both(r.qkv, "columns", (c) => (c < qWidth ? queryGroup(c) : c < qWidth + kvWidth ? kvGroup(c - qWidth) : kvGroup(c - qWidth - kvWidth)), heads);
  } else {
    both(r.q!, "columns", queryGroup, heads);
    both(r.k!, "columns", kvGroup, heads);
    both(r.v!, "columns", kvGroup, heads);
  }
  both(r.o, "rows", queryGroup, heads);
  if (r.gate) both(r.gate, "columns", (c) => c, channels);
  both(r.up, "columns", (c) => c, channels);
  both(r.down, "rows", (c) => c, channels);
  const score = (s: Sums): number => (kind === "element" ? s.abs : kind === "vector" ? Math.abs(s.signed) : Math.sqrt(s.squares));
  return { kvHeads: Float64Array.from(heads, score), channels: Float64Array.from(channels, score) };
};

/** The floor(count · ratio) lowest-scoring indices (ties: the lower index first), never all of them. */
const lowest = (scores: Float64Array, ratio: number): number[] => {
  const count = Math.min(Math.floor(scores.length * ratio + 1e-9), scores.length - 1);
  return Array.from(scores.keys())
    .sort((a, b) => scores[a]! - scores[b]! || a - b)
    .slice(0, Math.max(0, count));
};

/**
 * The groups a block loses at the given ratios of its key/value head groups and of its
 * channels: the lowest-scoring ones, rounded down to whole groups, at least one of each kind kept.
 */
export const removalAt = (scores: BlockGroupScores, ratios: { readonly heads: number; readonly channels: number }): GroupRemoval => {
  for (const [what, ratio] of Object.entries(ratios)) {
    if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`the ratio of ${what} removed, ${ratio}, is outside [0, 1]`);
  }
  return { kvHeads: lowest(scores.kvHeads, ratios.heads), channels: lowest(scores.channels, ratios.channels) };
};
