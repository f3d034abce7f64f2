/**
 * SparseGPT's pruned levels, made once per run (EvoPress's database). A SparseGPT candidate
 * is costly to make, and in dense mode it needs every linear's Hessian, which for a 7B
 * model is tens of gigabytes. A method whose linears take a known, finite set of
 * sparsities (EvoPress's levels) lets the run prune every linear once at each of them,
 * block by block (one block's Hessians at a time), into files of the run folder; a
 * candidate then reads its linears' levels as it uploads them. The levels are kept in the
 * dtype the run's pruned weights are kept in, so a candidate read from them is exactly the
 * one its Hessians would make, and packed (a bit a weight, then the weights kept), so a
 * level costs about what its kept weights do. Each block's file is written whole (temporary name, then
 * renamed), so a stopped build resumes from the first block it had not finished.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statfsSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { Layout } from "../allocation/allocation.ts";
import { convertInto, encodeFrom } from "../checkpoint/convert.ts";
import type { Checkpoint, StorageDtype } from "../checkpoint/types.ts";
import { UsageError } from "../errors.ts";
import type { HostLinear, WeightSource } from "../model/spec.ts";
import type { DenseStatistics } from "./dense-statistics.ts";
import { sparseGptAtTargets } from "./prune-linear.ts";

interface Entry {
  readonly linear: string;
  /** The pruned-weight count the level prunes: what a candidate's sparsity is matched by. */
  readonly key: string;
  readonly sparsity: number;
  readonly offset: number;
  readonly length: number;
}

const MANIFEST = "manifest.json";
/** How a level is stored; a build of another format is not read (it is built again). */
const FORMAT = "packed-1";

/**
 * A level as stored: one bit per weight, set where its stored bits are not all zero (so a
 * -0 stays -0), padded to whole 8-byte words, then those weights in order. A linear pruned
 * to sparsity s takes about 1/8 + (1 - s) x width bytes a weight instead of width: at 70%
 * in bfloat16, 0.73 bytes instead of 2.
 */
const maskBytesOf = (n: number): number => Math.ceil(n / 64) * 8;

/**
 * Weights of `width` bytes (2 or 4) as whole words, so a pass reads each weight once. The
 * arrays written through it are fresh ones at a word boundary (the values start after the
 * 8-byte-aligned mask), so only an array read may need the aligned copy.
 */
const wordsOf = (bytes: Uint8Array, width: 2 | 4, count: number): Uint16Array | Uint32Array => {
  const aligned = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  return width === 2 ? new Uint16Array(aligned.buffer, aligned.byteOffset, count) : new Uint32Array(aligned.buffer, aligned.byteOffset, count);
};

/** The mask as 32-bit words (bit b of word k is weight 32k + b on a little-endian machine, as the bytes read). */
const maskWords = (packed: Uint8Array, maskBytes: number): Uint32Array => {
  const mask = packed.byteOffset % 4 === 0 ? packed : packed.slice(0, maskBytes);
  return new Uint32Array(mask.buffer, mask.byteOffset, maskBytes / 4);
};

/** A level's weights (encoded, `width` bytes each) as stored. */
export const packLevel = (bytes: Uint8Array, width: 2 | 4): Uint8Array => {
  const n = bytes.length / width;
  if (!Number.isInteger(n)) throw new RangeError(`packLevel: ${bytes.length} bytes are not whole weights of ${width}`);
  const words = wordsOf(bytes, width, n);
  let count = 0;
  for (let i = 0; i < n; i++) if (words[i] !== 0) count++;
  const maskBytes = maskBytesOf(n);
  const packed = new Uint8Array(maskBytes + count * width);
  const mask = maskWords(packed, maskBytes);
  const values = wordsOf(packed.subarray(maskBytes), width, count);
  let at = 0;
  for (let k = 0; k * 32 < n; k++) {
    let bits = 0;
    for (let i = k * 32, end = Math.min(n, i + 32); i < end; i++) {
      const w = words[i]!;
      if (w === 0) continue;
      bits |= 1 << (i & 31);
      values[at++] = w;
    }
    mask[k] = bits;
  }
  return packed;
};

/** The encoded weights a packed level holds, `n` of `width` bytes; `what` names it in errors. */
export const unpackLevel = (packed: Uint8Array, width: 2 | 4, n: number, what: string): Uint8Array => {
  const maskBytes = maskBytesOf(n);
  const damaged = () => new Error(`${what}: a damaged level (${packed.length} bytes do not hold ${n} weights of ${width} bytes); delete the levels folder to build them again`);
  if (packed.length < maskBytes) throw damaged();
  const mask = maskWords(packed, maskBytes);
  let count = 0;
  for (let k = 0; k < mask.length; k++) {
    let bits = mask[k]!;
    // Bits past the last weight are never set.
    if (k * 32 + 32 > n && (n <= k * 32 ? bits !== 0 : bits >>> (n - k * 32) !== 0)) throw damaged();
    bits -= (bits >>> 1) & 0x55555555;
    bits = (bits & 0x33333333) + ((bits >>> 2) & 0x33333333);
    count += (((bits + (bits >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
  }
  if (packed.length !== maskBytes + count * width) throw damaged();
  const out = new Uint8Array(n * width);
  const words = wordsOf(out, width, n);
  const values = wordsOf(packed.subarray(maskBytes), width, count);
  let at = 0;
  for (let k = 0; k < mask.length; k++) {
    // Each set bit, lowest first: the weights in order.
    for (let bits = mask[k]!; bits !== 0; bits &= bits - 1) words[k * 32 + 31 - Math.clz32(bits & -bits)] = values[at++]!;
  }
  return out;
};

export interface LevelsRequest {
  readonly dir: string;
  /** Per layout entry (block-major, as Layout), the sparsities its linear can take. */
  readonly sparsities: readonly (readonly number[])[];
  /** The key of a linear at a sparsity: its pruned-weight count (equal keys prune alike). */
  readonly keyOf: (block: number, linear: string, sparsity: number) => string;
  /** How the method is asked for fewer levels, as the refusal says when they do not fit on disk. */
  readonly fewer?: string;
  /** Free bytes on the disk holding `dir` (the file system's count unless given). */
  readonly freeBytes?: (dir: string) => number;
}

const diskFree = (dir: string): number => {
  const { bavail, bsize } = statfsSync(dir);
  return bavail * bsize;
};

export class LevelDatabase {
  private readonly indexes = new Map<number, Map<string, Entry>>();

  constructor(
    readonly checkpoint: Checkpoint,
    readonly layout: Layout,
    readonly dtype: StorageDtype,
    readonly request: LevelsRequest,
  ) {}

  private get dir(): string {
    return this.request.dir;
  }

  /** Distinct levels (by key) of every linear of a block, in layout order. */
  private levelsOf(block: number): { linear: string; sparsity: number; key: string }[] {
    const out: { linear: string; sparsity: number; key: string }[] = [];
    this.layout.forEach((slot, k) => {
      if (slot.block !== block) return;
      const seen = new Set<string>();
      for (const sparsity of this.request.sparsities[k]!) {
        const key = this.request.keyOf(block, slot.linear, sparsity);
        if (seen.has(key)) continue;
        seen.add(key);
        out.push({ linear: slot.linear, sparsity, key });
      }
    });
    return out;
  }

  /** Bytes the levels take on disk at most (packed: weights that were zero already take less). */
  bytes(): number {
    const width = this.dtype === "F32" ? 4 : 2;
    let total = 0;
    for (let b = 0; b < this.checkpoint.spec.numLayers; b++) {
      for (const level of this.levelsOf(b)) {
        const params = this.layout.find((s) => s.block === b && s.linear === level.linear)!.params;
        total += maskBytesOf(params) + Math.ceil((1 - level.sparsity) * params) * width;
      }
    }
    return total;
  }

  /** What decides the levels: a build of other settings is not resumed. */
  private fingerprint(statistics: DenseStatistics): string {
    const h = createHash("sha256");
    h.update(JSON.stringify({ format: FORMAT, model: this.checkpoint.path, dtype: this.dtype, sparsities: this.request.sparsities, metric: statistics.metric }));
    for (const w of statistics.options.calibration) h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
    return h.digest("hex");
  }

  /**
   * Builds what is missing, block by block, after saying what it costs on disk; refuses
   * when the disk has less room than that. `onLevel(done, total)` follows the build level by
   * level (a 1B model's build is hours): `(0, total)` once the build starts, then after each
   * level of the blocks to build; without it, a line is logged as each block is built.
   */
  async build(statistics: DenseStatistics, log: (line: string) => void = () => {}, onLevel?: (done: number, total: number) => void): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    const fingerprint = this.fingerprint(statistics);
    const manifest = join(this.dir, MANIFEST);
    if (existsSync(manifest) && readFileSync(manifest, "utf8") !== fingerprint) {
      // Levels of other settings: not these. Start over.
      rmSync(this.dir, { recursive: true, force: true });
      mkdirSync(this.dir, { recursive: true });
    }
    writeFileSync(manifest, fingerprint);
    const blocks = this.checkpoint.spec.numLayers;
    const missing = Array.from({ length: blocks }, (_, b) => b).filter((b) => !existsSync(this.indexFile(b)));
    if (missing.length === 0) return;
    const need = this.bytes();
    const free = (this.request.freeBytes ?? diskFree)(this.dir);
    log(`SparseGPT levels: every linear pruned once at each level the search can reach, ${(need / 2 ** 30).toFixed(2)} GiB on disk in ${this.dir} (${missing.length} of ${blocks} blocks to build)`);
    if (free < need * (missing.length / blocks)) {
      throw new UsageError({ problem: `${this.dir}: the SparseGPT levels need ${(need / 2 ** 30).toFixed(1)} GiB on disk and ${(free / 2 ** 30).toFixed(1)} GiB is free; use --mode sequential, ${this.request.fewer ?? "a search space with fewer levels"} or another disk` });
    }
    const total = missing.reduce((sum, b) => sum + this.levelsOf(b).length, 0);
    let done = 0;
    onLevel?.(done, total);
    await statistics.eachBlockWithHessians(async (block, stats) => {
      if (!missing.includes(block)) return;
      const dense = this.checkpoint.readBlock(block);
      const entries: Entry[] = [];
      const file = join(this.dir, `block-${block}.bin`);
      const partial = `${file}.partial`;
      const fd = openSync(partial, "w");
      try {
        let offset = 0;
        // Each linear's Hessian factored once for all its levels (they come linear by linear).
        let current: { linear: string; at: (target: { sparsity: number }) => HostLinear } | undefined;
        for (const level of this.levelsOf(block)) {
          if (current?.linear !== level.linear) {
            current = { linear: level.linear, at: sparseGptAtTargets(dense.linears[level.linear]!, stats.get(level.linear), `block ${block} linear ${level.linear}`, statistics.timings) };
          }
          const pruned = current.at({ sparsity: level.sparsity });
          const bytes = packLevel(encodeFrom(this.dtype, pruned.weight.data, 1, pruned.weight.data.length, false), this.dtype === "F32" ? 4 : 2);
          for (let done = 0; done < bytes.byteLength; ) done += writeSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done));
          entries.push({ linear: level.linear, key: level.key, sparsity: level.sparsity, offset, length: bytes.byteLength });
          offset += bytes.byteLength;
          onLevel?.(++done, total);
        }
      } finally {
        closeSync(fd);
      }
      renameSync(partial, file);
      // The index last: a block counts as built once its index is there.
      writeFileSync(`${this.indexFile(block)}.partial`, JSON.stringify(entries));
      renameSync(`${this.indexFile(block)}.partial`, this.indexFile(block));
      if (!onLevel) log(`  levels of block ${block} built`);
    });
  }

  private indexFile(block: number): string {
    return join(this.dir, `block-${block}.json`);
  }

  private index(block: number): Map<string, Entry> {
    let index = this.indexes.get(block);
    if (!index) {
      const entries = JSON.parse(readFileSync(this.indexFile(block), "utf8")) as Entry[];
      index = new Map(entries.map((e) => [`${e.linear}|${e.key}`, e]));
      this.indexes.set(block, index);
    }
    return index;
  }

  /**
   * The level a candidate's sparsity is: matched by its pruned count, else (rounding in a
   * method's projection) by the nearest level within 1e-9.
   */
  private entry(block: number, linear: string, sparsity: number): Entry | undefined {
    const index = this.index(block);
    const entry = index.get(`${linear}|${this.request.keyOf(block, linear, sparsity)}`);
    if (entry) return entry;
    for (const e of index.values()) if (e.linear === linear && Math.abs(e.sparsity - sparsity) <= 1e-9) return e;
    return undefined;
  }

  /** Whether a linear at this sparsity is one of its levels (else it is pruned some other way). */
  holds(block: number, linear: string, sparsity: number): boolean {
    return this.entry(block, linear, sparsity) !== undefined;
  }

  /**
   * A linear at one of its levels, read from the levels' file when it is uploaded. A
   * candidate's sparsity is matched by its pruned count, else (rounding in a method's
   * projection) by the nearest level within 1e-9.
   */
  source(block: number, linear: string, sparsity: number, shape: readonly number[]): WeightSource {
    const entry = this.entry(block, linear, sparsity);
    if (!entry) throw new RangeError(`block ${block} linear ${linear} at sparsity ${sparsity} is not one of its levels`);
    const file = join(this.dir, `block-${block}.bin`);
    return {
      shape,
      fill: (into) => {
        const bytes = Buffer.allocUnsafeSlow(entry.length);
        const fd = openSync(file, "r");
        try {
          for (let done = 0; done < entry.length; ) {
            const got = readSync(fd, bytes, done, Math.min(1 << 30, entry.length - done), entry.offset + done);
            if (got === 0) throw new Error(`${file} ends before byte ${entry.offset + entry.length}`);
            done += got;
          }
        } finally {
          closeSync(fd);
        }
        const width = this.dtype === "F32" ? 4 : 2;
        const n = shape.reduce((a, b) => a * b, 1);
        const name = `block ${block} ${linear} level`;
        convertInto({ file, name, dtype: this.dtype, rows: 1, cols: n, transposed: false }, unpackLevel(bytes, width, n, `${file} (${name})`), into);
      },
    };
  }
}
