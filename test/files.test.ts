/**
 * writeFileAtomically writes through a hidden temporary file; its errors name the file the
 * user asked for and the problem in words, never the temporary name.
 */
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { spawnSync } from "node:child_process";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { writeSafetensors } from "../src/checkpoint/safetensors.ts";
import { CheckpointError, DataError } from "../src/errors.ts";
import { describeWriteError, writeFileAtomically } from "../src/files.ts";
import { expectTaggedError } from "./helpers/errors.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-files-"));
afterAll(() => {
  chmodSync(join(root, "locked"), 0o755);
  rmSync(root, { recursive: true, force: true });
});
mkdirSync(join(root, "locked"));

/** Root ignores permission bits, so the read-only case only means something for other users. */
const isRoot = process.getuid?.() === 0;

const failureOf = (run: () => unknown): { error: unknown; text: string } => {
  try {
    run();
  } catch (error) {
    return { error, text: `${(error as Error).message} ${JSON.stringify(error)}` };
  }
  throw new Error("expected the write to fail");
};

describe("writeFileAtomically", () => {
  it("writes the content and leaves no temporary file", () => {
    const file = join(root, "ok.csv");
    writeFileAtomically(file, "a,b\n1,2\n");
    writeFileAtomically(file, Uint8Array.from([0x61, 0x0a]));
    expect(readFileSync(file, "utf8")).toBe("a\n");
    expect(readdirSync(root).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  it("a missing folder is a DataError naming the target and 'no such folder'", () => {
    const file = join(root, "out", "x.csv");
    expectTaggedError(DataError, () => writeFileAtomically(file, "x"), /^cannot be written \(no such folder\)$/, file);
    expect(() => writeFileAtomically(file, "x")).toThrow(`${file}: cannot be written (no such folder)`);
    expect(failureOf(() => writeFileAtomically(file, "x")).text).not.toMatch(/\.tmp|\.x\.csv\./);
  });

  it("a path through a file is named as such", () => {
    writeFileSync(join(root, "plain"), "");
    const file = join(root, "plain", "x.csv");
    expectTaggedError(DataError, () => writeFileAtomically(file, "x"), /^cannot be written \(part of the path is not a folder\)$/, file);
  });

  it("a folder in the way of the target is named as such, and no temporary file is left", () => {
    const file = join(root, "taken");
    mkdirSync(join(file, "inside"), { recursive: true });
    expectTaggedError(DataError, () => writeFileAtomically(file, "x"), /^cannot be written \(a folder of that name is in the way\)$/, file);
    expect(readdirSync(root).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  it("a folder the writer may not write is 'permission denied'", () => {
    const dir = join(root, "locked");
    chmodSync(dir, 0o555);
    const file = join(dir, "x.csv");
    if (!isRoot) {
      expectTaggedError(DataError, () => writeFileAtomically(file, "x"), /^cannot be written \(permission denied\)$/, file);
      expect(failureOf(() => writeFileAtomically(file, "x")).text).not.toMatch(/\.tmp/);
      return;
    }
    // Root ignores permission bits: the write runs as the unprivileged user instead.
    chmodSync(root, 0o755);
    const runTs = resolve(import.meta.dirname, "..", "bin", "run-ts.mjs");
    const fixture = resolve(import.meta.dirname, "fixtures", "write-file.ts");
    const r = spawnSync(process.execPath, [runTs, fixture, file], { uid: 65534, gid: 65534, encoding: "utf8", cwd: tmpdir() });
    expect(r.status, `the write could not run as nobody: ${r.stderr}`).toBe(0);
    const outcome = JSON.parse(r.stdout.trim());
    expect(outcome).toMatchObject({ ok: false, tag: "DataError", file, problem: "cannot be written (permission denied)" });
    expect(outcome.message).not.toMatch(/\.tmp/);
  });
});

describe("write errors in words", () => {
  it("maps the system's codes to words and never repeats the path of the error", () => {
    const error = (code: string) => Object.assign(new Error(`${code}: failed, open '/x/.y.csv.1.2.tmp'`), { code });
    const target = join(root, "y.csv");
    expect(describeWriteError(error("EACCES"), target)).toBe("permission denied");
    expect(describeWriteError(error("EPERM"), target)).toBe("permission denied");
    expect(describeWriteError(error("EROFS"), target)).toBe("read-only file system");
    expect(describeWriteError(error("ENOSPC"), target)).toBe("no space left on the device");
    expect(describeWriteError(error("ENOENT"), join(root, "none", "y.csv"))).toBe("no such folder");
    expect(describeWriteError(error("EWHATEVER"), target)).toBe("EWHATEVER");
  });
});

describe("the safetensors writer's temporary file", () => {
  it("is never named in an error either", () => {
    const file = join(root, "no-such-dir", "m.safetensors");
    const { error, text } = failureOf(() => writeSafetensors(file, []));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).file).toBe(file);
    expect((error as CheckpointError).problem).toBe("cannot be written (no such folder)");
    expect(text).not.toMatch(/\.tmp/);
  });
});
