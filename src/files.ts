/**
 * The write layer every output goes through: CSV files, run folders and their state,
 * model folders and checkpoints. Two rules hold for all of them:
 *
 * - Only what is ours is replaced: a target that exists must be a regular file (or, for
 *   folders, a real folder), never a symbolic link, a named pipe, a device or a socket.
 *   Renaming over such an entry would silently swap it for a regular file (as root, even
 *   /dev/null), and writing through a link writes somewhere the user did not name.
 * - Nothing is half-written: a file is written beside its target under a hidden name and
 *   renamed, and a failure names the target and the problem in words, never the hidden name.
 */
import { closeSync, existsSync, fsyncSync, lstatSync, openSync, renameSync, rmSync, statSync, writeSync, type Stats } from "node:fs";
import { basename, dirname, join } from "node:path";
import { DataError, isEvosparseError } from "./errors.ts";

/** What went wrong with a write, in words, without the path (which may be a temporary name). */
export const describeWriteError = (error: unknown, target: string): string => {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "ENOENT":
      return existsSync(dirname(target)) ? "no such file or folder" : "no such folder";
    case "ENOTDIR":
      return "part of the path is not a folder";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "EROFS":
      return "read-only file system";
    case "ENOSPC":
      return "no space left on the device";
    case "EDQUOT":
      return "disk quota exceeded";
    case "EISDIR":
      return "a folder of that name is in the way";
    case "ENAMETOOLONG":
      return "the name is too long";
    case "EMFILE":
    case "ENFILE":
      return "too many open files";
    case "EIO":
      return "input/output error";
    case undefined:
      return error instanceof Error ? error.message : String(error);
    default:
      return code;
  }
};

const isFolder = (path: string): boolean => {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
};

/** What a path is, without following a link at its end. */
export type EntryKind = "absent" | "file" | "folder" | "link" | "fifo" | "socket" | "character device" | "block device";

const kindOfStats = (s: Stats): EntryKind =>
  s.isSymbolicLink() ? "link"
  : s.isFile() ? "file"
  : s.isDirectory() ? "folder"
  : s.isFIFO() ? "fifo"
  : s.isSocket() ? "socket"
  : s.isCharacterDevice() ? "character device"
  : "block device";

export const entryKind = (path: string): EntryKind => {
  try {
    return kindOfStats(lstatSync(path));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return "absent";
    throw e;
  }
};

/** The kind in words, for messages. */
export const describeKind = (kind: EntryKind): string =>
  ({
    absent: "absent",
    file: "a regular file",
    folder: "a folder",
    link: "a symbolic link",
    fifo: "a named pipe (FIFO)",
    socket: "a socket",
    "character device": "a character device",
    "block device": "a block device",
  })[kind];

/**
 * Why `path` may not be written as `want`, or undefined when it is absent or already of
 * that kind. A link is refused whatever it points at: evosparse writes the path it was
 * given, never what a link leads to.
 */
export const unwritableEntry = (path: string, want: "file" | "folder"): string | undefined => {
  const kind = entryKind(path);
  if (kind === "absent" || kind === want) return undefined;
  if (kind === "link") return "is a symbolic link; evosparse writes only regular files and folders, never through a link";
  if (kind === "folder" || kind === "file") return want === "file" ? "is a folder, not a file" : "is a file, not a folder";
  return `is ${describeKind(kind)}, not a regular ${want}; evosparse replaces only what it could have written`;
};

/** Throws a DataError naming `path` unless it may be written as `want`. */
export const checkWritableEntry = (path: string, want: "file" | "folder"): void => {
  const problem = unwritableEntry(path, want);
  if (problem !== undefined) throw new DataError({ file: path, problem });
};

/** A hidden name beside `file` for writing it; unique to this process and moment. */
const temporaryName = (file: string): string => join(dirname(file), `.${basename(file)}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2, 8)}.tmp`);

/**
 * Written beside the target and renamed, so a reader (or a resumed run) never sees half a
 * file. The target must be absent or a regular file (checked before writing and again just
 * before the rename); the temporary file is created exclusively, so nothing already there
 * (a link planted under that name) is followed. A failure is a DataError naming the
 * target, never the hidden temporary file.
 */
export const writeFileAtomically = (file: string, content: string | Uint8Array, options: { readonly sync?: boolean } = {}): void => {
  writeThroughTemporary(file, (fd) => {
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
  }, options);
};

/**
 * The shared atomic write: `fill` writes the content to an exclusively created hidden
 * file beside `file`, which is then renamed over it. Errors that are not already
 * evosparse's are named by the target and described in words.
 */
export const writeThroughTemporary = (file: string, fill: (fd: number) => void, options: { readonly sync?: boolean; readonly error?: (problem: string) => Error } = {}): void => {
  const fail = options.error ?? ((problem: string) => new DataError({ file, problem }));
  const refused = unwritableEntry(file, "file");
  if (refused !== undefined) throw fail(entryKind(file) === "folder" ? "cannot be written (a folder of that name is in the way)" : refused);
  const temporary = temporaryName(file);
  let fd: number | undefined;
  let refusedLate: Error | undefined;
  try {
    fd = openSync(temporary, "wx", 0o644);
    fill(fd);
    if (options.sync) fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    // Checked again: something may have been put there while the content was written.
    const now = unwritableEntry(file, "file");
    if (now !== undefined) throw (refusedLate = fail(now));
    renameSync(temporary, file);
  } catch (error) {
    try {
      if (fd !== undefined) closeSync(fd);
      rmSync(temporary, { force: true });
    } catch {
      // Nothing was written, or the folder refuses changes: either way the write's own error says more.
    }
    if (isEvosparseError(error) || error === refusedLate) throw error;
    const problem = isFolder(file) ? "a folder of that name is in the way" : describeWriteError(error, file);
    throw fail(`cannot be written (${problem})`);
  }
};

/**
 * Writes a new file inside a folder this run created (a staging folder): created
 * exclusively, so an entry already there, a link included, is an error rather than
 * followed or replaced.
 */
export const writeNewFile = (file: string, content: string | Uint8Array): void => {
  const fd = openSync(file, "wx", 0o644);
  try {
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
  } finally {
    closeSync(fd);
  }
};
