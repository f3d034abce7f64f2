/**
 * Output folders: what a command may write to, checked before it does any work.
 *
 * A researcher may point `--out` at their only copy of a model, so a command never
 * replaces a folder it did not write. Every folder evosparse writes holds a marker file
 * listing its files; `--overwrite` replaces only a folder whose marker lists everything in
 * it, and never a folder holding one of the command's inputs.
 */
import { accessSync, constants, existsSync, mkdirSync, readdirSync, realpathSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import { DataError, isEvosparseError, UsageError } from "../errors.ts";
import { describeWriteError, entryKind, unwritableEntry } from "../files.ts";
import { readBoundedUtf8 } from "../reads.ts";

/** The marker written into every folder evosparse writes. */
export const OUTPUT_MARKER = ".evosparse-output.json";

export interface OutputMarker {
  readonly writtenBy: "evosparse";
  readonly command: string;
  /** Every file of the folder, the marker excluded. */
  readonly files: readonly string[];
}

export const markerContent = (command: string, files: readonly string[]): string =>
  JSON.stringify({ writtenBy: "evosparse", command, files: [...files].sort() } satisfies OutputMarker, null, 2) + "\n";

/** Why the folder may not be replaced, or undefined when evosparse wrote all of it. */
export const notReplaceable = (dir: string): string | undefined => {
  const file = join(dir, OUTPUT_MARKER);
  if (!existsSync(file)) return `it was not written by evosparse (no ${OUTPUT_MARKER})`;
  let marker: Partial<OutputMarker>;
  try {
    marker = JSON.parse(readBoundedUtf8(file, "record")) as Partial<OutputMarker>;
  } catch {
    return `its ${OUTPUT_MARKER} is damaged`;
  }
  if (marker.writtenBy !== "evosparse" || !Array.isArray(marker.files)) return `its ${OUTPUT_MARKER} is not evosparse's`;
  const listed = new Set(marker.files);
  const foreign = readdirSync(dir).find((name) => name !== OUTPUT_MARKER && !listed.has(name));
  return foreign === undefined ? undefined : `it holds ${foreign}, which evosparse did not write there`;
};

const realOrResolved = (path: string): string => {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
};

/** `inner` is `outer` or lies inside it (after following links). */
export const isWithin = (inner: string, outer: string): boolean => {
  const a = realOrResolved(inner);
  const b = realOrResolved(outer);
  return a === b || a.startsWith(b.endsWith(sep) ? b : b + sep);
};

/** An input of the command that replacing `dir` would destroy, if any (built-in sources such as brown:test are no paths). */
const inputInside = (dir: string, inputs: readonly (string | undefined)[]): string | undefined =>
  inputs.find((input) => input !== undefined && existsSync(input) && isWithin(input, dir));

/** The nearest existing folder at or above `path`, so nothing is created to check it. */
const nearestExisting = (path: string): string => {
  let at = resolve(path);
  while (!existsSync(at)) {
    const up = dirname(at);
    if (up === at) break;
    at = up;
  }
  return at;
};

/** Throws a DataError unless a folder could be created at `dir` (nothing is created). */
export const checkWritable = (dir: string): void => {
  const at = nearestExisting(dirname(resolve(dir)));
  if (!statSync(at).isDirectory()) throw new DataError({ file: dir, problem: `cannot be created: ${at} is a file, not a folder` });
  try {
    accessSync(at, constants.W_OK | constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "EROFS" ? "a read-only file system" : code === "EACCES" || code === "EPERM" ? "permission denied" : code ?? String(e);
    throw new DataError({ file: dir, problem: `cannot be written: ${at} is not writable (${why})` });
  }
};

export interface OutputCheck {
  /** The flag that named the folder, for messages. */
  readonly flag: string;
  /** `--overwrite`: a folder evosparse wrote may be replaced. */
  readonly overwrite: boolean;
  /** Files and folders the command reads; a folder holding one is never replaced. */
  readonly inputs: readonly (string | undefined)[];
}

/**
 * Checks an output folder before any work: not a file, not holding an input, empty or
 * absent (or, with --overwrite, a folder evosparse wrote), and creatable. Also removes the
 * staging folders that writers killed earlier left beside it.
 */
export const checkOutputFolder = (dir: string, check: OutputCheck): void => {
  if (dir.trim() === "") throw new UsageError({ problem: `${check.flag} needs a folder name; it was given an empty one` });
  const input = inputInside(dir, check.inputs);
  if (input !== undefined) {
    throw new UsageError({ problem: `${check.flag} ${dir} holds the input ${input}: writing there would destroy it; choose another folder` });
  }
  const refused = unwritableEntry(dir, "folder");
  if (refused !== undefined) throw new UsageError({ problem: `${check.flag} ${dir} ${refused}; choose another name` });
  if (existsSync(dir)) {
    if (readdirSync(dir).length > 0) {
      if (!check.overwrite) {
        throw new UsageError({
          problem: `${check.flag} ${dir} already exists and is not empty; choose a new folder, or add --overwrite to replace a folder evosparse wrote`,
        });
      }
      const why = notReplaceable(dir);
      if (why !== undefined) throw new UsageError({ problem: `${check.flag} ${dir} is not replaced by --overwrite: ${why}` });
    }
  }
  checkWritable(dir);
  removeStaleStaging(dir);
};

// Staging and swap folders beside the target carry the writer's pid, so a later run can
// tell the leftovers of a killed writer from those of a live one.
export const stagingFolder = (dir: string): string => join(dirname(resolve(dir)), `.tmp-${basename(dir)}-${process.pid}-${Date.now()}`);
export const swapFolder = (dir: string): string => join(dirname(resolve(dir)), `.old-${basename(dir)}-${process.pid}-${Date.now()}`);

/** A process with this id runs on this machine (it may belong to another user). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Removes staging and swap folders of `dir` whose writer is no longer running. */
export const removeStaleStaging = (dir: string): string[] => {
  const parent = dirname(resolve(dir));
  if (!existsSync(parent)) return [];
  const pattern = new RegExp(`^\\.(?:tmp|old)-${escapeRegExp(basename(dir))}-(\\d+)-\\d+$`);
  const removed: string[] = [];
  for (const name of readdirSync(parent)) {
    const match = pattern.exec(name);
    if (!match || processAlive(Number(match[1]))) continue;
    rmSync(join(parent, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
};

/**
 * Checks an output file before any work: not a folder, not an input (nor inside an input
 * folder), new unless --overwrite, and its folder writable.
 */
export const checkOutputFile = (file: string, check: OutputCheck): void => {
  if (file.trim() === "") throw new UsageError({ problem: `${check.flag} needs a file name; it was given an empty one` });
  const refused = unwritableEntry(file, "file");
  if (refused !== undefined) throw new UsageError({ problem: `${check.flag} ${file} ${refused}; choose another name` });
  if (entryKind(file) === "file") {
    const input = check.inputs.find((i) => i !== undefined && existsSync(i) && isWithin(file, i));
    if (input !== undefined) throw new UsageError({ problem: `${check.flag} ${file} is part of the input ${input}: writing it would destroy it; choose another file` });
    if (!check.overwrite) throw new UsageError({ problem: `${check.flag} ${file} already exists; choose a new file, or add --overwrite to replace it` });
  }
  checkWritable(file);
};

/**
 * Moves a finished staging folder into place. An absent or empty target is simply taken;
 * a non-empty one is replaced only with `overwrite` and only when evosparse wrote all of it
 * (checked again here: another process may have written there since the command began).
 */
export const replaceDir = (staging: string, dir: string, policy: { readonly overwrite: boolean }): void => {
  const refused = unwritableEntry(dir, "folder");
  if (refused !== undefined) throw new DataError({ file: dir, problem: refused });
  if (existsSync(dir) && readdirSync(dir).length > 0) {
    const why = policy.overwrite ? notReplaceable(dir) : "it already exists and is not empty (add --overwrite to replace a folder evosparse wrote)";
    if (why !== undefined) throw new UsageError({ problem: `${dir} is not replaced: ${why}` });
    const old = swapFolder(dir);
    renameSync(dir, old);
    renameSync(staging, dir);
    rmSync(old, { recursive: true, force: true });
  } else {
    // rename(2) replaces an empty folder in one step.
    renameSync(staging, dir);
  }
};

/**
 * A folder of this run's own (a training or recovery checkpoint) written whole: `fill`
 * writes into a fresh staging folder beside `dir`, which then replaces `dir` (the run's
 * previous checkpoint). A failure removes the staging folder and names `dir`, never the
 * hidden staging name.
 */
export const writeStagedFolder = (dir: string, staging: string, fill: () => void): void => {
  try {
    mkdirSync(staging);
    fill();
    replaceDir(staging, dir, { overwrite: true });
  } catch (e) {
    throw namedByTarget(e, staging, dir);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
};

/**
 * The error of a write into `staging`, named by the folder the user asked for: a disk-full
 * or read-only message must never show the hidden staging name.
 */
export const namedByTarget = (e: unknown, staging: string, dir: string): Error => {
  if (isEvosparseError(e)) {
    if (!("file" in e) || !e.file.startsWith(staging)) return e;
    const inside = e.file.slice(staging.length).replace(/^\//, "");
    return new DataError({ file: dir, problem: inside === "" ? e.problem : `${inside} ${e.problem}` });
  }
  return new DataError({ file: dir, problem: `cannot be written (${describeWriteError(e, dir)})` });
};
