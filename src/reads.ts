/**
 * The read layer every input file goes through: only regular files are read (a named pipe
 * would block, a device such as /dev/zero never ends), and each kind of file has a size
 * limit fitting what it is, checked from the file's size before a byte is read, so a wrong
 * path costs one line instead of all the machine's memory.
 */
import { createHash } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { DataError } from "./errors.ts";
import { describeKind, type EntryKind } from "./files.ts";

const MiB = 2 ** 20;

/** Size limits per kind of file: far above any real one, far below what would exhaust memory. */
export const READ_LIMITS = {
  /** A model's config.json. */
  config: 16 * MiB,
  /** A sharded checkpoint's model.safetensors.index.json. */
  index: 64 * MiB,
  /** A tokenizer.json (the largest public ones hold about 30 MiB). */
  tokenizer: 512 * MiB,
  /** A llama2.c tokenizer.bin. */
  tokenizerBin: 256 * MiB,
  /** An allocation CSV: one short row per linear. */
  allocation: 64 * MiB,
  /** A search-space JSON file. */
  space: 4 * MiB,
  /** A run's saved state (settings, engine state, summary, training state). */
  state: 256 * MiB,
  /** Small records evosparse writes for itself (output markers, locks). */
  record: 1 * MiB,
  /**
   * A text read whole (evaluation, calibration, training text). V8 holds strings of at
   * most 2^29 - 24 characters, so a larger text could not be held as one string anyway.
   */
  text: 512 * MiB,
} as const;

export type ReadKind = keyof typeof READ_LIMITS;

export const formatSize = (bytes: number): string => (bytes >= MiB ? `${(bytes / MiB).toFixed(bytes >= 10 * MiB ? 0 : 1)} MiB` : `${bytes} bytes`);

const WHAT: Record<ReadKind, string> = {
  config: "a config.json",
  index: "a sharded checkpoint's index",
  tokenizer: "a tokenizer.json",
  tokenizerBin: "a tokenizer.bin",
  allocation: "an allocation CSV",
  space: "a search-space file",
  state: "a saved run state",
  record: "this record",
  text: "a text read whole",
};

export interface ReadOptions {
  /** The error to throw, from the problem in words (default: a DataError naming the file). */
  readonly error?: (problem: string) => Error;
  /** Called with the file's size before anything is read; may throw to refuse it. */
  readonly checkSize?: (size: number) => void;
}

/** The stat mode's kind, for messages about what is not a regular file. */
const kindOfMode = (mode: number): EntryKind => {
  const type = mode & constants.S_IFMT;
  return type === constants.S_IFDIR ? "folder"
    : type === constants.S_IFIFO ? "fifo"
    : type === constants.S_IFSOCK ? "socket"
    : type === constants.S_IFCHR ? "character device"
    : type === constants.S_IFBLK ? "block device"
    : "file";
};

const describeOpenError = (e: unknown): string => {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case "ENOENT":
      return "no such file";
    case "EISDIR":
      return "is a folder, not a file";
    case "EACCES":
    case "EPERM":
      return "cannot be read (permission denied)";
    case "ENXIO":
      return "is a socket or device without a reader, not a regular file";
    default:
      return `cannot be read (${code ?? (e as Error).message})`;
  }
};

/**
 * Opens `file` for reading without blocking (a named pipe with no writer would otherwise
 * hang the open) and checks that it is a regular file. Returns the descriptor and size.
 */
export const openRegularFile = (file: string, options: ReadOptions = {}): { fd: number; size: number } => {
  const fail = options.error ?? ((problem: string) => new DataError({ file, problem }));
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw fail(describeOpenError(e));
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) {
      const kind = kindOfMode(stat.mode);
      throw fail(kind === "folder" ? "is a folder, not a file" : `is ${describeKind(kind)}, not a regular file; evosparse reads only regular files`);
    }
    return { fd, size: stat.size };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
};

/** Reads up to `length` bytes from position 0; fewer when the file is shorter. */
const readFrom = (fd: number, length: number): Buffer => {
  const buffer = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const got = readSync(fd, buffer, done, length - done, done);
    if (got === 0) break;
    done += got;
  }
  return buffer.subarray(0, done);
};

/**
 * The whole of a regular file of the given kind, or an error naming the file: not a
 * regular file, or larger than that kind's limit (decided from its size, before reading).
 */
export const readBounded = (file: string, kind: ReadKind, options: ReadOptions = {}): Buffer => {
  const fail = options.error ?? ((problem: string) => new DataError({ file, problem }));
  const { fd, size } = openRegularFile(file, options);
  try {
    const limit = READ_LIMITS[kind];
    if (size > limit) throw fail(`is ${formatSize(size)}, more than ${WHAT[kind]} may be (${formatSize(limit)}); is this the file you meant?`);
    options.checkSize?.(size);
    // One byte more than the size says, so a file that grew while it was read is noticed.
    const bytes = readFrom(fd, Math.min(size, limit) + 1);
    if (bytes.length > limit) throw fail(`grew past ${formatSize(limit)} while it was read`);
    return bytes;
  } catch (e) {
    if (e instanceof Error && "_tag" in e) throw e;
    throw fail(`cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  } finally {
    closeSync(fd);
  }
};

/** `readBounded` decoded as UTF-8 (for JSON and CSV, whose parsers report bad content). */
export const readBoundedUtf8 = (file: string, kind: ReadKind, options: ReadOptions = {}): string => readBounded(file, kind, options).toString("utf8");

/**
 * The first `length` bytes of a regular file (fewer when it is shorter) and its size: for
 * inputs read only as far as they are needed.
 */
export const readHead = (file: string, length: number, options: ReadOptions & { readonly onlyIfShorter?: boolean } = {}): { bytes: Buffer; size: number } => {
  const { fd, size } = openRegularFile(file, options);
  try {
    // onlyIfShorter: nothing is read unless the file is longer than `length` (its whole is read elsewhere, under its limits).
    if (options.onlyIfShorter && size <= length) return { bytes: Buffer.alloc(0), size };
    return { bytes: readFrom(fd, Math.min(length, size)), size };
  } finally {
    closeSync(fd);
  }
};

/**
 * Digests already taken by this process, by the file's identity and its last change: a
 * search hashes its model for its saved state and again for a queue's setup record, and a
 * model of many gigabytes takes seconds each time. Any write changes ctime, so a changed
 * file is hashed again.
 */
const digests = new Map<string, string>();

/** SHA-256 of a regular file, read in chunks (checkpoints can be many gigabytes). */
export const fileDigest = (file: string, options: ReadOptions = {}): string => {
  const { fd } = openRegularFile(file, options);
  try {
    const st = fstatSync(fd, { bigint: true });
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    const known = digests.get(key);
    if (known !== undefined) return known;
    const hash = createHash("sha256");
    const buffer = Buffer.allocUnsafe(8 << 20);
    for (let n; (n = readSync(fd, buffer, 0, buffer.length, null)) > 0; ) hash.update(buffer.subarray(0, n));
    const digest = hash.digest("hex");
    digests.set(key, digest);
    return digest;
  } finally {
    closeSync(fd);
  }
};
