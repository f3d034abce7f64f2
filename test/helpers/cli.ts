/**
 * The command line as a user runs it, for end-to-end tests: the bin in a child process (CI
 * set, so no progress bar), one scratch folder per test file, and the one-line refusal.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, expect } from "vitest";

export const bin = resolve(import.meta.dirname, "..", "..", "bin", "evosparse.mjs");

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export const runCli = (args: readonly string[], options: { readonly cwd?: string; readonly timeout?: number } = {}): CliResult => {
  const r = spawnSync(process.execPath, [bin, ...args], {
    encoding: "utf8",
    env: { ...process.env, CI: "true" },
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    ...(options.timeout !== undefined ? { timeout: options.timeout } : {}),
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

/** The single `evosparse:` line a refusal prints (asserting there is exactly one). */
export const oneLine = (stderr: string): string => {
  const lines = stderr.trim().split("\n").filter((l) => l.startsWith("evosparse:"));
  expect(lines).toHaveLength(1);
  return lines[0]!;
};

/** A scratch folder removed after the file's tests, and fresh paths inside it. */
export const scratchFolder = (prefix: string): { readonly root: string; readonly fresh: (name: string) => string } => {
  const root = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  let counter = 0;
  return { root, fresh: (name: string) => join(root, `${name}-${++counter}`) };
};
