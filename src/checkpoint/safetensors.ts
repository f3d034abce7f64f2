/**
 * Reading and writing safetensors files: an 8-byte little-endian header length N,
 * N bytes of JSON header, then the raw tensor data (offsets relative to byte 8 + N).
 *
 * Opening reads only the header. Tensors of any dtype the format defines are listed
 * (real checkpoints carry integer buffers such as position ids), but only F32, F16 and
 * BF16 can be read: asking for another dtype throws then, not at open, so a file is
 * usable as long as the tensors actually needed are float.
 */
import fs from "node:fs";
import path from "node:path";
import { CheckpointError } from "../errors.ts";
import { writeThroughTemporary } from "../files.ts";
import { openRegularFile, readBoundedUtf8 } from "../reads.ts";
import { bitsPerElement, decodeStorage, encodeStorage, isStorageDtype, storageDtypes } from "./dtype.ts";
import type { StorageDtype } from "./types.ts";

export interface SafetensorsEntry {
  /** Dtype name as written in the header; only StorageDtype names can be read. */
  readonly dtype: string;
  readonly shape: number[];
  /** Absolute byte offsets in `file`, end exclusive. */
  readonly begin: number;
  readonly end: number;
  /** The file holding the bytes (differs between tensors of a sharded checkpoint). */
  readonly file: string;
}

export interface SafetensorsFile {
  /** The file (or, when sharded, the index file) that was opened. */
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: ReadonlyMap<string, SafetensorsEntry>;
  /** Reads exactly this tensor's bytes and converts them to float32. */
  read(name: string): Float32Array;
  /**
   * The tensor's bytes as stored (its dtype, little-endian), or `length` bytes of them from
   * byte `offset`: what streamed weights are kept as until they are converted.
   */
  readBytes(name: string, offset?: number, length?: number): Uint8Array;
  /** readBytes without blocking: the read runs on a thread while the caller computes. */
  readBytesAsync(name: string, offset?: number, length?: number): Promise<Uint8Array>;
  close(): void;
}

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: StorageDtype;
  readonly shape: readonly number[];
  /**
   * The values, or a function giving them when the tensor is written (one tensor in memory
   * at a time), or `bytes`: a function giving the tensor already encoded in its dtype.
   */
  readonly data: Float32Array | (() => Float32Array) | { readonly bytes: () => Uint8Array };
}

/** The reference implementation refuses larger headers; so do we, before allocating them. */
const maxHeaderBytes = 100_000_000;
/** Node's readSync/writeSync take at most 2^31 - 1 bytes per call. */
const ioChunkBytes = 1 << 30;

export const singleFileName = "model.safetensors";
export const indexFileName = "model.safetensors.index.json";

const describeIoError = (e: unknown): string => (e instanceof Error ? e.message : String(e));

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Reads exactly `length` bytes at `position`; fewer available means the file is shorter than it claims. */
function readExactly(fd: number, file: string, into: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < into.byteLength) {
    let got: number;
    try {
      got = fs.readSync(fd, into, done, Math.min(ioChunkBytes, into.byteLength - done), position + done);
    } catch (e) {
      throw new CheckpointError({ file, problem: `cannot read ${what}: ${describeIoError(e)}` });
    }
    if (got === 0) {
      throw new CheckpointError({
        file,
        problem: `truncated file: ${what} needs bytes ${position}..${position + into.byteLength} but the file ends at ${position + done}`,
      });
    }
    done += got;
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.byteLength; ) {
    done += fs.writeSync(fd, bytes, done, Math.min(ioChunkBytes, bytes.byteLength - done));
  }
}

function parseEntry(file: string, name: string, raw: unknown, dataStart: number): SafetensorsEntry {
  const bad = (problem: string): CheckpointError => new CheckpointError({ file, problem: `tensor ${name} ${problem}` });
  if (!isRecord(raw)) throw bad("has a header entry that is not an object");
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== "string" || dtype === "") throw bad(`has no valid dtype (got ${JSON.stringify(dtype) ?? "nothing"})`);
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw bad(`has no valid shape (want an array of non-negative integers, got ${JSON.stringify(shape) ?? "nothing"})`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    throw bad(`has no valid data_offsets (want [begin, end] with begin <= end, got ${JSON.stringify(offsets) ?? "nothing"})`);
  }
  const [relBegin, relEnd] = offsets as [number, number];
  const elements = shape.reduce((a: number, b: number) => a * b, 1);
  if (!Number.isSafeInteger(elements)) throw bad(`has an impossibly large shape [${shape.join(", ")}]`);
  const bits = bitsPerElement(dtype);
  if (bits !== undefined && elements * bits !== (relEnd - relBegin) * 8) {
    throw bad(
      `has data_offsets [${relBegin}, ${relEnd}] spanning ${relEnd - relBegin} bytes, but shape [${shape.join(", ")}] of ${dtype} needs ${(elements * bits) / 8}`,
    );
  }
  return { dtype, shape: shape as number[], begin: dataStart + relBegin, end: dataStart + relEnd, file };
}

function parseMetadata(file: string, raw: unknown): Record<string, string> {
  if (raw === undefined) return {};
  if (!isRecord(raw) || !Object.values(raw).every((v) => typeof v === "string")) {
    throw new CheckpointError({ file, problem: "header __metadata__ must be an object mapping strings to strings" });
  }
  return { ...(raw as Record<string, string>) };
}

function parseHeader(file: string, fd: number, fileSize: number): Pick<SafetensorsFile, "metadata" | "tensors"> {
  if (fileSize < 8) {
    throw new CheckpointError({ file, problem: `truncated file: ${fileSize} bytes, too short for the 8-byte header length` });
  }
  const lengthBytes = new Uint8Array(8);
  readExactly(fd, file, lengthBytes, 0, "the header length");
  const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(fileSize - 8)) {
    throw new CheckpointError({
      file,
      problem: `header length ${headerLength} runs past the end of the file (${fileSize} bytes): truncated or not a safetensors file`,
    });
  }
  const headerBytesCount = Number(headerLength);
  if (headerBytesCount > maxHeaderBytes) {
    throw new CheckpointError({ file, problem: `header of ${headerBytesCount} bytes exceeds the ${maxHeaderBytes}-byte limit` });
  }
  const headerBytes = new Uint8Array(headerBytesCount);
  readExactly(fd, file, headerBytes, 8, "the header");

  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new CheckpointError({ file, problem: `header is not valid UTF-8 JSON (${describeIoError(e)})` });
  }
  if (!isRecord(header)) throw new CheckpointError({ file, problem: "header JSON is not an object" });

  const dataStart = 8 + headerBytesCount;
  const metadata = parseMetadata(file, header.__metadata__);
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const entry = parseEntry(file, name, raw, dataStart);
    if (entry.end > fileSize) {
      throw new CheckpointError({
        file,
        problem: `truncated file: tensor ${name} ends at byte ${entry.end} but the file has ${fileSize} bytes`,
      });
    }
    tensors.set(name, entry);
  }

  const byBegin = [...tensors].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < byBegin.length; i++) {
    const [prevName, prev] = byBegin[i - 1];
    const [name, entry] = byBegin[i];
    if (entry.begin < prev.end) {
      throw new CheckpointError({
        file,
        problem: `tensors ${prevName} and ${name} overlap (bytes ${prev.begin}..${prev.end} and ${entry.begin}..${entry.end})`,
      });
    }
  }
  return { metadata, tensors };
}

const isHostLittleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Reads one tensor of an open file descriptor as float32. */
function readTensor(fd: number, name: string, entry: SafetensorsEntry): Float32Array {
  const { file, dtype } = entry;
  if (!isStorageDtype(dtype)) {
    throw new CheckpointError({
      file,
      problem: `tensor ${name} has unsupported dtype ${dtype}; evosparse reads ${storageDtypes.join(", ")}`,
    });
  }
  const byteCount = entry.end - entry.begin;
  let bytes: Uint8Array;
  let f32: Float32Array | undefined;
  try {
    // F32 lands directly in the result's buffer: no second copy of a large tensor.
    if (dtype === "F32") {
      f32 = new Float32Array(byteCount / 4);
      bytes = new Uint8Array(f32.buffer);
    } else {
      bytes = new Uint8Array(byteCount);
    }
  } catch {
    throw new CheckpointError({ file, problem: `tensor ${name} (${byteCount} bytes) is too large to hold in memory` });
  }
  readExactly(fd, file, bytes, entry.begin, `tensor ${name}`);
  return f32 !== undefined && isHostLittleEndian ? f32 : decodeStorage(dtype, bytes);
}

/** The byte range [begin, begin + length) of a tensor, checked against it. */
function byteRange(file: string, name: string, entry: SafetensorsEntry, offset = 0, length = entry.end - entry.begin - offset): { position: number; length: number } {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || entry.begin + offset + length > entry.end) {
    throw new CheckpointError({ file, problem: `cannot read bytes ${offset}..${offset + length} of tensor ${name}, which has ${entry.end - entry.begin}` });
  }
  return { position: entry.begin + offset, length };
}

function readBytesSync(fd: number, name: string, entry: SafetensorsEntry, offset?: number, length?: number): Uint8Array {
  const range = byteRange(entry.file, name, entry, offset, length);
  const bytes = Buffer.allocUnsafeSlow(range.length);
  readExactly(fd, entry.file, bytes, range.position, `tensor ${name}`);
  return bytes;
}

/** The same read on libuv's thread pool, in chunks of at most 1 GiB as readExactly does. */
async function readBytesAsync(fd: number, name: string, entry: SafetensorsEntry, offset?: number, length?: number): Promise<Uint8Array> {
  const range = byteRange(entry.file, name, entry, offset, length);
  const bytes = Buffer.allocUnsafeSlow(range.length);
  let done = 0;
  while (done < bytes.byteLength) {
    const got = await new Promise<number>((resolve, reject) =>
      fs.read(fd, bytes, done, Math.min(ioChunkBytes, bytes.byteLength - done), range.position + done, (e, n) => (e ? reject(e) : resolve(n))),
    ).catch((e: unknown) => {
      throw new CheckpointError({ file: entry.file, problem: `cannot read tensor ${name}: ${describeIoError(e)}` });
    });
    if (got === 0) {
      throw new CheckpointError({ file: entry.file, problem: `truncated file: tensor ${name} needs bytes ${range.position}..${range.position + range.length} but the file ends at ${range.position + done}` });
    }
    done += got;
  }
  return bytes;
}

function openFd(file: string): { fd: number; size: number } {
  // Only a regular file: a named pipe would block the open, a device never ends.
  return openRegularFile(file, { error: (problem) => new CheckpointError({ file, problem }) });
}

/** Opens a safetensors file, reading and validating its header only. */
export function openSafetensors(file: string): SafetensorsFile {
  const opened = openFd(file);
  let fd = opened.fd;
  const size = opened.size;
  let parsed: Pick<SafetensorsFile, "metadata" | "tensors">;
  try {
    parsed = parseHeader(file, fd, size);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  let open = true;
  // Reads on libuv's thread pool may still be running when the file is closed (a pass that
  // failed leaves its read-ahead behind). Closing the descriptor under them would fail them
  // with EBADF, or worse let them read another file that reuses the number: the close
  // waits for the last of them.
  let reading = 0;
  const closeWhenIdle = (): void => {
    if (!open && reading === 0 && fd >= 0) {
      fs.closeSync(fd);
      fd = -1;
    }
  };
  return {
    path: file,
    metadata: parsed.metadata,
    tensors: parsed.tensors,
    read(name: string): Float32Array {
      const entry = parsed.tensors.get(name);
      if (entry === undefined) throw new CheckpointError({ file, problem: `no tensor named ${name}` });
      if (!open) throw new CheckpointError({ file, problem: `cannot read tensor ${name}: the file was closed` });
      return readTensor(fd, name, entry);
    },
    readBytes(name: string, offset?: number, length?: number): Uint8Array {
      const entry = parsed.tensors.get(name);
      if (entry === undefined) throw new CheckpointError({ file, problem: `no tensor named ${name}` });
      if (!open) throw new CheckpointError({ file, problem: `cannot read tensor ${name}: the file was closed` });
      return readBytesSync(fd, name, entry, offset, length);
    },
    readBytesAsync(name: string, offset?: number, length?: number): Promise<Uint8Array> {
      const entry = parsed.tensors.get(name);
      if (entry === undefined) return Promise.reject(new CheckpointError({ file, problem: `no tensor named ${name}` }));
      if (!open) return Promise.reject(new CheckpointError({ file, problem: `cannot read tensor ${name}: the file was closed` }));
      reading++;
      return readBytesAsync(fd, name, entry, offset, length).finally(() => {
        reading--;
        closeWhenIdle();
      });
    },
    close(): void {
      open = false;
      closeWhenIdle();
    },
  };
}

/** Writes to a temporary sibling and renames (the shared write layer), so readers never see a half-written file. */
function writeAtomically(file: string, writeContent: (fd: number) => void): void {
  writeThroughTemporary(file, writeContent, { sync: true, error: (problem) => new CheckpointError({ file, problem }) });
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

function checkTensorsToWrite(file: string, tensors: readonly TensorToWrite[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    const bad = (problem: string): CheckpointError => new CheckpointError({ file, problem: `cannot write tensor ${t.name}: ${problem}` });
    if (t.name === "__metadata__" || seen.has(t.name)) throw bad("the name is reserved or repeated");
    seen.add(t.name);
    const dtype: string = t.dtype;
    if (!isStorageDtype(dtype)) throw bad(`unsupported dtype ${dtype}`);
    if (!t.shape.every((d) => isCount(d))) throw bad(`invalid shape [${t.shape.join(", ")}]`);
    const elements = t.shape.reduce((a, b) => a * b, 1);
    if (t.data instanceof Float32Array && elements !== t.data.length) throw bad(`shape [${t.shape.join(", ")}] needs ${elements} values but ${t.data.length} were given`);
  }
}

const storedBytes = (t: TensorToWrite): number => t.shape.reduce((a, b) => a * b, 1) * (bitsPerElement(t.dtype)! / 8);

/** A tensor's bytes, produced now when they were given as a function, checked against its shape. */
const bytesOf = (file: string, t: TensorToWrite): Uint8Array => {
  const data = t.data;
  const bytes = data instanceof Float32Array ? encodeStorage(t.dtype, data) : typeof data === "function" ? encodeStorage(t.dtype, data()) : data.bytes();
  if (bytes.byteLength !== storedBytes(t)) {
    throw new CheckpointError({ file, problem: `cannot write tensor ${t.name}: shape [${t.shape.join(", ")}] of ${t.dtype} needs ${storedBytes(t)} bytes but ${bytes.byteLength} were given` });
  }
  return bytes;
};

/**
 * Writes tensors in name order with a space-padded header, as the reference writer
 * does; each tensor is converted and written on its own, so memory stays at one tensor.
 */
export function writeSafetensors(file: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): void {
  checkTensorsToWrite(file, tensors);
  const ordered = [...tensors].sort(byName);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of ordered) {
    const size = storedBytes(t);
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20);
  padded.set(json);
  const lengthBytes = new Uint8Array(8);
  new DataView(lengthBytes.buffer).setBigUint64(0, BigInt(padded.byteLength), true);

  writeAtomically(file, (fd) => {
    writeAll(fd, lengthBytes);
    writeAll(fd, padded);
    for (const t of ordered) writeAll(fd, bytesOf(file, t));
  });
}

function readIndex(indexPath: string): { metadata: Record<string, string>; weightMap: Map<string, string> } {
  const text = readBoundedUtf8(indexPath, "index", { error: (problem) => new CheckpointError({ file: indexPath, problem }) });
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError({ file: indexPath, problem: `index is not valid JSON (${describeIoError(e)})` });
  }
  if (!isRecord(index) || !isRecord(index.weight_map)) {
    throw new CheckpointError({ file: indexPath, problem: "index has no weight_map object" });
  }
  const weightMap = new Map<string, string>();
  for (const [name, shard] of Object.entries(index.weight_map)) {
    if (typeof shard !== "string" || shard === "") {
      throw new CheckpointError({ file: indexPath, problem: `weight_map entry ${name} does not name a shard file` });
    }
    // A shard is a file of the model's own folder: an absolute path or one climbing out of
    // the folder would read whatever file the index names.
    if (path.isAbsolute(shard) || shard.split(/[\\/]/).some((part) => part === ".." || part === "") || shard.includes("\0")) {
      throw new CheckpointError({ file: indexPath, problem: `weight_map entry ${name} names the shard ${JSON.stringify(shard)} outside the model's folder; shards must be files of the folder itself` });
    }
    weightMap.set(name, shard);
  }
  // Hugging Face writes numbers here (total_size); the interface exposes text.
  const metadata: Record<string, string> = {};
  if (isRecord(index.metadata)) {
    for (const [k, v] of Object.entries(index.metadata)) metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return { metadata, weightMap };
}

/**
 * Opens a sharded checkpoint from its index. Every shard's header is read and checked
 * now, so a missing tensor or shard is reported at open rather than mid-run. Only the
 * tensors the weight_map lists are exposed.
 */
export function openShardedSafetensors(indexPath: string): SafetensorsFile {
  const { metadata, weightMap } = readIndex(indexPath);
  const dir = path.dirname(indexPath);
  const shards = new Map<string, SafetensorsFile>();
  const closeAll = (): void => {
    for (const shard of shards.values()) shard.close();
  };
  const tensors = new Map<string, SafetensorsEntry>();
  const shardOf = new Map<string, SafetensorsFile>();
  try {
    for (const [name, shardName] of weightMap) {
      let shard = shards.get(shardName);
      if (shard === undefined) {
        const shardPath = path.resolve(dir, shardName);
        if (!fs.existsSync(shardPath)) {
          throw new CheckpointError({ file: indexPath, problem: `weight_map puts ${name} in shard ${shardName}, which does not exist` });
        }
        shard = openSafetensors(shardPath);
        shards.set(shardName, shard);
      }
      const entry = shard.tensors.get(name);
      if (entry === undefined) {
        throw new CheckpointError({ file: indexPath, problem: `weight_map puts ${name} in shard ${shardName}, which has no such tensor` });
      }
      tensors.set(name, entry);
      shardOf.set(name, shard);
    }
  } catch (e) {
    closeAll();
    throw e;
  }
  const shardFor = (name: string): SafetensorsFile => {
    const shard = shardOf.get(name);
    if (shard === undefined) throw new CheckpointError({ file: indexPath, problem: `no tensor named ${name}` });
    return shard;
  };
  return {
    path: indexPath,
    metadata,
    tensors,
    read(name: string): Float32Array {
      return shardFor(name).read(name);
    },
    readBytes(name: string, offset?: number, length?: number): Uint8Array {
      return shardFor(name).readBytes(name, offset, length);
    },
    readBytesAsync(name: string, offset?: number, length?: number): Promise<Uint8Array> {
      const shard = shardOf.get(name);
      if (shard === undefined) return Promise.reject(new CheckpointError({ file: indexPath, problem: `no tensor named ${name}` }));
      return shard.readBytesAsync(name, offset, length);
    },
    close: closeAll,
  };
}

/** Opens `model.safetensors`, or else the sharded `model.safetensors.index.json`, in a folder. */
export function openSafetensorsFolder(dir: string): SafetensorsFile {
  const single = path.join(dir, singleFileName);
  if (fs.existsSync(single)) return openSafetensors(single);
  const index = path.join(dir, indexFileName);
  if (fs.existsSync(index)) return openShardedSafetensors(index);
  throw new CheckpointError({ file: dir, problem: `found neither ${singleFileName} nor ${indexFileName}` });
}

/**
 * Writes a sharded checkpoint in the Hugging Face layout (model-0000i-of-0000n.safetensors
 * plus the index), filling shards in the given order up to maxShardBytes of data each;
 * a tensor larger than that gets a shard of its own. The index is written last, so it
 * only ever names complete shards. Returns the index path.
 */
export function writeShardedSafetensors(
  dir: string,
  tensors: readonly TensorToWrite[],
  maxShardBytes: number,
  metadata?: Record<string, string>,
): string {
  const indexPath = path.join(dir, indexFileName);
  checkTensorsToWrite(indexPath, tensors);
  const groups: TensorToWrite[][] = [];
  let current: TensorToWrite[] = [];
  let currentBytes = 0;
  for (const t of tensors) {
    const size = storedBytes(t);
    if (current.length > 0 && currentBytes + size > maxShardBytes) {
      groups.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(t);
    currentBytes += size;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);

  const pad = (i: number): string => String(i).padStart(5, "0");
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  groups.forEach((group, i) => {
    const shardName = `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`;
    writeSafetensors(path.join(dir, shardName), group, metadata);
    for (const t of group) {
      weightMap[t.name] = shardName;
      totalSize += storedBytes(t);
    }
  });
  const sortedMap = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const indexText = JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2) + "\n";
  writeAtomically(indexPath, (fd) => writeAll(fd, new TextEncoder().encode(indexText)));
  return indexPath;
}
