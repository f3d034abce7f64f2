/**
 * The calibration windows' hidden states between blocks, group by group: on the backend
 * (fast; what small models use), on the host, uploaded one group at a time, when the plan
 * finds that nsamples x seqlen x hidden floats would crowd the backend (a wasm heap holds
 * 4 GiB; 128 windows of 2048 tokens at width 4096 are 4 GiB by themselves), or in files of
 * a scratch folder when they would crowd the host too. Every way keeps the same float32
 * numbers, so results do not depend on where they are.
 */
import * as tf from "@tensorflow/tfjs";
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";

export type ActivationPlace = "device" | "host" | "disk";

let spills = 0;

export class Activations {
  private constructor(
    readonly place: ActivationPlace,
    /** Windows in each group. */
    readonly batches: readonly number[],
    readonly seqlen: number,
    private readonly device: (tf.Tensor2D | undefined)[],
    private readonly host: (Float32Array | undefined)[],
    private readonly width: number,
    /** The scratch folder of the "disk" place (a folder of its own under it). */
    readonly scratch?: string,
  ) {
    if (place === "disk") {
      if (!scratch) throw new Error("activations on disk need a scratch folder");
      this.folder = join(scratch, `activations-${process.pid}-${++spills}`);
      mkdirSync(this.folder, { recursive: true });
    }
  }

  private readonly folder: string | undefined;

  static empty(place: ActivationPlace, batches: readonly number[], seqlen: number, width: number, scratch?: string): Activations {
    return new Activations(place, batches, seqlen, batches.map(() => undefined), batches.map(() => undefined), width, scratch);
  }

  /** An empty set like this one: the same place, groups and folder. */
  like(): Activations {
    return Activations.empty(this.place, this.batches, this.seqlen, this.width, this.scratch);
  }

  private fileOf(k: number): string {
    return join(this.folder!, `group-${k}.f32`);
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
      const values = Float32Array.from((await x.data()) as Float32Array);
      if (this.place === "host") this.host[k] = values;
      else {
        const bytes = new Uint8Array(values.buffer);
        const fd = openSync(this.fileOf(k), "w");
        try {
          for (let done = 0; done < bytes.byteLength; ) done += writeSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done));
        } finally {
          closeSync(fd);
        }
        this.host[k] = new Float32Array(0);
      }
    } finally {
      x.dispose();
    }
  }

  /** Group k's values read back from its file. */
  private readBack(k: number): Float32Array {
    const values = new Float32Array(this.batches[k]! * this.seqlen * this.width);
    const bytes = new Uint8Array(values.buffer);
    const fd = openSync(this.fileOf(k), "r");
    try {
      for (let done = 0; done < bytes.byteLength; ) {
        const got = readSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done), done);
        if (got === 0) throw new Error(`${this.fileOf(k)} is shorter than its activations`);
        done += got;
      }
    } finally {
      closeSync(fd);
    }
    return values;
  }

  /** Group k's activations for one use: `f` gets them on the backend; an upload is freed after. */
  async with<T>(k: number, f: (x: tf.Tensor2D) => T | Promise<T>): Promise<T> {
    const kept = this.device[k];
    if (kept) return f(kept);
    if (!this.host[k]) throw new RangeError(`no activations for group ${k}`);
    const values = this.place === "disk" ? this.readBack(k) : this.host[k]!;
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
    if (this.folder) rmSync(this.folder, { recursive: true, force: true });
  }
}
