/**
 * What a user owns is never lost, two runs never mix, and bad settings are refused before
 * anything is written. Every case runs the real command on the embedded model, and checks
 * the exit code, the message, and what is on disk before and after.
 */
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { defaultModel } from "../src/defaults.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const env = { ...process.env, CI: "true" };
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const runAsync = (...args: string[]) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    const child = spawn(process.execPath, [bin, ...args], { env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code) => done({ code, stdout, stderr }));
  });

const root = mkdtempSync(join(tmpdir(), "evosparse-safety-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const fresh = (name: string) => join(root, `${name}-${++counter}`);

/** Every file under a folder with its bytes, to compare a folder before and after. */
const snapshot = (dir: string): Record<string, string> => {
  const out: Record<string, string> = {};
  const walk = (at: string, rel: string) => {
    for (const name of readdirSync(at).sort()) {
      const path = join(at, name);
      if (statSync(path).isDirectory()) walk(path, `${rel}${name}/`);
      else out[`${rel}${name}`] = readFileSync(path).toString("base64");
    }
  };
  walk(dir, "");
  return out;
};

/** One line on stderr, naming what the test expects. */
const oneLine = (stderr: string): string => {
  const lines = stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  return lines[0]!;
};

const PRUNE = ["prune", "--sparsity", "0.5", "--nsamples", "2", "--backend", "wasm"];
const SEARCH_FLAGS: Record<string, string> = { sparsity: "0.7", population: "3", generations: "2", "fitness-windows": "1", nsamples: "2", "eval-windows": "2", backend: "wasm" };
/** A small search's command line, with some flags changed or added. */
const search = (changes: Record<string, string> = {}): string[] => ["search", ...Object.entries({ ...SEARCH_FLAGS, ...changes }).flatMap(([k, v]) => [`--${k}`, v])];
const SEARCH = search();

/** A copy of the embedded model, so no test can harm the repository's own. */
const modelCopy = (): string => {
  const dir = fresh("model");
  cpSync(defaultModel(), dir, { recursive: true });
  return dir;
};

/** A process id that no process has any more. */
const deadPid = (): number => {
  const child = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(child.stdout);
};

describe("prune and train never replace what they did not write", () => {
  it("refuses an existing folder with other files, a file, and the input model, leaving each as it was", () => {
    const other = fresh("other");
    mkdirSync(other);
    writeFileSync(join(other, "notes.txt"), "my only copy");
    const file = fresh("file");
    writeFileSync(file, "not a folder");
    const model = modelCopy();
    const before = { other: snapshot(other), file: readFileSync(file, "utf8"), model: snapshot(model) };

    const a = run(...PRUNE, "--model", model, "--out", other);
    expect(a.code).toBe(2);
    expect(oneLine(a.stderr)).toBe(`evosparse: --out ${other} already exists and is not empty; choose a new folder, or add --overwrite to replace a folder evosparse wrote`);
    const b = run(...PRUNE, "--model", model, "--out", other, "--overwrite");
    expect(b.code).toBe(2);
    expect(oneLine(b.stderr)).toContain(`not written by evosparse`);
    const c = run(...PRUNE, "--model", model, "--out", file);
    expect(c.code).toBe(2);
    expect(oneLine(c.stderr)).toContain(`--out ${file} is a file, not a folder`);
    for (const extra of [[], ["--overwrite"]]) {
      const d = run(...PRUNE, "--model", model, "--out", model, ...extra);
      expect(d.code).toBe(2);
      expect(oneLine(d.stderr)).toContain(`holds the input ${model}`);
      // The folder above the model holds it too.
      const e = run(...PRUNE, "--model", model, "--out", root, ...extra);
      expect(e.code).toBe(2);
      expect(oneLine(e.stderr)).toContain(`holds the input ${model}`);
    }
    expect(snapshot(other)).toEqual(before.other);
    expect(readFileSync(file, "utf8")).toBe(before.file);
    expect(snapshot(model)).toEqual(before.model);
  });

  it("--overwrite replaces a folder prune wrote, and nothing once a file of the user's is in it", () => {
    const out = fresh("pruned");
    expect(run(...PRUNE, "--out", out).code).toBe(0);
    expect(JSON.parse(readFileSync(join(out, "report.json"), "utf8")).target).toBe(0.5);
    expect(run(...PRUNE, "--out", out).code).toBe(2);
    const again = run(...PRUNE.map((a) => (a === "0.5" ? "0.6" : a)), "--out", out, "--overwrite");
    expect(again.code).toBe(0);
    expect(JSON.parse(readFileSync(join(out, "report.json"), "utf8")).target).toBe(0.6);
    writeFileSync(join(out, "my-notes.md"), "results I wrote by hand");
    const before = snapshot(out);
    const refused = run(...PRUNE, "--out", out, "--overwrite");
    expect(refused.code).toBe(2);
    expect(oneLine(refused.stderr)).toContain("it holds my-notes.md, which evosparse did not write there");
    expect(snapshot(out)).toEqual(before);
    // No staging or swap folders are left beside it.
    expect(readdirSync(root).filter((n) => n.includes("pruned") && n.startsWith("."))).toEqual([]);
  });

  it("train refuses an existing non-empty --out (the embedded model's folder included) before any training", () => {
    const model = modelCopy();
    const before = snapshot(model);
    const r = run("train", "--out", model, "--steps", "1", "--vocab", "258");
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain(`--out ${model} already exists and is not empty`);
    expect(snapshot(model)).toEqual(before);
    const file = fresh("file");
    writeFileSync(file, "x");
    const f = run("train", "--out", file, "--steps", "1", "--vocab", "258");
    expect(f.code).toBe(2);
    expect(oneLine(f.stderr)).toContain("is a file, not a folder");
    expect(readFileSync(file, "utf8")).toBe("x");
  });

  it("an output location that cannot be written is found before any computation", () => {
    const file = fresh("file");
    writeFileSync(file, "x");
    const out = join(file, "pruned");
    const r = run(...PRUNE, "--out", out, "--eval", "brown:test");
    expect(r.code).toBe(1);
    // One line, and no calibration or evaluation was done first.
    expect(oneLine(r.stderr)).toBe(`evosparse: ${out}: cannot be created: ${file} is a file, not a folder`);
  });

  it("removes the staging folders that killed writers left beside --out, and keeps those of live ones", () => {
    const out = fresh("staged");
    const dead = join(root, `.tmp-${out.split("/").pop()}-${deadPid()}-1`);
    const swap = join(root, `.old-${out.split("/").pop()}-${deadPid()}-2`);
    const live = join(root, `.tmp-${out.split("/").pop()}-${process.pid}-3`);
    for (const dir of [dead, swap, live]) {
      mkdirSync(dir);
      writeFileSync(join(dir, "model.safetensors"), "half written");
    }
    expect(run(...PRUNE, "--out", out).code).toBe(0);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(swap)).toBe(false);
    expect(existsSync(live)).toBe(true);
    rmSync(live, { recursive: true });
  });

  it("stats --out never replaces a file without --overwrite, never an input, and names the file, not a temporary one", () => {
    const model = modelCopy();
    const config = join(model, "config.json");
    const before = readFileSync(config, "utf8");
    const a = run("stats", "--model", model, "--nsamples", "2", "--out", config, "--overwrite");
    expect(a.code).toBe(2);
    expect(oneLine(a.stderr)).toContain(`is part of the input ${model}`);
    expect(readFileSync(config, "utf8")).toBe(before);
    const existing = fresh("stats.csv");
    writeFileSync(existing, "mine");
    const b = run("stats", "--nsamples", "2", "--out", existing);
    expect(b.code).toBe(2);
    expect(oneLine(b.stderr)).toContain(`--out ${existing} already exists`);
    expect(readFileSync(existing, "utf8")).toBe("mine");
    const file = fresh("file");
    writeFileSync(file, "x");
    const c = run("stats", "--nsamples", "2", "--out", join(file, "stats.csv"));
    expect(c.code).toBe(1);
    expect(oneLine(c.stderr)).toBe(`evosparse: ${join(file, "stats.csv")}: cannot be created: ${file} is a file, not a folder`);
    expect(c.stderr).not.toMatch(/\.tmp/);
  });
});

describe("a search's run folder belongs to one run", () => {
  it("two concurrent searches into one folder: one is refused, the other's results are intact", async () => {
    const out = fresh("race");
    const [a, b] = await Promise.all([runAsync(...SEARCH, "--out", out, "--seed", "1"), runAsync(...SEARCH, "--out", out, "--seed", "2")]);
    const codes = [a.code, b.code].sort();
    expect(codes).toEqual([0, 2]);
    const [winner, loser] = a.code === 0 ? [a, b] : [b, a];
    expect(oneLine(loser.stderr)).toMatch(/(is in use by process \d+|already holds a search)/);
    const seed = winner === a ? 1 : 2;
    const settings = JSON.parse(readFileSync(join(out, "settings.json"), "utf8"));
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    expect(settings.seed).toBe(seed);
    expect(summary.seed).toBe(seed);
    expect(summary.out).toBe(out);
    expect(existsSync(join(out, "run.lock"))).toBe(false);
    // The folder resumes as the finished run it is.
    const resumed = run("search", "--resume", out);
    expect(resumed.code).toBe(0);
    expect(resumed.stderr).toContain("this search has finished");
  });

  it("settings that fail validation leave no folder behind", () => {
    const space = fresh("space.json");
    const msp = JSON.parse(readFileSync(resolve(import.meta.dirname, "..", "search-spaces", "msp.json"), "utf8"));
    writeFileSync(space, JSON.stringify({ ...msp, bounds: { lo: 0.8, hi: 0.9 } }));
    const cases: Array<[Record<string, string>, number, RegExp]> = [
      [{ population: "0" }, 2, /--population 0 is not a whole number >= 1/],
      [{ generations: "0" }, 2, /--generations 0 is not a whole number >= 1/],
      [{ "budget-evals": "0" }, 2, /--budget-evals 0 is not a whole number >= 1/],
      [{ method: "msp", space }, 1, /space\.json.*: target sparsity 0\.7 is outside the bounds/],
      [{ seqlen: "512" }, 2, /--seqlen 512 exceeds the context of .* \(256\)/],
      [{ method: "msp-nm", pattern: "2:3" }, 2, /--pattern 2:3 does not fit .*: q has 128 inputs, which do not split into groups of M = 3/],
      [{ method: "nothing" }, 2, /nothing/],
    ];
    for (const [changes, code, message] of cases) {
      const out = fresh("invalid");
      const flags = Object.entries(changes).flat();
      const r = run(...search(changes), "--out", out);
      expect(r.code, flags.join(" ")).toBe(code);
      expect(r.stderr.trim().split("\n").at(-1)).toMatch(message);
      expect(existsSync(out), flags.join(" ")).toBe(false);
      // The same --out then works: nothing blocks it.
    }
  });

  it("--resume refuses flags that would change the run, allows more generations, and a finished run is a no-op", () => {
    const out = fresh("resume");
    expect(run(...SEARCH, "--out", out).code).toBe(0);
    const before = snapshot(out);
    for (const flags of [["--sparsity", "0.5"], ["--method", "msp"], ["--seed", "3"], ["--pattern", "2:4"], ["--fitness-windows", "2"]]) {
      const r = run("search", "--resume", out, ...flags);
      expect(r.code, flags.join(" ")).toBe(2);
      expect(oneLine(r.stderr)).toContain(`${flags[0]} ${flags[1]} differs from the resumed run's`);
    }
    // The same values as saved are no change.
    const same = run("search", "--resume", out, "--sparsity", "0.7", "--population", "3");
    expect(same.code).toBe(0);
    expect(same.stderr).toContain("this search has finished (summary.json); nothing to do");
    expect(same.stdout).toContain("| dsa");
    expect(snapshot(out)).toEqual(before);

    const more = run("search", "--resume", out, "--generations", "3");
    expect(more.code).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    expect(summary.generations).toBe(3);
    expect(JSON.parse(readFileSync(join(out, "settings.json"), "utf8")).generations).toBe(3);
    // Search time counts the earlier run's too.
    const first = JSON.parse(Buffer.from(before["summary.json"]!, "base64").toString("utf8"));
    expect(summary.searchSeconds).toBeGreaterThan(first.searchSeconds);
  });

  it("--workers beyond the machine is capped with a message, and the history is the same", () => {
    const one = fresh("w1");
    const many = fresh("w64");
    expect(run(...SEARCH, "--out", one).code).toBe(0);
    const r = run(...SEARCH, "--out", many, "--workers", "64");
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/--workers 64 capped at \d+: /);
    expect(readFileSync(join(many, "history.csv"), "utf8").split("\n").map((l) => l.split(",").slice(0, 5).join(","))).toEqual(
      readFileSync(join(one, "history.csv"), "utf8").split("\n").map((l) => l.split(",").slice(0, 5).join(",")),
    );
    expect(JSON.parse(readFileSync(join(many, "summary.json"), "utf8")).workers).toBeLessThan(64);
  });
});

describe("every command refuses settings that would give wrong numbers", () => {
  it("--seqlen beyond the context in stats, as in eval and prune", () => {
    for (const args of [["stats", "--nsamples", "2"], ["eval"], ["prune", "--sparsity", "0.5", "--nsamples", "2", "--out", fresh("p")]]) {
      const r = run(...args, "--seqlen", "257");
      expect(r.code, args[0]).toBe(2);
      expect(oneLine(r.stderr)).toContain("--seqlen 257 exceeds the model's context of 256");
    }
  });

  it("N:M patterns that prune nothing or do not fit are refused before calibration", () => {
    const a = run("prune", "--pattern", "0:4", "--out", fresh("p"));
    expect(a.code).toBe(2);
    expect(oneLine(a.stderr)).toContain("--pattern 0:4 is neither");
    const out = fresh("p");
    const b = run("prune", "--pattern", "2:3", "--out", out);
    expect(b.code).toBe(2);
    expect(oneLine(b.stderr)).toBe(`evosparse: --pattern 2:3 does not fit ${defaultModel()}: q has 128 inputs, which do not split into groups of M = 3`);
    expect(existsSync(out)).toBe(false);
  });

  it("window counts are positive everywhere: 0 is refused by eval, prune and search alike", () => {
    for (const [args, flag] of [
      [["eval"], "--eval-windows"],
      [["prune", "--sparsity", "0.5", "--out", fresh("p")], "--eval-windows"],
      [["search", "--sparsity", "0.5"], "--eval-windows"],
      [["search", "--sparsity", "0.5"], "--fitness-windows"],
      [["stats"], "--nsamples"],
    ] as const) {
      const r = run(...args, flag, "0");
      expect(r.code, flag).toBe(2);
      expect(oneLine(r.stderr)).toBe(`evosparse: ${flag} 0 is not a whole number >= 1 (see --help)`);
    }
    // eval's older name for the same option is refused the same way, under the name prune uses.
    const alias = run("eval", "--max-windows", "0");
    expect(alias.code).toBe(2);
    expect(oneLine(alias.stderr)).toBe("evosparse: --eval-windows 0 is not a whole number >= 1 (see --help)");
  });

  it("a value that is not a number is shown as typed", () => {
    const r = run("prune", "--sparsity", "abc", "--out", fresh("p"));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe('evosparse: --sparsity "abc" is not a number in [0, 1) (see --help)');
  });
});
