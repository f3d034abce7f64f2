/**
 * Tensor primitives of the decoder, written for the wasm backend: every product is a plain
 * 2-D matMul without transpose flags (the only fast one there), and gradients are given
 * explicitly so that backward passes keep to the same fast path. Backends whose products
 * take transpose flags at full speed (backend-traits.ts) use the flags instead of copies.
 */
import * as tf from "@tensorflow/tfjs";
import type { ModelSpec } from "./spec.ts";
import { backendTraits } from "./backend-traits.ts";
import { copyRange, copyRows } from "./copy-kernels.ts";

export interface NormTensors {
  readonly weight: tf.Tensor1D;
  readonly bias?: tf.Tensor1D;
}

export interface LinearTensors {
  readonly weight: tf.Tensor2D;
  readonly bias?: tf.Tensor1D;
}

type Saver = (tensors: tf.Tensor[]) => void;

/**
 * tf.customGrad with typed inputs: `f` gets the inputs and the save function, and returns
 * the value with a gradient function giving one gradient per input.
 */
const withGradient = <A extends tf.Tensor[], R extends tf.Tensor>(
  f: (inputs: A, save: Saver) => { value: R; gradFunc: (dy: R, saved: tf.Tensor[]) => tf.Tensor[] },
): ((...inputs: A) => R) => {
  const wrapped = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as Saver;
    return f(args as A, save);
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return wrapped as unknown as (...inputs: A) => R;
};

/** dy · bᵀ: by the transpose flag where it is fast, else by an explicit transpose. */
const timesTransposed = (dy: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D =>
  backendTraits().transposeFlags ? tf.matMul(dy, b, false, true) : tf.matMul(dy, tf.transpose(b));

/** aᵀ · dy, likewise. */
const transposedTimes = (a: tf.Tensor2D, dy: tf.Tensor2D): tf.Tensor2D =>
  backendTraits().transposeFlags ? tf.matMul(a, dy, true, false) : tf.matMul(tf.transpose(a), dy);

/**
 * a · b for 2-D tensors. tf.matMul's own gradient uses transpose flags, which are ~10x
 * slower on wasm than taking the transpose explicitly.
 */
export const matMul2d = withGradient(([a, b]: [tf.Tensor2D, tf.Tensor2D], save) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b) as tf.Tensor2D,
    gradFunc: (dy: tf.Tensor2D, saved) => {
      const [sa, sb] = saved as [tf.Tensor2D, tf.Tensor2D];
      return [timesTransposed(dy, sb), transposedTimes(sa, dy)];
    },
  };
});

const affine = withGradient(([x, w, b]: [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D], save) => {
  save([x, w]);
  return {
    value: tf.add(tf.matMul(x, w), b) as tf.Tensor2D,
    gradFunc: (dy: tf.Tensor2D, saved) => {
      const [sx, sw] = saved as [tf.Tensor2D, tf.Tensor2D];
      return [timesTransposed(dy, sw), transposedTimes(sx, dy), tf.sum(dy, 0)];
    },
  };
});

/** y = x W + b with W stored as [in, out]. */
export const linear = (x: tf.Tensor2D, l: LinearTensors): tf.Tensor2D =>
  l.bias ? affine(x, l.weight, l.bias) : matMul2d(x, l.weight);

/**
 * x · m for a constant m whose transpose is already at hand; no gradient reaches m.
 * Used for the rotate-half permutation of RoPE.
 */
export const constMatMul = (x: tf.Tensor2D, m: tf.Tensor2D, mTransposed: tf.Tensor2D): tf.Tensor2D =>
  withGradient(([input]: [tf.Tensor2D]) => ({
    value: tf.matMul(input, m) as tf.Tensor2D,
    gradFunc: (dy: tf.Tensor2D) => [tf.matMul(dy, mTransposed)],
  }))(x);

/** Indices [start, start + size) of x along `axis`; the gradient is the zero-padded upstream gradient. */
export const takeRange = <T extends tf.Tensor>(x: T, axis: number, start: number, size: number): T =>
  withGradient(([input]: [T]) => {
    const shape = input.shape;
    return {
      value: copyRange(input, axis, start, size),
      gradFunc: (dy: T) => {
        const padding = shape.map((n, i): [number, number] => (i === axis ? [start, n - start - size] : [0, 0]));
        return [tf.pad(dy, padding)];
      },
    };
  })(x);

/**
 * Sum of same-shaped tensors. tf.addN binds every input at once, and a WebGPU shader may
 * bind only 8 buffers: sums of more run as a tree of addN over at most 7 inputs each.
 */
export const sumAll = <T extends tf.Tensor>(tensors: readonly T[]): T => {
  let level: T[] = [...tensors];
  while (level.length > 1) {
    const next: T[] = [];
    for (let i = 0; i < level.length; i += 7) {
      const group = level.slice(i, i + 7);
      next.push(group.length === 1 ? group[0]! : (tf.addN(group) as T));
    }
    level = next;
  }
  if (level.length === 0) throw new RangeError("sumAll: no tensors to sum");
  return level[0]!;
};

/** RMSNorm over the last axis: x / sqrt(mean(x²) + eps) · w. */
export const rmsNorm = (x: tf.Tensor2D, n: NormTensors, eps: number): tf.Tensor2D => {
  const inverseRms = tf.rsqrt(tf.add(tf.mean(tf.square(x), 1, true), eps));
  return tf.mul(tf.mul(x, inverseRms), n.weight) as tf.Tensor2D;
};

/** LayerNorm over the last axis with the biased variance, as torch computes it. */
export const layerNorm = (x: tf.Tensor2D, n: NormTensors, eps: number): tf.Tensor2D => {
  const centred = tf.sub(x, tf.mean(x, 1, true));
  const inverseStd = tf.rsqrt(tf.add(tf.mean(tf.square(centred), 1, true), eps));
  const scaled = tf.mul(tf.mul(centred, inverseStd), n.weight);
  return (n.bias ? tf.add(scaled, n.bias) : scaled) as tf.Tensor2D;
};

export const normalize = (spec: ModelSpec, x: tf.Tensor2D, n: NormTensors): tf.Tensor2D =>
  spec.norm === "rms" ? rmsNorm(x, n, spec.normEps) : layerNorm(x, n, spec.normEps);

/** sqrt(2/π) doubled: 0.5·(1 + tanh(z)) is sigmoid(2z), and sigmoid is far faster than tanh on wasm. */
const GELU_SIGMOID_SCALE = 2 * Math.sqrt(2 / Math.PI);

export const activate = (kind: ModelSpec["activation"], x: tf.Tensor2D): tf.Tensor2D => {
  switch (kind) {
    case "silu":
      return tf.mul(x, tf.sigmoid(x)) as tf.Tensor2D;
    case "relu":
      return tf.relu(x);
    case "gelu_tanh": {
      const inner = tf.mul(x, tf.add(tf.mul(tf.square(x), 0.044715 * GELU_SIGMOID_SCALE), GELU_SIGMOID_SCALE));
      return tf.mul(x, tf.sigmoid(inner)) as tf.Tensor2D;
    }
  }
};

/**
 * Rows of `table` picked by `ids`. The gradient is a scatter-add of the upstream rows:
 * gather's own gradient (UnsortedSegmentSum) is missing on wasm, and ScatterNd sums
 * repeated ids at a tiny fraction of the cost of a one-hot product.
 */
export const embeddingLookup = (table: tf.Tensor2D, ids: Int32Array): tf.Tensor2D =>
  withGradient(([t]: [tf.Tensor2D]) => {
    const shape = t.shape;
    return {
      value: copyRows(t, ids),
      gradFunc: (dy: tf.Tensor2D) => [tf.scatterND(tf.tensor2d(ids, [ids.length, 1], "int32"), dy, shape)],
    };
  })(table);

/**
 * Sum over rows of weight·(logsumexp(row) − row[target]). The log-sum-exp comes from the
 * softmax kernel (fast on wasm, unlike exp and logSoftmax): the softmax at the row maximum
 * is 1/Σexp(x − max), which never underflows, so lse = max − log(max(softmax)).
 * `targets` must already be valid class indices (unscored rows carry weight 0).
 */
export const weightedNllSum = (logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar =>
  withGradient(([x]: [tf.Tensor2D], save) => {
    const [rows, vocab] = x.shape;
    const probabilities = tf.softmax(x);
    // Saved rather than captured: the gradient may run after the caller's tidy has ended.
    save([probabilities, targets, weights]);
    const logSumExp = tf.sub(tf.max(x, 1), tf.log(tf.max(probabilities, 1)));
    const flatIndex = tf.add(tf.mul(tf.range(0, rows, 1, "int32"), tf.scalar(vocab, "int32")), targets);
    const targetLogit = tf.gather(tf.reshape(x, [-1]), flatIndex);
    return {
      value: tf.sum(tf.mul(tf.sub(logSumExp, targetLogit), weights)) as tf.Scalar,
      gradFunc: (dy: tf.Scalar, saved) => {
        const [p, savedTargets, savedWeights] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D];
        const rowScale = tf.reshape(tf.mul(savedWeights, dy), [rows, 1]);
        // The wasm OneHot kernel writes int32 bits whatever dtype is asked for: cast instead.
        const expected = tf.cast(tf.oneHot(savedTargets, vocab), "float32");
        return [tf.mul(tf.sub(p, expected), rowScale)];
      },
    };
  })(logits);
