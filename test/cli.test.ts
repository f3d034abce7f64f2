import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { asset, haveAssets } from "./helpers/assets.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env: { ...process.env, CI: "true" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const root = mkdtempSync(join(tmpdir(), "evosparse-cli-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("the evosparse command", () => {
  it("--help lists the commands; each command has its own --help", () => {
    const top = run("--help");
    expect(top.code).toBe(0);
    for (const c of ["eval", "train", "start"]) expect(top.stdout).toContain(c);
    const ev = run("eval", "--help");
    expect(ev.code).toBe(0);
    for (const flag of ["--model", "--data", "--format", "--seqlen", "--bos", "--max-windows", "--backend", "--json"]) expect(ev.stdout).toContain(flag);
  });

  it("a missing model is one clear line and exit code 1, with the stack only under --verbose", () => {
    const r = run("eval", "--model", join(root, "nothing"), "--data", "brown:test");
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toEqual([`evosparse: ${join(root, "nothing")}: no such file or folder`]);
    const verbose = run("eval", "--model", join(root, "nothing"), "--data", "brown:test", "--verbose");
    expect(verbose.code).toBe(1);
    expect(verbose.stderr).toMatch(/\n\s+at /);
  });

  it("a bad config names the file and the problem", () => {
    const dir = join(root, "bad");
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "bloom" }));
    const r = run("eval", "--model", dir, "--data", "brown:test");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`evosparse: ${join(dir, "config.json")}: unknown model_type "bloom"`);
  });

  it("bad flags are a usage error (exit 2)", () => {
    const r = run("eval", "--format", "csv");
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/format/);
    const unknown = run("frobnicate");
    expect(unknown.code).toBe(2);
  });

  it.skipIf(!haveAssets)("eval --json prints one object with the protocol's fields and names the backend", () => {
    const r = run(
      "eval",
      "--model",
      asset("models", "stories260K"),
      "--data",
      asset("data", "tinystories", "valid.head46.txt"),
      "--format",
      "stories",
      "--max-windows",
      "5",
      "--backend",
      "wasm",
      "--json",
    );
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!);
    for (const k of ["ppl", "nll", "tokens", "windows", "seqlen", "backend", "seconds", "tokensPerSecond"]) expect(out).toHaveProperty(k);
    expect(out.backend).toBe("wasm");
    expect(out.windows).toBe(5);
    expect(out.seqlen).toBe(512);
    expect(out.ppl).toBeCloseTo(Math.exp(out.nll), 6);
  });

  it.skipIf(!haveAssets)("a missing data file is a clear error", () => {
    const r = run("eval", "--model", asset("models", "stories260K"), "--data", join(root, "none.txt"), "--backend", "cpu");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`evosparse: ${join(root, "none.txt")}: no such file`);
  });
});
