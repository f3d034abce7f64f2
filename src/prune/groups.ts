/**
 * Structured groups of a decoder block, the units structured pruning removes whole
 * (LLM-Pruner's dependency groups):
 * - attention: one group per key/value head, with the query heads that share it under
 *   grouped-query attention: those heads' columns of q, k and v (or of the fused qkv) with
 *   their bias entries, and the matching rows of o;
 * - MLP: one group per intermediate channel: its column of gate and up (with bias entries)
 *   and its row of down.
 * Removing groups gives smaller tensors and a spec with per-block shapes; zeroing the same
 * groups in the full-size model computes the same function, which is how removal is tested.
 * Weights are stored [in, out]: "columns" are outputs, "rows" inputs.
 */
import type { BlockShape, HostBlock, HostLinear, HostTensor, ModelSpec } from "../model/spec.ts";
import { blockShape } from "../model/spec.ts";

/** What to remove from one block: key/value head indices and MLP channel indices. */
export interface GroupRemoval {
  readonly kvHeads: readonly number[];
  readonly channels: readonly number[];
}

export const NO_REMOVAL: GroupRemoval = { kvHeads: [], channels: [] };

/** The output columns (or input rows) of one linear that a block's removed groups own. */
interface GroupIndices {
  /** Columns of q (or of the query part of qkv), and rows of o. */
  readonly query: number[];
  /** Columns of k and of v (each), the key/value part. */
  readonly keyValue: number[];
  /** Columns of gate and up, rows of down. */
  readonly channels: number[];
}

const checkRemoval = (what: string, removed: readonly number[], count: number, block: number): void => {
  const seen = new Set<number>();
  for (const i of removed) {
    if (!Number.isInteger(i) || i < 0 || i >= count) throw new RangeError(`block ${block}: ${what} ${i} does not exist (the block has ${count})`);
    if (seen.has(i)) throw new RangeError(`block ${block}: ${what} ${i} is listed twice`);
    seen.add(i);
  }
  if (seen.size === count) throw new RangeError(`block ${block}: removing every ${what} would leave nothing of the block`);
};

const range = (start: number, size: number): number[] => Array.from({ length: size }, (_, i) => start + i);

const indicesOf = (spec: ModelSpec, block: number, removal: GroupRemoval): GroupIndices => {
  const shape = blockShape(spec, block);
  checkRemoval("key/value head", removal.kvHeads, shape.numKvHeads, block);
  checkRemoval("MLP channel", removal.channels, shape.intermediateSize, block);
  const perKv = shape.numHeads / shape.numKvHeads;
  const d = spec.headDim;
  const sorted = [...removal.kvHeads].sort((a, b) => a - b);
  return {
    query: sorted.flatMap((g) => range(g * perKv * d, perKv * d)),
    keyValue: sorted.flatMap((g) => range(g * d, d)),
    channels: [...removal.channels].sort((a, b) => a - b),
  };
};

/** The block's shape once the groups are removed. */
export const shapeAfterRemoval = (spec: ModelSpec, block: number, removal: GroupRemoval): BlockShape => {
  const shape = blockShape(spec, block);
  const perKv = shape.numHeads / shape.numKvHeads;
  return {
    numHeads: shape.numHeads - removal.kvHeads.length * perKv,
    numKvHeads: shape.numKvHeads - removal.kvHeads.length,
    intermediateSize: shape.intermediateSize - removal.channels.length,
  };
};

/** A copy of `t` ([in, out], or a 1-D bias over out) without the given output columns. */
const withoutColumns = (t: HostTensor, columns: ReadonlySet<number>): HostTensor => {
  const out = t.shape[t.shape.length - 1]!;
  const rows = t.shape.length === 1 ? 1 : t.shape[0]!;
  const kept = range(0, out).filter((c) => !columns.has(c));
  const data = new Float32Array(rows * kept.length);
  for (let r = 0; r < rows; r++) kept.forEach((c, j) => (data[r * kept.length + j] = t.data[r * out + c]!));
  return { shape: t.shape.length === 1 ? [kept.length] : [rows, kept.length], data };
};

/** A copy of `t` ([in, out]) without the given input rows. */
const withoutRows = (t: HostTensor, rows: ReadonlySet<number>): HostTensor => {
  const [inFeatures, out] = t.shape as [number, number];
  const kept = range(0, inFeatures).filter((r) => !rows.has(r));
  const data = new Float32Array(kept.length * out);
  kept.forEach((r, i) => data.set(t.data.subarray(r * out, (r + 1) * out), i * out));
  return { shape: [kept.length, out], data };
};

/** A copy of `t` with the given output columns (of every row, or of a 1-D bias) set to zero. */
const zeroColumns = (t: HostTensor, columns: ReadonlySet<number>): HostTensor => {
  const out = t.shape[t.shape.length - 1]!;
  const data = t.data.slice();
  for (let e = 0; e < data.length; e++) if (columns.has(e % out)) data[e] = 0;
  return { shape: t.shape, data };
};

const zeroRows = (t: HostTensor, rows: ReadonlySet<number>): HostTensor => {
  const out = t.shape[1]!;
  const data = t.data.slice();
  for (const r of rows) data.fill(0, r * out, (r + 1) * out);
  return { shape: t.shape, data };
};

type Edit = "remove" | "zero";

const outputs = (l: HostLinear, columns: ReadonlySet<number>, edit: Edit): HostLinear => {
  const f = edit === "remove" ? withoutColumns : zeroColumns;
  return { weight: f(l.weight, columns), ...(l.bias ? { bias: f(l.bias, columns) } : {}) };
};

// A linear's bias is over its outputs, so removing input rows leaves it as it is.
const inputs = (l: HostLinear, rows: ReadonlySet<number>, edit: Edit): HostLinear => ({
  ...l,
  weight: edit === "remove" ? withoutRows(l.weight, rows) : zeroRows(l.weight, rows),
});

const editBlock = (spec: ModelSpec, block: number, b: HostBlock, removal: GroupRemoval, edit: Edit): HostBlock => {
  const { query, keyValue, channels } = indicesOf(spec, block, removal);
  const shape = blockShape(spec, block);
  const qWidth = shape.numHeads * spec.headDim;
  const kvWidth = shape.numKvHeads * spec.headDim;
  const r = spec.roles;
  const linears: Record<string, HostLinear> = { ...b.linears };
  const set = (xs: number[]) => new Set(xs);
  if (r.qkv) {
    const fused = [...query, ...keyValue.map((c) => qWidth + c), ...keyValue.map((c) => qWidth + kvWidth + c)];
    linears[r.qkv] = outputs(b.linears[r.qkv]!, set(fused), edit);
  } else {
    linears[r.q!] = outputs(b.linears[r.q!]!, set(query), edit);
    linears[r.k!] = outputs(b.linears[r.k!]!, set(keyValue), edit);
    linears[r.v!] = outputs(b.linears[r.v!]!, set(keyValue), edit);
  }
  linears[r.o] = inputs(b.linears[r.o]!, set(query), edit);
  if (r.gate) linears[r.gate] = outputs(b.linears[r.gate]!, set(channels), edit);
  linears[r.up] = outputs(b.linears[r.up]!, set(channels), edit);
  linears[r.down] = inputs(b.linears[r.down]!, set(channels), edit);
  return { ...b, linears };
};

/**
 * The model without the given groups (`removals[i]` for block i): smaller tensors, and a
 * spec whose per-block shapes say so.
 */
/** One block with its groups removed: tensors of the smaller sizes (shapeAfterRemoval). */
export const cutBlock = (spec: ModelSpec, block: number, b: HostBlock, removal: GroupRemoval): HostBlock => editBlock(spec, block, b, removal, "remove");

export const removeGroups = (
  spec: ModelSpec,
  blocks: readonly HostBlock[],
  removals: readonly GroupRemoval[],
): { spec: ModelSpec; blocks: HostBlock[] } => {
  if (removals.length !== spec.numLayers || blocks.length !== spec.numLayers) {
    throw new RangeError(`${removals.length} removals and ${blocks.length} blocks for a model of ${spec.numLayers} blocks`);
  }
  const edited = blocks.map((b, i) => editBlock(spec, i, b, removals[i]!, "remove"));
  const shapes = removals.map((removal, i) => shapeAfterRemoval(spec, i, removal));
  return { spec: { ...spec, blocks: shapes }, blocks: edited };
};

/** The model at full size with the given groups' weights (and bias entries) set to zero. */
export const zeroGroups = (spec: ModelSpec, blocks: readonly HostBlock[], removals: readonly GroupRemoval[]): HostBlock[] => {
  if (removals.length !== spec.numLayers || blocks.length !== spec.numLayers) {
    throw new RangeError(`${removals.length} removals and ${blocks.length} blocks for a model of ${spec.numLayers} blocks`);
  }
  return blocks.map((b, i) => editBlock(spec, i, b, removals[i]!, "zero"));
};
