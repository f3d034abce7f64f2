/**
 * HyWIA's hybrid-grained importance (arXiv 2403.10799): every structured group is judged
 * by its individual weights (fine-grained: sum of |t| over the group, t = w·dL/dw) and as a
 * whole (coarse-grained: |sum of t|), and the two views are fused with softmax weights
 * learned end to end on calibration data. The paper gives no code; the choices below are
 * ours where it is silent:
 *
 * - Normalisation: within a block and a group kind (key/value head groups, MLP channels),
 *   each score is divided by its mean over the block's groups of that kind, so both views
 *   are on one scale (mean 1) whatever their magnitudes; an all-zero view stays zero.
 * - Fusion: I = a_fine · fine + a_coarse · coarse with (a_fine, a_coarse) = softmax of two
 *   logits per block and group kind (attention and MLP may trust the views differently).
 * - Learning: the logits start at 0 (equal weights). Each step, every pruned block's groups
 *   get a soft mask m = sigmoid((I − τ) / T), where τ is the block's pruning threshold
 *   (midway between the last group removed and the first kept at the block's ratio, with
 *   the current weights) and T = temperature · the standard deviation of I over the
 *   block's groups of that kind; τ and T are held constant within a step. The mask scales
 *   the group's input rows of o (its query heads' outputs) or of down (its channel), which
 *   at m = 0 is exactly the group's removal and at m = 1 the dense block. The calibration
 *   loss of the softly masked model is minimised over the logits with Adam; the model's
 *   weights do not change.
 * - Groups are then removed by the fused importance with the learned weights, like every
 *   other importance (group-importance.ts, groupCounts and removalOf).
 */
import * as tf from "@tensorflow/tfjs";
import type { BlockTensors, Decoder } from "../model/decoder.ts";
import type { ModelSpec } from "../model/spec.ts";
import { blockShape } from "../model/spec.ts";
import { groupCounts, type BlockGroupScores, type BlockGroupSums } from "./group-importance.ts";

/** The two views of a block's groups, each normalised within the block and group kind. */
export interface HybridScores {
  readonly fine: BlockGroupScores;
  readonly coarse: BlockGroupScores;
}

/** Softmax weights of the fine and coarse views (they sum to 1). */
export interface ViewWeights {
  readonly fine: number;
  readonly coarse: number;
}

/** A block's fusion: one pair of weights for its head groups, one for its channels. */
export interface FusionWeights {
  readonly heads: ViewWeights;
  readonly channels: ViewWeights;
}

export const EQUAL_WEIGHTS: FusionWeights = { heads: { fine: 0.5, coarse: 0.5 }, channels: { fine: 0.5, coarse: 0.5 } };

export interface FusionLearning {
  /** Adam steps on the fusion logits. */
  readonly steps: number;
  readonly lr: number;
  /** Calibration windows per step (taken in turn, wrapping around). */
  readonly batch: number;
  /** Width of the sigmoid around the threshold, in standard deviations of the fused scores. */
  readonly temperature: number;
}

export const DEFAULT_FUSION_LEARNING: FusionLearning = { steps: 32, lr: 0.1, batch: 4, temperature: 0.25 };

/** Each score divided by the mean of all; all zeros (no gradient reached them) stay zeros. */
export const normaliseWithinBlock = (scores: Float64Array): Float64Array => {
  let sum = 0;
  for (const s of scores) sum += s;
  const mean = sum / Math.max(1, scores.length);
  return mean > 0 ? scores.map((s) => s / mean) : new Float64Array(scores.length);
};

/** The fine and coarse views of a block's groups from their sums, normalised. */
export const hybridScores = (sums: BlockGroupSums): HybridScores => {
  const view = (of: (s: BlockGroupSums["kvHeads"][number]) => number): BlockGroupScores => ({
    kvHeads: normaliseWithinBlock(Float64Array.from(sums.kvHeads, of)),
    channels: normaliseWithinBlock(Float64Array.from(sums.channels, of)),
  });
  return { fine: view((s) => s.abs), coarse: view((s) => Math.abs(s.signed)) };
};

const mix = (fine: Float64Array, coarse: Float64Array, w: ViewWeights): Float64Array => fine.map((f, i) => w.fine * f + w.coarse * coarse[i]!);

/** The fused importance of a block's groups. */
export const fuse = (scores: HybridScores, weights: FusionWeights): BlockGroupScores => ({
  kvHeads: mix(scores.fine.kvHeads, scores.coarse.kvHeads, weights.heads),
  channels: mix(scores.fine.channels, scores.coarse.channels, weights.channels),
});

const softmax2 = (a: number, b: number): ViewWeights => {
  const m = Math.max(a, b);
  const ea = Math.exp(a - m);
  const eb = Math.exp(b - m);
  return { fine: ea / (ea + eb), coarse: eb / (ea + eb) };
};

/**
 * The threshold and width of a block's soft mask for fused scores `fused` of which `removed`
 * go: τ midway between the highest removed and the lowest kept, T from the spread.
 */
export const softMaskEdge = (fused: Float64Array, removed: number, temperature: number): { threshold: number; width: number } | undefined => {
  if (removed === 0) return undefined;
  const sorted = Float64Array.from(fused).sort();
  const threshold = (sorted[removed - 1]! + sorted[removed]!) / 2;
  let mean = 0;
  for (const v of sorted) mean += v / sorted.length;
  let variance = 0;
  for (const v of sorted) variance += (v - mean) ** 2 / sorted.length;
  const width = temperature * Math.sqrt(variance);
  // Every group scoring alike leaves nothing for the weights to decide.
  return width > 0 ? { threshold, width } : undefined;
};

type Kind = "heads" | "channels";

/**
 * Block i's tensors with its key/value head groups and channels scaled by masks (one entry
 * per group; absent: unscaled): the group's query heads' input rows of o, and the channel's
 * row of down. A mask of 0 computes exactly what removing the group computes.
 */
export const maskedBlock = (spec: ModelSpec, i: number, t: BlockTensors, heads?: tf.Tensor1D, channels?: tf.Tensor1D): BlockTensors => {
  const shape = blockShape(spec, i);
  const linears = { ...t.linears };
  if (heads) {
    // Each key/value group owns perKv query heads of headDim rows of o.
    const rows = (shape.numHeads / shape.numKvHeads) * spec.headDim;
    const o = t.linears[spec.roles.o]!;
    const m = tf.reshape(tf.tile(tf.reshape(heads, [shape.numKvHeads, 1]), [1, rows]), [shape.numKvHeads * rows, 1]);
    linears[spec.roles.o] = { ...o, weight: tf.mul(o.weight, m) as tf.Tensor2D };
  }
  if (channels) {
    const down = t.linears[spec.roles.down]!;
    linears[spec.roles.down] = { ...down, weight: tf.mul(down.weight, tf.reshape(channels, [shape.intermediateSize, 1])) as tf.Tensor2D };
  }
  return { ...t, linears };
};

export interface LearnedFusion {
  /** Per block, the learned view weights. */
  readonly weights: readonly FusionWeights[];
  /** Calibration loss of the softly masked model at each step, before its update. */
  readonly losses: readonly number[];
}

/**
 * Learns each block's fusion weights by minimising the calibration loss of the softly
 * masked model (see the module comment). `decoder` holds the dense model; `ratios[i]` is
 * the fraction of block i's prunable weights to remove (groupCounts).
 */
export const learnFusion = async (
  decoder: Decoder,
  scores: readonly HybridScores[],
  ratios: readonly number[],
  windows: readonly Int32Array[],
  options: FusionLearning = DEFAULT_FUSION_LEARNING,
  onStep?: (step: number, loss: number) => void,
): Promise<LearnedFusion> => {
  const spec: ModelSpec = decoder.spec;
  if (scores.length !== spec.numLayers || ratios.length !== spec.numLayers) {
    throw new RangeError(`${scores.length} score sets and ${ratios.length} ratios for a model of ${spec.numLayers} blocks`);
  }
  if (windows.length === 0) throw new RangeError("learnFusion: no calibration windows");
  for (const [name, v] of [["steps", options.steps], ["batch", options.batch]] as const) {
    if (!Number.isInteger(v) || v < 0 || (name === "batch" && v < 1)) throw new RangeError(`fusion ${name} ${v} must be a whole number${name === "batch" ? " >= 1" : " >= 0"}`);
  }
  if (!(options.lr > 0) || !(options.temperature > 0)) throw new RangeError("fusion lr and temperature must be positive");
  const seqlen = windows[0]!.length;
  if (windows.some((w) => w.length !== seqlen)) throw new RangeError("learnFusion: calibration windows differ in length");

  const kinds: Kind[] = ["heads", "channels"];
  const viewsOf = (s: HybridScores, kind: Kind) =>
    kind === "heads" ? { fine: s.fine.kvHeads, coarse: s.coarse.kvHeads } : { fine: s.fine.channels, coarse: s.coarse.channels };
  const counts = scores.map((_, i) => {
    const c = groupCounts(spec, i, ratios[i]!);
    return { heads: c.kvHeads, channels: c.channels };
  });
  // Logits only where a block loses groups of that kind: elsewhere there is nothing to learn.
  // Within tidy, so the zeros the variables start from are freed.
  const logits = tf.tidy(() =>
    scores.map((_, i) => Object.fromEntries(kinds.map((k) => [k, counts[i]![k] > 0 ? tf.variable(tf.zeros([2]), true) : undefined])) as Record<Kind, tf.Variable | undefined>),
  );
  const constants = scores.map((s) =>
    Object.fromEntries(kinds.map((k) => [k, { fine: tf.tensor1d(Float32Array.from(viewsOf(s, k).fine)), coarse: tf.tensor1d(Float32Array.from(viewsOf(s, k).coarse)) }])) as Record<
      Kind,
      { fine: tf.Tensor1D; coarse: tf.Tensor1D }
    >,
  );
  const variables = logits.flatMap((l) => kinds.map((k) => l[k]).filter((v): v is tf.Variable => v !== undefined));
  const optimizer = tf.train.adam(options.lr);
  const weightsNow = async (): Promise<FusionWeights[]> =>
    Promise.all(
      logits.map(async (l) => {
        const of = async (v: tf.Variable | undefined): Promise<ViewWeights> => {
          if (!v) return EQUAL_WEIGHTS.heads;
          const [a, b] = (await v.data()) as Float32Array;
          return softmax2(a!, b!);
        };
        return { heads: await of(l.heads), channels: await of(l.channels) };
      }),
    );
  const losses: number[] = [];
  try {
    for (let step = 0; step < options.steps && variables.length > 0; step++) {
      // Thresholds and widths from the current weights, constant within the step.
      const current = await weightsNow();
      const edges = scores.map((s, i) => {
        const fused = fuse(s, current[i]!);
        return { heads: softMaskEdge(fused.kvHeads, counts[i]!.heads, options.temperature), channels: softMaskEdge(fused.channels, counts[i]!.channels, options.temperature) };
      });
      const picked = Array.from({ length: Math.min(options.batch, windows.length) }, (_, j) => windows[(step * options.batch + j) % windows.length]!);
      const ids = new Int32Array(picked.length * seqlen);
      const targets = new Int32Array(picked.length * seqlen).fill(-1);
      picked.forEach((w, b) => {
        ids.set(w, b * seqlen);
        for (let t = 0; t + 1 < seqlen; t++) targets[b * seqlen + t] = w[t + 1]!;
      });
      const mask = (i: number, kind: Kind): tf.Tensor1D | undefined => {
        const v = logits[i]![kind];
        const edge = edges[i]![kind];
        if (!v || !edge) return undefined;
        const a = tf.softmax(v);
        const c = constants[i]![kind];
        const fused = tf.add(tf.mul(tf.slice(a, [0], [1]), c.fine), tf.mul(tf.slice(a, [1], [1]), c.coarse));
        const soft = tf.sigmoid(tf.div(tf.sub(fused, edge.threshold), edge.width)) as tf.Tensor1D;
        return soft;
      };
      const transform = (i: number, t: BlockTensors): BlockTensors => maskedBlock(spec, i, t, mask(i, "heads"), mask(i, "channels"));
      const loss = optimizer.minimize(() => decoder.lossTensor(ids, targets, picked.length, seqlen, transform), true, variables);
      const value = (await loss!.data())[0]!;
      loss!.dispose();
      losses.push(value);
      onStep?.(step + 1, value);
    }
    return { weights: await weightsNow(), losses };
  } finally {
    optimizer.dispose();
    tf.dispose(variables);
    for (const c of constants) for (const k of kinds) tf.dispose([c[k].fine, c[k].coarse]);
  }
};
