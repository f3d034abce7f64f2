/**
 * The calibration windows' hidden states between blocks, group by group: on the backend
 * (fast; what small models use), or on the host, uploaded one group at a time, when the
 * plan finds that nsamples x seqlen x hidden floats would crowd the backend (a wasm heap
 * holds 4 GiB; 128 windows of 2048 tokens at width 4096 are 4 GiB by themselves). Either
 * way the values are the same float32 numbers, so results do not depend on where they are.
 */
import * as tf from "@tensorflow/tfjs";

export type ActivationPlace = "device" | "host";

export class Activations {
  private constructor(
    readonly place: ActivationPlace,
    /** Windows in each group. */
    readonly batches: readonly number[],
    readonly seqlen: number,
    private readonly device: (tf.Tensor2D | undefined)[],
    private readonly host: (Float32Array | undefined)[],
    private readonly width: number,
  ) {}

  static empty(place: ActivationPlace, batches: readonly number[], seqlen: number, width: number): Activations {
    return new Activations(place, batches, seqlen, batches.map(() => undefined), batches.map(() => undefined), width);
  }

  get count(): number {
    return this.batches.length;
  }

  /** Keeps group k's activations (the tensor is taken over: moved to the host and disposed when the place is host). */
  async put(k: number, x: tf.Tensor2D): Promise<void> {
    if (this.place === "device") {
      this.device[k] = x;
      return;
    }
    try {
      this.host[k] = Float32Array.from((await x.data()) as Float32Array);
    } finally {
      x.dispose();
    }
  }

  /** Group k's activations for one use: `f` gets them on the backend; an upload is freed after. */
  async with<T>(k: number, f: (x: tf.Tensor2D) => T | Promise<T>): Promise<T> {
    const kept = this.device[k];
    if (kept) return f(kept);
    const values = this.host[k];
    if (!values) throw new RangeError(`no activations for group ${k}`);
    const x = tf.tensor2d(values, [values.length / this.width, this.width]);
    try {
      return await f(x);
    } finally {
      x.dispose();
    }
  }

  /** Float32 bytes of one group (the largest). */
  groupBytes(): number {
    return Math.max(...this.batches) * this.seqlen * this.width * 4;
  }

  dispose(): void {
    tf.dispose(this.device.filter((t): t is tf.Tensor2D => t !== undefined));
    this.device.fill(undefined);
    this.host.fill(undefined);
  }
}
