/**
 * A search's run folder: created (or reopened to resume) and locked before the run writes
 * anything, so two processes never write one folder, and given up at the end. A new run
 * that fails before its first file is written leaves no folder behind.
 */
import { existsSync, mkdirSync, readdirSync, rmdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { DataError, isEvosparseError, UsageError } from "../errors.ts";
import { describeWriteError, unwritableEntry } from "../files.ts";
import { checkWritable } from "./folder.ts";
import { acquireRunLock, LOCK_FILE, type RunLock } from "./run-lock.ts";

export interface RunFolder {
  readonly dir: string;
  /** The first folder this run created (the run folder or one above it), if any. */
  readonly created: string | undefined;
  readonly lock: RunLock;
}

/** Entries of the folder other than its lock. */
const contents = (dir: string): string[] => readdirSync(dir).filter((name) => name !== LOCK_FILE && !name.startsWith(`.${LOCK_FILE}.`));

/**
 * A folder for a new run: `dir`, or with no `dir` the first free `base-2`, `base-3`, ...
 * after `base` (so two runs started in the same second get two folders).
 */
export const claimNewRunFolder = (options: { readonly dir?: string; readonly base: string; readonly marker: string }): RunFolder => {
  const explicit = options.dir !== undefined;
  if (options.dir !== undefined && options.dir.trim() === "") throw new UsageError({ problem: "--out needs a folder name; it was given an empty one" });
  for (let k = 1; ; k++) {
    const dir = resolve(options.dir ?? (k === 1 ? options.base : `${options.base}-${k}`));
    const refused = unwritableEntry(dir, "folder");
    if (refused !== undefined) throw new UsageError({ problem: `--out ${dir} ${refused}; choose another name` });
    if (existsSync(dir)) {
      const inside = contents(dir);
      if (inside.length > 0) {
        if (!explicit) continue;
        throw new UsageError({
          problem: inside.includes(options.marker)
            ? `--out ${dir} already holds a search: continue it with --resume ${dir}, or choose another --out`
            : `--out ${dir} already exists and is not empty; choose a new folder for the run`,
        });
      }
    }
    checkWritable(dir);
    let created: string | undefined;
    let lock: RunLock;
    try {
      created = mkdirSync(dir, { recursive: true });
      lock = acquireRunLock(dir);
    } catch (e) {
      // Nothing of this run may stay behind: the folders it created are removed.
      removeCreated(dir, created);
      throw isEvosparseError(e) ? e : new DataError({ file: dir, problem: `cannot be created (${describeWriteError(e, dir)})` });
    }
    // Checked again under the lock: another run may have written here since.
    if (contents(dir).length > 0) {
      lock.release();
      if (!explicit) continue;
      throw new UsageError({ problem: `--out ${dir} was taken by another run just now; choose another --out` });
    }
    return { dir, created, lock };
  }
};

/** The folder of a run to resume: it must hold `marker` (its settings); locked. */
export const claimRunFolderToResume = (dir: string, marker: string): RunFolder => {
  const path = resolve(dir);
  const refused = unwritableEntry(path, "folder");
  if (refused !== undefined) throw new UsageError({ problem: `--resume ${dir} ${refused}; give the run folder itself` });
  if (!existsSync(join(path, marker))) {
    throw new DataError({ file: join(path, marker), problem: `no ${marker}: not a search folder, or the run never started` });
  }
  return { dir: path, created: undefined, lock: acquireRunLock(path) };
};

/**
 * Gives the folder up. A new run that never wrote a file (`used` false) removes the folders
 * it created, so a refused or failed start leaves nothing behind.
 */
export const releaseRunFolder = (folder: RunFolder, used: boolean): void => {
  folder.lock.release();
  if (!used) removeCreated(folder.dir, folder.created);
};

/** Removes the empty folders from `dir` up to `created`, the first one a run created. */
const removeCreated = (dir: string, created: string | undefined): void => {
  if (created === undefined) return;
  // Empty folders only, from the run folder up to the first one created: another run may
  // have put its own folder beside this one meanwhile.
  let at = dir;
  for (;;) {
    try {
      rmdirSync(at);
    } catch {
      return;
    }
    if (at === created) return;
    const up = dirname(at);
    if (up === at) return;
    at = up;
  }
};
