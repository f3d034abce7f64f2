/**
 * SparseGPT's pruned levels (EvoPress's database), made as a search first reaches them. A
 * SparseGPT candidate is costly to make, and in dense mode it needs every linear's
 * Hessian, which for a 7B model is tens of gigabytes. A method whose linears take a known,
 * finite set of sparsities (EvoPress's levels) lets the run keep, instead, what SparseGPT
 * derives from each Hessian whatever it prunes to: its factor (sparseGptFactor), one per
 * linear input (q, k and v share one, as do gate and up), stored block by block in the run
 * folder before the search. A level is then pruned from its factor the first time a
 * candidate asks for it, and kept as a file: a search reaches a fraction of the levels (a
 * fifth to a quarter on the embedded model at 200k tokens), so most are never made, and a
 * 1B model's search starts after minutes of factoring instead of hours of pruning every
 * level. The levels are kept in the dtype the run's pruned weights are kept in, so a
 * candidate read from them is exactly the one its Hessians would make, and packed (a bit a
 * weight, then the weights kept), so a level costs about what its kept weights do. Every
 * file is written whole (temporary name, then renamed): a stopped factoring resumes from
 * the first block it had not finished, and worker threads making the same level at once
 * each write the same bytes (queue workers, on other machines, prune from Hessians of
 * their own instead).
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statfsSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { Layout } from "../allocation/allocation.ts";
import { convertInto, encodeFrom } from "../checkpoint/convert.ts";
import type { Checkpoint, StorageDtype } from "../checkpoint/types.ts";
import { DataError, UsageError } from "../errors.ts";
import { formatBytes } from "../memory/plan.ts";
import { isHostTensor, linearShapes, type ModelSpec, type WeightSource } from "../model/spec.ts";
import type { DenseStatistics } from "./dense-statistics.ts";
import type { Shape2 } from "./masks.ts";
import { sparseGptFactor, sparseGptPrune, type SparseGptFactor } from "./sparsegpt.ts";
import { timed } from "./timings.ts";

/** A level of one linear: the sparsity it prunes to, and its place in the linear's list (its file). */
interface Level {
  readonly index: number;
  /** The pruned-weight count the level prunes: what a candidate's sparsity is matched by. */
  readonly key: string;
  readonly sparsity: number;
}

/** A stored factor: the linears whose input it is, and what the solve needs beside the matrix. */
interface FactorEntry {
  readonly linears: readonly string[];
  readonly file: string;
  readonly inFeatures: number;
  readonly damping: number;
  readonly dead: readonly number[];
}

const MANIFEST = "manifest.json";
/** How the levels are stored; a folder of another format is not read (it is made again). */
const FORMAT = "factors-1";

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
  /** How the method is asked for fewer levels, as the warning says when they may not fit on disk. */
  readonly fewer?: string;
  /** Free bytes on the disk holding `dir` (the file system's count unless given). */
  readonly freeBytes?: (dir: string) => number;
}

const diskFree = (dir: string): number => {
  const { bavail, bsize } = statfsSync(dir);
  return bavail * bsize;
};

const GiB = 2 ** 30;

/** Values an upper factor of `n` inputs stores: its upper triangle, the diagonal included. */
const triangleLength = (n: number): number => (n * (n + 1)) / 2;

/** A name beside `file` no other process or thread writes to. */
const partialOf = (file: string): string => `${file}.${process.pid}-${Math.random().toString(36).slice(2)}.partial`;

/**
 * Writes a row-major [n, n] upper factor as its upper triangle, row by row (below it is
 * zero), whole (temporary name, then renamed). Straight from the factor: a 7B model's
 * widest is nearly a gigabyte, and a copy of its triangle would be half that again.
 */
export const writeFactorFile = (file: string, upper: Float64Array, n: number): void => {
  const partial = partialOf(file);
  const fd = openSync(partial, "w");
  try {
    for (let i = 0; i < n; i++) {
      const row = new Uint8Array(upper.buffer, upper.byteOffset + (i * n + i) * 8, (n - i) * 8);
      for (let done = 0; done < row.length; ) done += writeSync(fd, row, done, row.length - done);
    }
  } catch (error) {
    closeSync(fd);
    rmSync(partial, { force: true });
    throw error;
  }
  closeSync(fd);
  renameSync(partial, file);
};

/** The row-major [n, n] factor a file written by writeFactorFile holds, each row read into its place. */
export const readFactorFile = (file: string, n: number): Float64Array => {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    if (size !== triangleLength(n) * 8) {
      throw new DataError({ file, problem: `a damaged factor (${size} bytes where ${n} inputs take ${triangleLength(n) * 8}); delete the levels folder to make them again` });
    }
    const out = new Float64Array(n * n);
    let position = 0;
    for (let i = 0; i < n; i++) {
      const row = new Uint8Array(out.buffer, (i * n + i) * 8, (n - i) * 8);
      for (let done = 0; done < row.length; ) {
        const got = readSync(fd, row, done, row.length - done, position + done);
        if (got === 0) throw new DataError({ file, problem: `ends before byte ${position + row.length}; delete the levels folder to make them again` });
        done += got;
      }
      position += row.length;
    }
    return out;
  } finally {
    closeSync(fd);
  }
};

/**
 * The linears of a block that read one input, as the calibration pass finds them (q, k and
 * v; gate and up): what the disk estimate counts one factor for. The build itself shares a
 * factor between linears whose statistics are one object, whatever this says.
 */
const sharedInputs = (spec: ModelSpec, names: readonly string[]): string[][] => {
  const r = spec.roles;
  const groups = [[r.q, r.k, r.v], [r.gate, r.up]].map((g) => g.filter((n): n is string => n !== undefined && names.includes(n)));
  const grouped = new Set(groups.flat());
  return [...groups.filter((g) => g.length > 0), ...names.filter((n) => !grouped.has(n)).map((n) => [n])];
};

/** Writes a whole file under a temporary name, then renames it: readers never see part of one. */
const writeWhole = (file: string, bytes: Uint8Array): void => {
  const partial = partialOf(file);
  try {
    writeFileSync(partial, bytes);
  } catch (error) {
    // A full disk leaves no part of a file behind.
    rmSync(partial, { force: true });
    throw error;
  }
  renameSync(partial, file);
};

const isFactorEntry = (e: unknown): e is FactorEntry => {
  const f = e as FactorEntry;
  return (
    typeof f === "object" && f !== null && Array.isArray(f.linears) && f.linears.every((l) => typeof l === "string") &&
    typeof f.file === "string" && /^block-\d+-[\w.-]+\.factor$/.test(f.file) && Number.isInteger(f.inFeatures) && f.inFeatures > 0 &&
    Number.isFinite(f.damping) && Array.isArray(f.dead) && f.dead.every((i) => Number.isInteger(i) && i >= 0 && i < f.inFeatures)
  );
};

/** A block's factor index, as build wrote it; anything else is refused in one line. */
const readFactorIndex = (file: string): FactorEntry[] => {
  let entries: unknown;
  try {
    entries = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    entries = undefined;
  }
  if (!Array.isArray(entries) || !entries.every(isFactorEntry)) throw new DataError({ file, problem: "not a factor index of the levels; delete the levels folder to make them again" });
  return entries;
};

export class LevelDatabase {
  private readonly factorIndexes = new Map<number, readonly FactorEntry[]>();
  private readonly levelLists = new Map<string, readonly Level[]>();

  constructor(
    readonly checkpoint: Checkpoint,
    readonly layout: Layout,
    readonly dtype: StorageDtype,
    readonly request: LevelsRequest,
  ) {}

  private get dir(): string {
    return this.request.dir;
  }

  private get width(): 2 | 4 {
    return this.dtype === "F32" ? 4 : 2;
  }

  /** The distinct levels (by key) of a linear, in the order its sparsities are listed. */
  private levelsOf(block: number, linear: string): readonly Level[] {
    const id = `${block}|${linear}`;
    let list = this.levelLists.get(id);
    if (!list) {
      const k = this.layout.findIndex((slot) => slot.block === block && slot.linear === linear);
      const out: Level[] = [];
      const seen = new Set<string>();
      for (const sparsity of k < 0 ? [] : this.request.sparsities[k]!) {
        const key = this.request.keyOf(block, linear, sparsity);
        if (seen.has(key)) continue;
        seen.add(key);
        out.push({ index: out.length, key, sparsity });
      }
      this.levelLists.set(id, (list = out));
    }
    return list;
  }

  private linearsOf(block: number): string[] {
    return this.layout.filter((slot) => slot.block === block).map((slot) => slot.linear);
  }

  /** Bytes every level would take on disk (packed: weights that were zero already take less); a search makes a fraction of them. */
  bytes(): number {
    let total = 0;
    for (const slot of this.layout) {
      for (const level of this.levelsOf(slot.block, slot.linear)) total += maskBytesOf(slot.params) + Math.ceil((1 - level.sparsity) * slot.params) * this.width;
    }
    return total;
  }

  /** Bytes the factors of these blocks take on disk: a float64 upper triangle an input. */
  factorBytes(blocks: readonly number[] = Array.from({ length: this.checkpoint.spec.numLayers }, (_, b) => b)): number {
    const spec = this.checkpoint.spec;
    let total = 0;
    for (const b of blocks) {
      const shapes = linearShapes(spec, b);
      for (const group of sharedInputs(spec, this.linearsOf(b))) total += triangleLength(shapes[group[0]!]![0]) * 8;
    }
    return total;
  }

  /** What decides the levels: a folder made with other settings is not read. */
  private fingerprint(statistics: DenseStatistics): string {
    const h = createHash("sha256");
    h.update(JSON.stringify({ format: FORMAT, model: this.checkpoint.path, dtype: this.dtype, sparsities: this.request.sparsities, metric: statistics.metric }));
    for (const w of statistics.options.calibration) h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
    return h.digest("hex");
  }

  /**
   * Factors what is missing, block by block, after saying what it costs on disk; refuses
   * when the disk has less room than the factors take, and says so when it may have less
   * than the levels could. `onFactor(done, total)` follows it linear by linear (a 1B
   * model's is minutes): `(0, total)` once it starts, then as each linear's factor is
   * stored; without it, a line is logged as each block is factored.
   */
  async build(statistics: DenseStatistics, log: (line: string) => void = () => {}, onFactor?: (done: number, total: number) => void): Promise<void> {
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
    const factors = this.factorBytes(missing);
    const levels = this.bytes();
    const free = (this.request.freeBytes ?? diskFree)(this.dir);
    log(
      `SparseGPT levels: each linear pruned at a level when a candidate first asks for it, from its Hessian's factor; ` +
        `factors ${formatBytes(factors)} now (${missing.length} of ${blocks} blocks to factor), levels up to ${formatBytes(levels)} as the search reaches them, in ${this.dir}`,
    );
    if (free < factors) {
      throw new UsageError({ problem: `${this.dir}: the SparseGPT factors need ${(factors / GiB).toFixed(1)} GiB on disk and ${(free / GiB).toFixed(1)} GiB is free; use --mode sequential or another disk` });
    }
    if (free < factors + levels) {
      log(
        `  ${(free / GiB).toFixed(1)} GiB is free: if the search reaches more levels than fit, those that do not are pruned again each time a candidate asks for them ` +
          `(the same weights, slower); ${this.request.fewer ?? "a search space with fewer levels"} asks for fewer`,
      );
    }
    const total = missing.reduce((n, b) => n + this.linearsOf(b).length, 0);
    let done = 0;
    onFactor?.(done, total);
    await statistics.eachBlockWithHessians(async (block, stats) => {
      if (!missing.includes(block)) return;
      const shapes = linearShapes(this.checkpoint.spec, block);
      const entries: FactorEntry[] = [];
      const byInput = new Map<unknown, { linears: string[]; entry: Omit<FactorEntry, "linears"> }>();
      for (const linear of this.linearsOf(block)) {
        const input = stats.get(linear);
        const known = byInput.get(input);
        if (known) {
          known.linears.push(linear);
        } else {
          const source = `block ${block} linear ${linear}`;
          const hessian = input?.hessian;
          if (!hessian) throw new Error(`${source}: SparseGPT needs the input Hessian`);
          const inFeatures = shapes[linear]![0];
          // The copy handed over is consumed: the factorisation makes none of its own.
          const factor = timed(statistics.timings, "masking", () => sparseGptFactor(hessian.hessian(), inFeatures, { source, consume: { hessianAgain: () => hessian.hessian() } }));
          const file = `block-${block}-${linear}.factor`;
          writeFactorFile(join(this.dir, file), factor.upper, inFeatures);
          const linears = [linear];
          byInput.set(input, { linears, entry: { file, inFeatures, damping: factor.damping, dead: factor.dead } });
        }
        onFactor?.(++done, total);
      }
      for (const { linears, entry } of byInput.values()) entries.push({ linears, ...entry });
      // The index last: a block counts as factored once its index is there.
      writeWhole(this.indexFile(block), new TextEncoder().encode(JSON.stringify(entries)));
      if (!onFactor) log(`  block ${block} factored`);
    });
  }

  private indexFile(block: number): string {
    return join(this.dir, `block-${block}.json`);
  }

  private levelFile(block: number, linear: string, level: Level): string {
    return join(this.dir, `block-${block}`, `${linear}-${level.index}.level`);
  }

  private factorOf(block: number, linear: string): FactorEntry {
    let index = this.factorIndexes.get(block);
    if (!index) {
      const file = this.indexFile(block);
      if (!existsSync(file)) throw new Error(`${file} is missing: the levels' factors are made before the search (prepareLevels)`);
      this.factorIndexes.set(block, (index = readFactorIndex(file)));
    }
    const entry = index.find((e) => e.linears.includes(linear));
    if (!entry) throw new DataError({ file: this.indexFile(block), problem: `no factor for linear ${linear}; delete the levels folder to make them again` });
    return entry;
  }

  /** A linear's factor, read back exactly as it was made. */
  private readFactor(block: number, linear: string): SparseGptFactor {
    const entry = this.factorOf(block, linear);
    return { inFeatures: entry.inFeatures, upper: readFactorFile(join(this.dir, entry.file), entry.inFeatures), damping: entry.damping, dead: entry.dead };
  }

  /**
   * A level pruned from its factor and stored for the next candidate that asks. A level
   * that cannot be stored (a full disk) is still this candidate's: it is pruned again when
   * asked for again.
   */
  private make(block: number, linear: string, level: Level, shape: readonly number[], file: string): Uint8Array {
    const factor = this.readFactor(block, linear);
    const dense = this.checkpoint.readBlockSource(block).linears[linear]!.weight;
    const weight = isHostTensor(dense) ? dense.data : new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (!isHostTensor(dense)) dense.fill(weight);
    const pruned = sparseGptPrune(weight, shape as unknown as Shape2, factor, { sparsity: level.sparsity }, { threshold: "exact", source: `block ${block} linear ${linear}` });
    const packed = packLevel(encodeFrom(this.dtype, pruned.weight, 1, pruned.weight.length, false), this.width);
    try {
      mkdirSync(join(this.dir, `block-${block}`), { recursive: true });
      writeWhole(file, packed);
    } catch {
      // Not stored (no room): this candidate has its level all the same.
    }
    return packed;
  }

  /**
   * The level a candidate's sparsity is: matched by its pruned count, else (rounding in a
   * method's projection) by the nearest level within 1e-9.
   */
  private entry(block: number, linear: string, sparsity: number): Level | undefined {
    const levels = this.levelsOf(block, linear);
    const key = this.request.keyOf(block, linear, sparsity);
    return levels.find((l) => l.key === key) ?? levels.find((l) => Math.abs(l.sparsity - sparsity) <= 1e-9);
  }

  /** Whether a linear at this sparsity is one of its levels (else it is pruned some other way). */
  holds(block: number, linear: string, sparsity: number): boolean {
    return this.entry(block, linear, sparsity) !== undefined;
  }

  /**
   * A linear at one of its levels, read when it is uploaded: from the level's file, or
   * pruned from the linear's factor the first time any candidate asks for it.
   */
  source(block: number, linear: string, sparsity: number, shape: readonly number[]): WeightSource {
    const level = this.entry(block, linear, sparsity);
    if (!level) throw new RangeError(`block ${block} linear ${linear} at sparsity ${sparsity} is not one of its levels`);
    const file = this.levelFile(block, linear, level);
    return {
      shape,
      fill: (into) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const name = `block ${block} ${linear} level`;
        const packed = existsSync(file) ? readFileSync(file) : this.make(block, linear, level, shape, file);
        convertInto({ file, name, dtype: this.dtype, rows: 1, cols: n, transposed: false }, unpackLevel(packed, this.width, n, `${file} (${name})`), into);
      },
    };
  }
}
