/**
 * Inputs are read within bounds: only regular files (a device never ends, a named pipe
 * blocks), each kind within a size limit decided before reading, and a text with a window
 * limit tokenised only as far as its windows need, giving exactly the windows of the whole
 * text. The commands run for real on the embedded model.
 */
import { spawnSync } from "node:child_process";
import { cpSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { brownText } from "../src/data/brown.ts";
import { contiguousWindows } from "../src/data/windows.ts";
import { defaultModel } from "../src/defaults.ts";
import { DataError } from "../src/errors.ts";
import { evaluationWindows } from "../src/eval/inputs.ts";
import { readBounded, READ_LIMITS } from "../src/reads.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { expectTaggedError } from "./helpers/errors.ts";
import { oneLine, runCli, scratchFolder } from "./helpers/cli.ts";

const { root, fresh } = scratchFolder("evosparse-inputs-");
const run = (...args: string[]) => runCli(args, { timeout: 60_000 });
const fifo = (): string | undefined => {
  const path = fresh("pipe");
  return spawnSync("mkfifo", [path]).status === 0 ? path : undefined;
};

describe("the read layer", () => {
  it("refuses devices and pipes without blocking, and files over their kind's limit from their size", () => {
    expectTaggedError(DataError, () => readBounded("/dev/zero", "text"), /is a character device, not a regular file/, "/dev/zero");
    const pipe = fifo();
    if (pipe !== undefined) expectTaggedError(DataError, () => readBounded(pipe, "config"), /is a named pipe \(FIFO\), not a regular file/, pipe);
    const sparse = fresh("sparse.json");
    writeFileSync(sparse, "");
    truncateSync(sparse, READ_LIMITS.config + 1);
    expectTaggedError(DataError, () => readBounded(sparse, "config"), /is 16 MiB, more than a config.json may be \(16 MiB\)/, sparse);
  });
});

describe("commands refuse unbounded inputs in one line", () => {
  it("/dev/zero and a FIFO as --data, --space, --allocation, --calib: refused, no run folder left", () => {
    const pipe = fifo();
    for (const source of ["/dev/zero", ...(pipe ? [pipe] : [])]) {
      const kind = source === "/dev/zero" ? "a character device" : "a named pipe \\(FIFO\\)";
      const line = new RegExp(`^evosparse: ${source}: is ${kind}, not a regular file`);
      expect(oneLine(run("eval", "--data", source, "--backend", "wasm").stderr)).toMatch(line);
      const out = fresh("run");
      const search = run("search", "--space", source, "--sparsity", "0.7", "--out", out, "--backend", "wasm");
      expect(search.code).toBe(1);
      expect(oneLine(search.stderr)).toMatch(line);
      expect(readdirSync(root)).not.toContain(out.slice(root.length + 1));
      expect(oneLine(run("prune", "--allocation", source, "--sparsity", "0.5", "--out", fresh("p"), "--backend", "wasm").stderr)).toMatch(line);
    }
  });

  it("a model whose tokenizer.json or config.json is /dev/zero: one line naming the file", () => {
    for (const name of ["tokenizer.json", "config.json"]) {
      const model = fresh("model");
      cpSync(defaultModel(), model, { recursive: true });
      rmSync(join(model, name));
      symlinkSync("/dev/zero", join(model, name));
      const r = run("eval", "--model", model, "--max-windows", "1", "--backend", "wasm");
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(new RegExp(`${name}: is a character device, not a regular file`));
    }
  });

  it("a text too large to read whole is refused from its size, and read as far as --max-windows needs", () => {
    const file = join(root, "huge.txt");
    writeFileSync(file, brownText("test").slice(0, 100_000).replace(/\n?$/, "\n"));
    // A sparse file: 600 MiB on paper, a few KiB on disk.
    truncateSync(file, 600 * 2 ** 20);
    const whole = run("eval", "--data", file, "--backend", "wasm");
    expect(whole.code).toBe(1);
    expect(oneLine(whole.stderr)).toMatch(/huge\.txt: is 600 MiB, more than a text read whole may be \(512 MiB\)/);
    const limited = run("eval", "--data", file, "--max-windows", "2", "--backend", "wasm", "--json");
    expect(limited.code).toBe(0);
    expect(JSON.parse(limited.stdout).windows).toBe(2);
  });
});

describe("a window limit reads only the windows' text", () => {
  const tokenizer = loadTokenizer(join(defaultModel(), "tokenizer.json"));
  const file = join(root, "brown-test.txt");
  const whole = brownText("test");
  writeFileSync(file, whole);
  const allTokens = tokenizer.encode(whole);

  it("property: the windows under --max-windows K are the first K windows of the whole text", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 40 }), fc.constantFrom(16, 100, 256), fc.boolean(), (k, seqlen, bos) => {
        const got = evaluationWindows({ data: file, format: "text", maxWindows: k, bos }, tokenizer, seqlen);
        const want = contiguousWindows(allTokens, seqlen, { maxWindows: k, ...(bos ? { bos: tokenizer.bosId! } : {}) });
        expect(got).toEqual(want);
      }),
      { numRuns: 12 },
    );
  });
});


