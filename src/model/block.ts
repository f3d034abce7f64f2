/**
 * One generic decoder block for every family; the spec's options pick norm kind, norm
 * placement, positions, fused or separate q/k/v, grouped-query attention and MLP shape.
 * Activations are 2-D [batch·seqlen, hidden] throughout.
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointError } from "../errors.ts";
import type { LinearOf, ModelSpec, NormOf, SourceBlock, TensorLike } from "./spec.ts";
import { blockShape, isHostTensor, kvDim, linearShapes } from "./spec.ts";
import { uploadTensor } from "./upload.ts";
import { activate, linear as linearOp, matMul2d, normalize, takeRange, type LinearTensors, type NormTensors } from "./ops.ts";
import { applyRope } from "./rope.ts";
import type { ForwardTables, LengthTables } from "./tables.ts";
import { backendTraits } from "./backend-traits.ts";

export type { LinearTensors, NormTensors } from "./ops.ts";

export interface BlockTensors {
  readonly attnNorm: NormTensors;
  readonly mlpNorm: NormTensors;
  /** Keyed by the spec's linear names. */
  readonly linears: Readonly<Record<string, LinearTensors>>;
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean =>
  a.length === b.length && a.every((n, i) => n === b[i]);

/** Checks a tensor's declared shape (and, on the host, its data length); `where` names it in the error. */
export const checkHostTensor = <T extends TensorLike>(
  t: T | undefined,
  expected: readonly number[],
  source: string,
  where: string,
): T => {
  if (!t) throw new CheckpointError({ file: source, problem: `${where} is missing` });
  if (!sameShape(t.shape, expected)) {
    throw new CheckpointError({
      file: source,
      problem: `${where} has shape [${t.shape.join(", ")}] but the model needs [${expected.join(", ")}]`,
    });
  }
  if (!isHostTensor(t)) return t;
  const size = expected.reduce((a, b) => a * b, 1);
  if (!(t.data instanceof Float32Array) || t.data.length !== size) {
    throw new CheckpointError({
      file: source,
      problem: `${where} holds ${t.data?.length ?? 0} values but its shape [${expected.join(", ")}] needs ${size}`,
    });
  }
  return t;
};

/** Makes a tensor from host data or a checkpoint's weights; as a trainable tf.Variable when asked. */
export const hostToTensor = <R extends tf.Rank>(t: TensorLike, asVariable: boolean, label = "a weight"): tf.Tensor<R> => {
  const tensor = uploadTensor(t, label) as tf.Tensor<R>;
  if (!asVariable) return tensor;
  const variable = tf.variable(tensor, true);
  tensor.dispose();
  return variable as unknown as tf.Tensor<R>;
};

const normToTensors = (
  n: NormOf<TensorLike> | undefined,
  hidden: number,
  source: string,
  where: string,
  asVariables: boolean,
): NormTensors => {
  if (!n) throw new CheckpointError({ file: source, problem: `${where} is missing` });
  const weight = hostToTensor<tf.Rank.R1>(checkHostTensor(n.weight, [hidden], source, `${where} weight`), asVariables, `${where} weight`);
  if (!n.bias) return { weight };
  try {
    const bias = hostToTensor<tf.Rank.R1>(checkHostTensor(n.bias, [hidden], source, `${where} bias`), asVariables, `${where} bias`);
    return { weight, bias };
  } catch (e) {
    weight.dispose();
    throw e;
  }
};

const linearToTensors = (
  l: LinearOf<TensorLike> | undefined,
  shape: readonly [number, number],
  source: string,
  where: string,
  asVariables: boolean,
): LinearTensors => {
  if (!l) throw new CheckpointError({ file: source, problem: `${where} is missing` });
  const weight = hostToTensor<tf.Rank.R2>(checkHostTensor(l.weight, shape, source, `${where} weight`), asVariables, `${where} weight`);
  if (!l.bias) return { weight };
  try {
    const bias = hostToTensor<tf.Rank.R1>(checkHostTensor(l.bias, [shape[1]], source, `${where} bias`), asVariables, `${where} bias`);
    return { weight, bias };
  } catch (e) {
    weight.dispose();
    throw e;
  }
};

/**
 * Validates a host block against the shapes of block `block` of the spec and uploads it.
 * `source` names the checkpoint in errors; `label` the block (default "block <index>").
 */
export const blockToTensors = (
  spec: ModelSpec,
  block: number,
  b: SourceBlock,
  options: { source?: string; label?: string; asVariables?: boolean } = {},
): BlockTensors => {
  const source = options.source ?? spec.family;
  const label = options.label ?? `block ${block}`;
  const asVariables = options.asVariables ?? false;
  const shapes = linearShapes(spec, block);
  const made: tf.Tensor[] = [];
  const track = <T extends NormTensors | LinearTensors>(t: T): T => {
    made.push(t.weight);
    if (t.bias) made.push(t.bias);
    return t;
  };
  try {
    const attnNorm = track(normToTensors(b.attnNorm, spec.hiddenSize, source, `${label} attention norm`, asVariables));
    const mlpNorm = track(normToTensors(b.mlpNorm, spec.hiddenSize, source, `${label} MLP norm`, asVariables));
    const linears: Record<string, LinearTensors> = {};
    for (const [name, shape] of Object.entries(shapes)) {
      linears[name] = track(linearToTensors(b.linears?.[name], shape, source, `${label} linear ${name}`, asVariables));
    }
    return { attnNorm, mlpNorm, linears };
  } catch (e) {
    tf.dispose(made);
    throw e;
  }
};

export const blockTensorList = (b: BlockTensors): tf.Tensor[] => {
  const out: tf.Tensor[] = [];
  for (const part of [b.attnNorm, b.mlpNorm, ...Object.values(b.linears)]) {
    out.push(part.weight);
    if (part.bias) out.push(part.bias);
  }
  return out;
};

export const disposeBlock = (b: BlockTensors): void => {
  tf.dispose(blockTensorList(b));
};

/**
 * Causal self-attention: the projections, positions, and then the heads, by the path the
 * backend suits (backend-traits.ts): batched over all heads, or head by head.
 */
const attention = (
  spec: ModelSpec,
  block: number,
  w: BlockTensors,
  x: tf.Tensor2D,
  batch: number,
  seqlen: number,
  tables: ForwardTables,
  observe?: LinearInputObserver,
): tf.Tensor2D => {
  const linear = observed(w, observe);
  const { headDim, roles } = spec;
  const { numHeads, numKvHeads } = blockShape(spec, block);
  const qWidth = numHeads * headDim;
  const kvWidth = kvDim(spec, block);
  let q: tf.Tensor2D;
  let k: tf.Tensor2D;
  let v: tf.Tensor2D;
  if (roles.qkv) {
    const qkv = linear(x, roles.qkv);
    q = takeRange(qkv, 1, 0, qWidth);
    k = takeRange(qkv, 1, qWidth, kvWidth);
    v = takeRange(qkv, 1, qWidth + kvWidth, kvWidth);
  } else {
    q = linear(x, roles.q!);
    k = linear(x, roles.k!);
    v = linear(x, roles.v!);
  }
  const t = tables.forLength(seqlen);
  if (t.query && t.key) {
    q = applyRope(q, batch, t.query);
    k = applyRope(k, batch, t.key);
  } else {
    q = tf.mul(q, 1 / Math.sqrt(headDim));
  }
  const shape = { batch, seqlen, numHeads, numKvHeads, headDim };
  const merged = backendTraits().batchedAttention ? batchedHeads(q, k, v, shape, t) : headByHead(q, k, v, shape, t);
  return linear(merged, roles.o);
};

interface HeadShape {
  readonly batch: number;
  readonly seqlen: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
}

/**
 * Attention outputs [batch·seqlen, heads·headDim] by batched products over every (window,
 * key/value head) at once, the query heads that share a key/value head stacked as rows: a
 * few large dispatches, which is what a GPU needs. Tensors stay within 4 dimensions (what
 * the WebGPU backend differentiates correctly). Query chunks as in headByHead.
 */
const batchedHeads = (q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, s: HeadShape, t: LengthTables): tf.Tensor2D => {
  const { batch, seqlen, numHeads, numKvHeads, headDim } = s;
  const groups = batch * numKvHeads;
  const perKv = numHeads / numKvHeads;
  // [batch·kvHeads, perKv, seqlen, headDim]: head h = g·perKv + j of window b at [b·kvHeads + g, j].
  const queries = tf.reshape(tf.transpose(tf.reshape(q, [batch, seqlen, numHeads, headDim]), [0, 2, 1, 3]), [groups, perKv, seqlen, headDim]);
  const keys = tf.reshape(tf.transpose(tf.reshape(k, [batch, seqlen, numKvHeads, headDim]), [0, 2, 1, 3]), [groups, seqlen, headDim]);
  const values = tf.reshape(tf.transpose(tf.reshape(v, [batch, seqlen, numKvHeads, headDim]), [0, 2, 1, 3]), [groups, seqlen, headDim]);
  const outputs = t.chunks.map((c) => {
    const rows = c.end - c.start;
    const chunkQueries = tf.reshape(rows === seqlen ? queries : takeRange(queries, 2, c.start, rows), [groups, perKv * rows, headDim]);
    const visibleKeys = c.end === seqlen ? keys : takeRange(keys, 1, 0, c.end);
    const visibleValues = c.end === seqlen ? values : takeRange(values, 1, 0, c.end);
    const scores = tf.add(tf.reshape(tf.matMul(chunkQueries, visibleKeys, false, true), [groups, perKv, rows, c.end]), c.mask);
    const weights = tf.reshape(tf.softmax(scores), [groups, perKv * rows, c.end]);
    return tf.reshape(tf.matMul(weights, visibleValues), [groups, perKv, rows, headDim]);
  });
  const all = outputs.length === 1 ? outputs[0]! : tf.concat(outputs, 2);
  return tf.reshape(tf.transpose(tf.reshape(all, [batch, numHeads, seqlen, headDim]), [0, 2, 1, 3]), [batch * seqlen, numHeads * headDim]) as tf.Tensor2D;
};

/**
 * Attention outputs [batch·seqlen, heads·headDim] one (window, head, query chunk) at a time:
 * two plain 2-D products each, wasm's fast path, with only one head's scores alive at a time.
 */
const headByHead = (q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, s: HeadShape, t: LengthTables): tf.Tensor2D => {
  const { batch, seqlen, numHeads, numKvHeads, headDim } = s;
  // [batch·heads·seqlen, headDim]: rows of one (window, head) are contiguous.
  const queryHeads = tf.reshape(
    tf.transpose(tf.reshape(q, [batch, seqlen, numHeads, headDim]), [0, 2, 1, 3]),
    [-1, headDim],
  ) as tf.Tensor2D;
  const valueHeads = tf.reshape(
    tf.transpose(tf.reshape(v, [batch, seqlen, numKvHeads, headDim]), [0, 2, 1, 3]),
    [-1, headDim],
  ) as tf.Tensor2D;
  // [batch·kvHeads·headDim, seqlen]: each head's keys already transposed.
  const keyHeadsT = tf.reshape(
    tf.transpose(tf.reshape(k, [batch, seqlen, numKvHeads, headDim]), [0, 2, 3, 1]),
    [-1, seqlen],
  ) as tf.Tensor2D;
  const queriesPerKv = numHeads / numKvHeads;
  const outputs: tf.Tensor2D[] = [];
  for (let b = 0; b < batch; b++) {
    for (let g = 0; g < numKvHeads; g++) {
      const kv = b * numKvHeads + g;
      const keysT = takeRange(keyHeadsT, 0, kv * headDim, headDim);
      const values = takeRange(valueHeads, 0, kv * seqlen, seqlen);
      const visible = t.chunks.map((c) =>
        c.end === seqlen
          ? { keysT, values }
          : { keysT: takeRange(keysT, 1, 0, c.end), values: takeRange(values, 0, 0, c.end) },
      );
      for (let h = g * queriesPerKv; h < (g + 1) * queriesPerKv; h++) {
        const head = b * numHeads + h;
        t.chunks.forEach((c, i) => {
          // Scoped so that only one head's [rows, seqlen] scores are alive at a time when no
          // gradient is recorded; under a tape the saved tensors are kept regardless.
          outputs[head * t.chunks.length + i] = tf.tidy(() => {
            const queries = takeRange(queryHeads, 0, head * seqlen + c.start, c.end - c.start);
            const scores = tf.add(matMul2d(queries, visible[i].keysT), c.mask) as tf.Tensor2D;
            return matMul2d(tf.softmax(scores), visible[i].values);
          });
        });
      }
    }
  }
  return tf.reshape(
    tf.transpose(tf.reshape(tf.concat(outputs, 0), [batch, numHeads, seqlen, headDim]), [0, 2, 1, 3]),
    [batch * seqlen, numHeads * headDim],
  ) as tf.Tensor2D;
};

const mlp = (spec: ModelSpec, w: BlockTensors, x: tf.Tensor2D, observe?: LinearInputObserver): tf.Tensor2D => {
  const { roles } = spec;
  const linear = observed(w, observe);
  const up = linear(x, roles.up);
  const hidden = roles.gate
    ? (tf.mul(activate(spec.activation, linear(x, roles.gate)), up) as tf.Tensor2D)
    : activate(spec.activation, up);
  return linear(hidden, roles.down);
};

/**
 * Sees the input [batch·seqlen, in] of every prunable linear as the block runs: pruning
 * statistics (input norms for Wanda, Hessians for SparseGPT) are gathered through it.
 * The tensor belongs to the forward pass; an observer must not keep or dispose it.
 */
export type LinearInputObserver = (linear: string, input: tf.Tensor2D) => void;

const observed =
  (w: BlockTensors, observe?: LinearInputObserver) =>
  (x: tf.Tensor2D, name: string): tf.Tensor2D => {
    observe?.(name, x);
    return linearOp(x, w.linears[name]);
  };

/**
 * Pure forward of block `block` (whose sizes `w` has) for x [batch·seqlen, hidden]; usable
 * inside tf.grad. The caller owns the tidy scope (intermediates are not disposed here).
 */
export const blockForward = (
  spec: ModelSpec,
  block: number,
  w: BlockTensors,
  x: tf.Tensor2D,
  batch: number,
  seqlen: number,
  tables: ForwardTables,
  observe?: LinearInputObserver,
): tf.Tensor2D => {
  if (spec.normBefore) {
    const h = tf.add(x, attention(spec, block, w, normalize(spec, x, w.attnNorm), batch, seqlen, tables, observe)) as tf.Tensor2D;
    return tf.add(h, mlp(spec, w, normalize(spec, h, w.mlpNorm), observe)) as tf.Tensor2D;
  }
  const h = normalize(spec, tf.add(x, attention(spec, block, w, x, batch, seqlen, tables, observe)) as tf.Tensor2D, w.attnNorm);
  return normalize(spec, tf.add(h, mlp(spec, w, h, observe)) as tf.Tensor2D, w.mlpNorm);
};
