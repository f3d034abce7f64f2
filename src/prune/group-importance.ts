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
export interface Sums {
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

/** Per group of a block: the sums over its weights that every importance is made of. */
export interface BlockGroupSums {
  readonly kvHeads: readonly Sums[];
  readonly channels: readonly Sums[];
}

/**
 * The running sums (|t|, t and w²) of every group of block `block`. `gradients` holds dL/dw
 * in the block's layout; without it the Taylor sums are zero.
 */
export const groupSums = (spec: ModelSpec, block: number, weights: HostBlock, gradients: Pick<HostBlock, "linears"> | undefined): BlockGroupSums => {
  const shape = blockShape(spec, block);
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
  return { kvHeads: heads, channels };
};

/** One importance of every group, from the group's sums. */
export const scoresFromSums = (sums: BlockGroupSums, kind: Exclude<GroupImportanceKind, "random">): BlockGroupScores => {
  const score = (s: Sums): number => (kind === "element" ? s.abs : kind === "vector" ? Math.abs(s.signed) : Math.sqrt(s.squares));
  return { kvHeads: Float64Array.from(sums.kvHeads, score), channels: Float64Array.from(sums.channels, score) };
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
  if (kind === "random") {
    const shape = blockShape(spec, block);
    const rng = new Rng(seed).split(`block ${block}`);
    return {
      kvHeads: Float64Array.from({ length: shape.numKvHeads }, () => rng.next()),
      channels: Float64Array.from({ length: shape.intermediateSize }, () => rng.next()),
    };
  }
  if ((kind === "element" || kind === "vector") && !gradients) throw new RangeError(`${kind} importance needs the gradients`);
  return scoresFromSums(groupSums(spec, block, weights, gradients), kind);
};

/** How many of `count` groups a ratio removes: rounded down to whole groups, one always kept. */
export const removedCount = (count: number, ratio: number): number => Math.max(0, Math.min(Math.floor(count * ratio + 1e-9), count - 1));

/** The `count` lowest-scoring indices (ties: the lower index first). */
const lowestCount = (scores: Float64Array, count: number): number[] =>
  Array.from(scores.keys())
    .sort((a, b) => scores[a]! - scores[b]! || a - b)
    .slice(0, count);

/** Prunable weights (biases aside) of one key/value head group and of one MLP channel of a block. */
export const groupParameters = (spec: ModelSpec, block: number): { readonly kvHead: number; readonly channel: number } => {
  const shape = blockShape(spec, block);
  const perKv = shape.numHeads / shape.numKvHeads;
  // Its query heads' columns of q and rows of o, and one head's columns of k and of v.
  const kvHead = (2 * perKv + 2) * spec.headDim * spec.hiddenSize;
  const channel = (spec.roles.gate ? 3 : 2) * spec.hiddenSize;
  return { kvHead, channel };
};

/**
 * How many groups block `block` loses at `ratio` of its prunable weights: floor(ratio · count)
 * key/value head groups, then as many channels as keep the weights removed at most
 * ratio · the block's weights. Whole heads are large (a model with 2 key/value heads can only
 * lose half its attention or none), so the channels make up what the head count's rounding
 * left, and the block's removed fraction comes within one channel of the ratio. At least one
 * group of each kind is kept.
 */
export const groupCounts = (spec: ModelSpec, block: number, ratio: number): { readonly kvHeads: number; readonly channels: number } => {
  if (!(ratio >= 0 && ratio < 1)) throw new RangeError(`block ${block}: the ratio ${ratio} is outside [0, 1)`);
  const shape = blockShape(spec, block);
  const size = groupParameters(spec, block);
  const total = shape.numKvHeads * size.kvHead + shape.intermediateSize * size.channel;
  const kvHeads = removedCount(shape.numKvHeads, ratio);
  const left = ratio * total - kvHeads * size.kvHead;
  const channels = Math.max(0, Math.min(Math.floor(left / size.channel + 1e-9), shape.intermediateSize - 1));
  return { kvHeads, channels };
};

/** The groups a block loses: its `counts.kvHeads` and `counts.channels` lowest-scoring ones. */
export const removalOf = (scores: BlockGroupScores, counts: { readonly kvHeads: number; readonly channels: number }): GroupRemoval => {
  if (counts.kvHeads >= scores.kvHeads.length || counts.channels >= scores.channels.length) {
    throw new RangeError(`removing ${counts.kvHeads} of ${scores.kvHeads.length} key/value heads and ${counts.channels} of ${scores.channels.length} channels would leave a kind empty`);
  }
  return { kvHeads: lowestCount(scores.kvHeads, counts.kvHeads), channels: lowestCount(scores.channels, counts.channels) };
};
