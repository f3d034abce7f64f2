/**
 * Shared pieces of the tests that run on the embedded default model (models/brown-llama)
 * and the built-in Brown texts, which every clone has: the CLI as a child process, temporary
 * folders, and the one-shot pruning pipeline as the reference the Pruner must match.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, expect } from "vitest";
import { layoutOf, type Layout } from "../../src/allocation/allocation.ts";
import { openCheckpointSync } from "../../src/checkpoint/open.ts";
import type { Checkpoint } from "../../src/checkpoint/types.ts";
import type { Window } from "../../src/data/windows.ts";
import { defaultModel } from "../../src/defaults.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { Decoder } from "../../src/model/decoder.ts";
import type { HostBlock } from "../../src/model/spec.ts";
import { pruneModel, type PruneRequest } from "../../src/prune/pipeline.ts";

export const embeddedModel = defaultModel();

/** The embedded model's prunable linears (block-major), read from its config. */
export const embeddedLayout = (): Layout => {
  const ckpt = openCheckpointSync(embeddedModel);
  try {
    return layoutOf(ckpt.spec);
  } finally {
    ckpt.close();
  }
};

export const bin = resolve(import.meta.dirname, "..", "..", "bin", "evosparse.mjs");

const childEnv = (): NodeJS.ProcessEnv => ({ ...process.env, CI: "true" });
/** Every command runs on the wasm backend, the one every clone has, unless a test names another. */
const withBackend = (args: readonly string[], backend = "wasm"): string[] => [bin, ...args, "--backend", backend];

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly pid: number;
}

/** Runs `evosparse ARGS --backend wasm` to its end. */
export const evosparse = (...args: string[]): CliResult => {
  const r = spawnSync(process.execPath, withBackend(args), { encoding: "utf8", env: childEnv() });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, pid: r.pid ?? -1 };
};

/** Runs `evosparse ARGS --backend wasm` to its end with extra environment variables; `signal` is what ended it, if one did. */
export const evosparseWithEnv = (env: NodeJS.ProcessEnv, ...args: string[]): CliResult & { readonly signal: NodeJS.Signals | null } => {
  const r = spawnSync(process.execPath, withBackend(args), { encoding: "utf8", env: { ...childEnv(), ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, pid: r.pid ?? -1, signal: r.signal };
};

/** Runs `evosparse ARGS --backend BACKEND` to its end. */
export const evosparseOn = (backend: string, ...args: string[]): CliResult => {
  const r = spawnSync(process.execPath, withBackend(args, backend), { encoding: "utf8", env: childEnv() });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, pid: r.pid ?? -1 };
};

/** The JSON a successful `--json` run printed; a failure shows its stderr. */
export const jsonOf = (r: CliResult): any => {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
};

/** `evosparse ARGS --backend wasm` as a child to watch and kill. */
export const spawnEvosparse = (...args: string[]): ChildProcess =>
  spawn(process.execPath, withBackend(args), { env: childEnv(), stdio: ["ignore", "pipe", "pipe"] });

/** The signal that ended the child (null when it exited by itself). */
export const ended = (child: ChildProcess): Promise<NodeJS.Signals | null> =>
  new Promise((done) => child.on("exit", (_code, signal) => done(signal)));

/** A new temporary folder, removed after the file's tests. */
export const tempRoot = (prefix: string): string => {
  const dir = mkdtempSync(join(tmpdir(), `evosparse-${prefix}-`));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

/** The lines of stderr that are evosparse errors. */
export const errorLines = (stderr: string): string[] =>
  stderr
    .trim()
    .split("\n")
    .filter((line) => line.startsWith("evosparse:"));

/** history.csv without its timing column: what must not depend on workers or interruptions. */
export const historyOf = (dir: string): string[] =>
  readFileSync(join(dir, "history.csv"), "utf8")
    .trim()
    .split("\n")
    .map((line) => line.replace(/,[^,]*$/, ""));

/**
 * The arguments of a printed reproduce command (`npx evosparse prune ... --out DIR`), to run
 * as `node bin/evosparse.mjs`, writing to `out` instead of DIR.
 */
export const reproduceArgs = (command: string, out: string): string[] => {
  const words = command.trim().split(/\s+/);
  expect(words.slice(0, 3)).toEqual(["npx", "evosparse", "prune"]);
  const args = words.slice(2);
  const at = args.indexOf("--out");
  expect(at).toBeGreaterThan(0);
  args.splice(at, 2, "--out", out);
  return args;
};

/** Bit-identical weights of every linear of every block. */
export const sameWeights = (a: readonly HostBlock[], b: readonly HostBlock[]): boolean =>
  a.length === b.length &&
  a.every((block, i) =>
    Object.entries(block.linears).every(([name, l]) => {
      const other = b[i]!.linears[name]!.weight.data;
      return l.weight.data.length === other.length && l.weight.data.every((v, e) => Object.is(v, other[e]));
    }),
  );

/** Zero weights of a linear. */
export const zerosOf = (data: ArrayLike<number>): number => {
  let n = 0;
  for (let e = 0; e < data.length; e++) if (data[e] === 0) n++;
  return n;
};

/**
 * Groups of m consecutive inputs of one output neuron (weights stored [in, out]) whose
 * zero count is not `n`, or with `atLeast`, below `n`.
 */
export const nmViolations = (weight: { readonly shape: readonly number[]; readonly data: ArrayLike<number> }, n: number, m: number, atLeast = false): number => {
  const [rows, cols] = weight.shape as [number, number];
  let wrong = 0;
  for (let o = 0; o < cols; o++) {
    for (let g = 0; g < rows; g += m) {
      let zeros = 0;
      for (let i = g; i < g + m; i++) if (weight.data[i * cols + o] === 0) zeros++;
      if (atLeast ? zeros < n : zeros !== n) wrong++;
    }
  }
  return wrong;
};

/** Runs `use` on a fresh decoder of the checkpoint's dense weights, disposing it after. */
const withDecoder = async <T>(checkpoint: Checkpoint, use: (decoder: Decoder, source: { numBlocks: number; load: (i: number) => HostBlock }) => Promise<T>): Promise<T> => {
  const source = { numBlocks: checkpoint.spec.numLayers, load: (i: number) => checkpoint.readBlock(i) };
  const decoder = Decoder.create(checkpoint.spec, checkpoint.readGlobals(), source);
  try {
    return await use(decoder, source);
  } finally {
    decoder.dispose();
  }
};

/** The one-shot pipeline on a fresh decoder of the checkpoint: pruned blocks and perplexity on `windows`. */
export const pipelinePrune = (checkpoint: Checkpoint, request: PruneRequest, windows: readonly Window[]): Promise<{ blocks: HostBlock[]; ppl: number }> =>
  withDecoder(checkpoint, async (decoder, source) => {
    const blocks = await pruneModel(decoder, source, request);
    return { blocks, ppl: (await perplexity(decoder, windows)).ppl };
  });

/** Perplexity of the dense checkpoint on `windows`. */
export const densePerplexity = (checkpoint: Checkpoint, windows: readonly Window[]): Promise<number> =>
  withDecoder(checkpoint, async (decoder) => (await perplexity(decoder, windows)).ppl);
