import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { UsageError } from "../src/errors.ts";
import { acquireRunLock, LOCK_FILE } from "../src/output/run-lock.ts";
import { workerExcess, workerLimit } from "../src/workers/limit.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-lock-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const folder = () => {
  const dir = join(root, `run-${++counter}`);
  mkdirSync(dir);
  return dir;
};
const deadPid = (): number => Number(spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout);

describe("the run lock", () => {
  it("is held by one owner at a time, and released only by its owner", () => {
    const dir = folder();
    const lock = acquireRunLock(dir);
    expect(() => acquireRunLock(dir)).toThrow(UsageError);
    expect(() => acquireRunLock(dir)).toThrow(new RegExp(`in use by process ${process.pid} on ${hostname()}`));
    lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    const next = acquireRunLock(dir);
    lock.release(); // a second release of an old lock leaves the new owner's lock alone
    expect(existsSync(join(dir, LOCK_FILE))).toBe(true);
    next.release();
  });

  it("takes over the lock of a process that is gone", () => {
    const dir = folder();
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ host: hostname(), pid: deadPid(), startTicks: null, since: "earlier", token: "old" }));
    const lock = acquireRunLock(dir);
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")).pid).toBe(process.pid);
    lock.release();
  });

  it("takes over a lock whose pid now belongs to a later process (a reused id)", () => {
    const dir = folder();
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ host: hostname(), pid: process.pid, startTicks: -1, since: "earlier", token: "old" }));
    const stat = existsSync(`/proc/${process.pid}/stat`);
    if (stat) {
      const lock = acquireRunLock(dir);
      lock.release();
    } else {
      expect(() => acquireRunLock(dir)).toThrow(UsageError);
    }
  });

  it("refuses a lock of another host or one it cannot read, saying how to clear it", () => {
    const dir = folder();
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ host: "elsewhere", pid: deadPid(), startTicks: null, since: "earlier", token: "old" }));
    expect(() => acquireRunLock(dir)).toThrow(/in use by process \d+ on elsewhere .* remove .*run\.lock if that process is gone/);
    writeFileSync(join(dir, LOCK_FILE), "{ half");
    expect(() => acquireRunLock(dir)).toThrow(/its lock cannot be read/);
  });
});

describe("the worker limit", () => {
  it("is at least one, at most the cores, and fits the memory (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 256 }), fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 1, max: 2 ** 34 }), fc.integer({ min: 1, max: 512 }), (cores, availableBytes, perWorkerBytes, requested) => {
        const budget = { cores, availableBytes, perWorkerBytes };
        const limit = workerLimit(budget);
        expect(limit).toBeGreaterThanOrEqual(1);
        expect(limit).toBeLessThanOrEqual(cores);
        if (limit > 1) expect(limit * perWorkerBytes).toBeLessThanOrEqual(availableBytes);
        expect(workerExcess(requested, budget) === undefined).toBe(requested <= limit);
      }),
    );
    expect(workerExcess(64, { cores: 2, availableBytes: 2 ** 34, perWorkerBytes: 2 ** 20 })).toBe("this machine has 2 cores");
    expect(workerExcess(8, { cores: 16, availableBytes: 3 * 2 ** 30, perWorkerBytes: 2 ** 30 })).toBe("3 fit in the 3072 MiB of memory available (about 1024 MiB each)");
  });
});
