/**
 * A run folder is written by one process at a time. The owner holds `run.lock`, a small
 * JSON file naming its host, process id and that process's start time.
 *
 * Staleness is decided by asking whether that process still runs, not by the lock's age:
 * a search computes for minutes on its main thread, so a lock refreshed on a timer (as
 * lock libraries built on mtime do) would look stale while its owner is alive. A killed
 * owner leaves a lock whose process is gone (or whose id now belongs to a process started
 * later), which the next run takes over. Locks of another host cannot be checked from here
 * and are refused with a message saying how to clear them.
 */
import { linkSync, readFileSync, rmSync, unlinkSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { DataError, UsageError } from "../errors.ts";
import { describeWriteError, writeNewFile } from "../files.ts";
import { readBoundedUtf8 } from "../reads.ts";
import { processAlive } from "./folder.ts";

export const LOCK_FILE = "run.lock";

interface LockOwner {
  readonly host: string;
  readonly pid: number;
  /** The process's start time in clock ticks since boot (Linux), telling a reused pid apart. */
  readonly startTicks: number | null;
  readonly since: string;
  readonly token: string;
}

const startTicksOf = (pid: number): number | null => {
  try {
    // Field 22 of /proc/<pid>/stat, counted after the parenthesised command name.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks : null;
  } catch {
    return null;
  }
};

const readOwner = (file: string): LockOwner | undefined => {
  try {
    const owner = JSON.parse(readBoundedUtf8(file, "record")) as LockOwner;
    return typeof owner.pid === "number" && typeof owner.host === "string" ? owner : undefined;
  } catch {
    return undefined;
  }
};

/** The owner is gone: same host, and its process no longer runs (or the pid was reused). */
const ownerGone = (owner: LockOwner): boolean => {
  if (owner.host !== hostname()) return false;
  if (!processAlive(owner.pid)) return true;
  const ticks = startTicksOf(owner.pid);
  return owner.startTicks !== null && ticks !== null && ticks !== owner.startTicks;
};

export interface RunLock {
  /** Gives the folder up; safe to call twice, and never removes another owner's lock. */
  release(): void;
}

/** Takes the folder's lock or throws a UsageError naming the process that holds it. */
export const acquireRunLock = (dir: string): RunLock => {
  const file = join(dir, LOCK_FILE);
  const owner: LockOwner = {
    host: hostname(),
    pid: process.pid,
    startTicks: startTicksOf(process.pid),
    since: new Date().toISOString(),
    token: `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  };
  // Written whole under a private name, then linked: link fails if a lock exists, so the
  // check and the claim are one step, and no reader ever sees a half-written lock.
  const draft = join(dir, `.${LOCK_FILE}.${owner.token}`);
  try {
    writeNewFile(draft, JSON.stringify(owner) + "\n");
  } catch (e) {
    rmSync(draft, { force: true });
    // A full or read-only disk: name the run folder, never the hidden draft.
    throw new DataError({ file: dir, problem: `cannot be locked for this run (${describeWriteError(e, file)})` });
  }
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        linkSync(draft, file);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      const holder = readOwner(file);
      if (holder !== undefined && ownerGone(holder) && attempt === 0) {
        rmSync(file, { force: true });
        continue;
      }
      const who = holder === undefined ? "another process (its lock cannot be read)" : `process ${holder.pid} on ${holder.host} since ${holder.since}`;
      throw new UsageError({
        problem: `${dir} is in use by ${who}; wait for it to finish, or remove ${file} if that process is gone`,
      });
    }
  } finally {
    rmSync(draft, { force: true });
  }
  let held = true;
  return {
    release: () => {
      if (!held) return;
      held = false;
      if (readOwner(file)?.token === owner.token) {
        try {
          unlinkSync(file);
        } catch {
          // Already gone: nothing to release.
        }
      }
    },
  };
};
