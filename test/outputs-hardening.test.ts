/**
 * Outputs never replace what is not evosparse's: a named pipe, a device, a socket or a
 * symbolic link where an output goes is refused in one line and left as it was, for every
 * kind of output (CSV files, model folders, run folders, the files inside them). A full or
 * read-only disk ends in one line naming the output, never a hidden staging name, and
 * leaves nothing behind. The commands run for real; the small disks are private tmpfs
 * mounts (test/helpers/small-disk.ts).
 */
import { spawnSync } from "node:child_process";
import { lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DataError } from "../src/errors.ts";
import { entryKind, writeFileAtomically } from "../src/files.ts";
import { expectTaggedError } from "./helpers/errors.ts";
import { runOnSmallDisk, smallDiskMissing } from "./helpers/small-disk.ts";
import { oneLine, runCli, scratchFolder } from "./helpers/cli.ts";

const { fresh } = scratchFolder("evosparse-outputs-");
const run = (...args: string[]) => runCli(args);

const mkfifo = (path: string): boolean => spawnSync("mkfifo", [path]).status === 0;

describe("the write layer", () => {
  it("refuses a link, a pipe or a device as a target, and leaves it and what it points at unchanged", () => {
    const dir = fresh("layer");
    mkdirSync(dir);
    const kept = join(dir, "kept.txt");
    writeFileSync(kept, "mine");
    const link = join(dir, "link.csv");
    symlinkSync(kept, link);
    const pipe = join(dir, "pipe.csv");
    const targets = [link, "/dev/null", ...(mkfifo(pipe) ? [pipe] : [])];
    for (const target of targets) {
      const kind = entryKind(target);
      expectTaggedError(DataError, () => writeFileAtomically(target, "x"), /symbolic link|named pipe|character device/, target);
      expect(entryKind(target)).toBe(kind);
    }
    expect(readFileSync(kept, "utf8")).toBe("mine");
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readdirSync(dir).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  it("property: whatever bytes are written to a regular file or a new name, they are the file's afterwards and no temporary file stays", () => {
    const dir = fresh("property");
    mkdirSync(dir);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.boolean(), (bytes, existing) => {
        const file = join(dir, "out.bin");
        if (existing) writeFileSync(file, "old");
        else rmSync(file, { force: true });
        writeFileAtomically(file, bytes);
        expect(new Uint8Array(readFileSync(file))).toEqual(bytes);
        expect(readdirSync(dir)).toEqual(["out.bin"]);
      }),
      { numRuns: 50 },
    );
  });
});

describe("every command refuses a non-regular output", () => {
  it("stats --out --overwrite refuses a FIFO, a symbolic link and /dev/null before any work", () => {
    const dir = fresh("stats");
    mkdirSync(dir);
    writeFileSync(join(dir, "target.csv"), "mine");
    symlinkSync(join(dir, "target.csv"), join(dir, "link.csv"));
    const fifo = join(dir, "fifo.csv");
    const outs = [join(dir, "link.csv"), "/dev/null", ...(mkfifo(fifo) ? [fifo] : [])];
    for (const out of outs) {
      const kind = entryKind(out);
      const r = run("stats", "--nsamples", "1", "--backend", "wasm", "--out", out, "--overwrite");
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(new RegExp(`--out ${out} is (a symbolic link|a named pipe \\(FIFO\\)|a character device)`));
      expect(r.stderr).not.toMatch(/backend:/); // refused before the backend started
      expect(entryKind(out)).toBe(kind);
    }
    expect(readFileSync(join(dir, "target.csv"), "utf8")).toBe("mine");
  });

  it("prune --out and search --out refuse a symbolic link to a folder, which stays as it was", () => {
    const dir = fresh("folders");
    const real = join(dir, "real");
    mkdirSync(real, { recursive: true });
    writeFileSync(join(real, "notes.txt"), "mine");
    const link = join(dir, "link");
    symlinkSync(real, link);
    const prune = run("prune", "--sparsity", "0.5", "--nsamples", "1", "--backend", "wasm", "--out", link, "--overwrite");
    expect(prune.code).toBe(2);
    expect(oneLine(prune.stderr)).toMatch(/is a symbolic link/);
    const search = run("search", "--sparsity", "0.7", "--population", "3", "--generations", "1", "--backend", "wasm", "--out", link);
    expect(search.code).toBe(2);
    expect(oneLine(search.stderr)).toMatch(/is a symbolic link/);
    const resume = run("search", "--resume", link);
    expect(resume.code).toBe(2);
    expect(oneLine(resume.stderr)).toMatch(/--resume .* is a symbolic link/);
    expect(readdirSync(real)).toEqual(["notes.txt"]);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
  });
});

describe.skipIf(smallDiskMissing !== undefined)(`full and read-only disks${smallDiskMissing ? ` (skipped: ${smallDiskMissing})` : ""}`, () => {
  it("a search on a full disk: one line naming the run folder (not the lock's draft), and no folder left", () => {
    const mount = fresh("full");
    mkdirSync(mount);
    const r = runOnSmallDisk(mount, { kib: 64, prepare: "head -c 100000 /dev/zero > fill 2>/dev/null; true" }, "search", "--sparsity", "0.7", "--out", "run", "--backend", "wasm");
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(`evosparse: ${mount}/run: cannot be locked for this run (no space left on the device)`);
    expect(r.left).toEqual(["fill"]);
  });

  it("a search on a read-only disk: one line, nothing created", () => {
    const mount = fresh("readonly");
    mkdirSync(mount);
    const r = runOnSmallDisk(mount, { kib: 64, readOnly: true }, "search", "--sparsity", "0.7", "--out", "run", "--backend", "wasm");
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/run: cannot be written: .* is not writable \(a read-only file system\)$/);
    expect(r.left).toEqual([]);
  });

  it("prune filling the disk while it writes: one line naming --out and the file, no staging folder left", () => {
    const mount = fresh("prune-full");
    mkdirSync(mount);
    const r = runOnSmallDisk(mount, { kib: 256 }, "prune", "--sparsity", "0.5", "--nsamples", "1", "--backend", "wasm", "--out", "pruned");
    expect(r.code).toBe(1);
    const line = oneLine(r.stderr);
    expect(line).toBe(`evosparse: pruned: model.safetensors cannot be written (no space left on the device)`);
    expect(line).not.toMatch(/\.tmp/);
    expect(r.left).toEqual([]);
  });

  it("stats --out on a full disk: one line naming the file, no temporary file left", () => {
    const mount = fresh("stats-full");
    mkdirSync(mount);
    const r = runOnSmallDisk(mount, { kib: 64, prepare: "head -c 100000 /dev/zero > fill 2>/dev/null; true" }, "stats", "--nsamples", "1", "--backend", "wasm", "--out", "stats.csv");
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(`evosparse: stats.csv: cannot be written (no space left on the device)`);
    expect(r.left).toEqual(["fill"]);
  });
});
