/**
 * Per-window-length constants of the forward pass (causal mask, RoPE cos/sin), built once
 * and reused across blocks and calls.
 */
import * as tf from "@tensorflow/tfjs";
import type { ModelSpec } from "./spec.ts";
import { buildRopeTables, disposeRopeTables, inverseFrequencies, type RopeTables } from "./rope.ts";

/** Large enough that exp() of a masked score is exactly 0, finite so gradients stay clean. */
const MASKED = -1e9;

/**
 * Query rows [start, end) attend to keys [0, end) only: the keys after `end` are masked for
 * every row of the chunk, so splitting the queries skips that part of the score matrix.
 */
export interface QueryChunk {
  readonly start: number;
  readonly end: number;
  /** Additive causal mask [end - start, end]. */
  readonly mask: tf.Tensor2D;
}

/** Rows per query chunk below which splitting costs more in extra ops than it saves. */
const MIN_CHUNK_ROWS = 256;
const MAX_CHUNKS = 2;

export const queryChunkBounds = (seqlen: number): [number, number][] => {
  const count = Math.max(1, Math.min(MAX_CHUNKS, Math.floor(seqlen / MIN_CHUNK_ROWS)));
  return Array.from({ length: count }, (_, c) => [
    Math.round((c * seqlen) / count),
    Math.round(((c + 1) * seqlen) / count),
  ]);
};

export interface LengthTables {
  readonly chunks: readonly QueryChunk[];
  /** Query tables carry the 1/sqrt(headDim) attention scale. */
  readonly query?: RopeTables;
  readonly key?: RopeTables;
}

/** Survives any enclosing tf.tidy: the tables outlive the call that first asked for them. */
const kept = (r: RopeTables): RopeTables => {
  for (const t of [r.cos, r.sin, r.rotate, r.rotateTransposed]) tf.keep(t);
  return r;
};

/** Window lengths kept at once: evaluation uses one length plus perhaps a shorter last window. */
const KEPT_LENGTHS = 3;

export class ForwardTables {
  private readonly byLength = new Map<number, LengthTables>();
  private readonly inv: Float64Array | undefined;

  constructor(private readonly spec: ModelSpec) {
    const p = spec.positions;
    this.inv = p.kind === "rope" ? inverseFrequencies(spec.headDim, p.theta, p.scaling) : undefined;
  }

  /** Tables for one window length. They stay valid until `dispose` or until more lengths are asked for. */
  forLength(seqlen: number): LengthTables {
    const cached = this.byLength.get(seqlen);
    if (cached) {
      this.byLength.delete(seqlen);
      this.byLength.set(seqlen, cached);
      return cached;
    }
    if (this.byLength.size >= KEPT_LENGTHS) {
      const oldest = this.byLength.keys().next().value as number;
      this.release(oldest);
    }
    const made = this.build(seqlen);
    this.byLength.set(seqlen, made);
    return made;
  }

  dispose(): void {
    for (const seqlen of [...this.byLength.keys()]) this.release(seqlen);
  }

  private release(seqlen: number): void {
    const t = this.byLength.get(seqlen);
    if (!t) return;
    this.byLength.delete(seqlen);
    for (const c of t.chunks) c.mask.dispose();
    if (t.query) disposeRopeTables(t.query);
    if (t.key) disposeRopeTables(t.key);
  }

  private build(seqlen: number): LengthTables {
    const chunks = queryChunkBounds(seqlen).map(([start, end]): QueryChunk => {
      const rows = end - start;
      const maskData = new Float32Array(rows * end);
      for (let i = 0; i < rows; i++) maskData.fill(MASKED, i * end + start + i + 1, (i + 1) * end);
      return { start, end, mask: tf.keep(tf.tensor2d(maskData, [rows, end])) };
    });
    if (!this.inv) return { chunks };
    return {
      chunks,
      query: kept(buildRopeTables(this.inv, seqlen, 1 / Math.sqrt(this.spec.headDim))),
      key: kept(buildRopeTables(this.inv, seqlen, 1)),
    };
  }
}
