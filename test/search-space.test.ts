import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DataError } from "../src/errors.ts";
import { Rng } from "../src/rng.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../src/search/plugin.ts";
import { availablePlugins, loadPlugin } from "../src/search/registry.ts";
import { loadSearchSpace, parseSearchSpace, resolveSpaceFile, searchSpacesDir } from "../src/search/space.ts";
import { plugin as dsaPlugin } from "../plugins/dsa/index.ts";
import { expectTaggedError } from "./helpers/errors.ts";

const plugins: MethodPlugin<unknown>[] = await Promise.all(availablePlugins().map((name) => loadPlugin(name)));
const byName = new Map(plugins.map((p) => [p.name, p]));

/** The plugin a shipped file belongs to: `msp-nm.json` -> msp-nm, `dsa-small.json` -> dsa. */
const pluginOfFile = (file: string): MethodPlugin<unknown> => {
  const base = file.replace(/\.json$/, "");
  const owners = plugins.filter((p) => base === p.name || base.startsWith(`${p.name}-`));
  owners.sort((a, b) => b.name.length - a.name.length);
  if (owners.length === 0) throw new Error(`no plugin for ${file}`);
  return owners[0];
};

const scratch = mkdtempSync(join(tmpdir(), "evosparse-spaces-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let fileCount = 0;
/** Writes `text` to a fresh file and returns its path. */
const writeSpace = (text: string): string => {
  const file = join(scratch, `space-${fileCount++}.json`);
  writeFileSync(file, text);
  return file;
};

const dsaBase = {
  pre: ["abs", "log"],
  preCount: [0, 2],
  reductions: ["mean", "median"],
  transform: ["identity", "tanh"],
  transformCount: [1, 2],
  lambda: [0.02, 0.2],
};

describe("shipped search spaces", () => {
  const files = readdirSync(searchSpacesDir).filter((f) => f.endsWith(".json"));

  it("ship one default space per plugin, each of which loads", () => {
    for (const plugin of plugins) {
      expect(files).toContain(plugin.defaultSpace);
      expect(() => loadSearchSpace(plugin)).not.toThrow();
    }
  });

  for (const file of files) {
    it(`${file} loads with its plugin`, () => {
      const plugin = pluginOfFile(file);
      expect(() => loadSearchSpace(plugin, join(searchSpacesDir, file))).not.toThrow();
      // A bare file name refers to the shipped folder.
      expect(resolveSpaceFile(plugin, file)).toBe(join(searchSpacesDir, file));
    });
  }

  it("dsa-small.json is a smaller op set whose expressions use only its ops", () => {
    const space = loadSearchSpace(dsaPlugin, "dsa-small.json");
    expect(space.pre).toEqual(["abs", "log", "zscore"]);
    expect(space.bounds).toEqual({ lo: 0, hi: 0.9 });
    const scores = Array.from({ length: 6 }, (_, b) => Float32Array.from({ length: 64 }, (_, i) => Math.sin(i * (b + 1)) * (b + 1)));
    const context: MethodContext = {
      blocks: 6,
      blockParams: [4, 4, 4, 4, 4, 4],
      linears: [0, 1, 2, 3, 4, 5].map((block) => ({ block, linear: "w", params: 4 })),
      target: 0.6,
      bounds: { lo: 0, hi: 0.99 },
      pattern: { kind: "unstructured" },
      statistics: {
        outlierShares: () => [],
        fisherTraces: () => [],
        elementScores: (b) => scores[b],
        nonOutlierRatio: () => 0,
      },
    };
    const method = dsaPlugin.method;
    if (method.kind !== "evolve") throw new Error("dsa is evolutionary");
    const genome = method.genome(context, space);
    const rng = new Rng(3);
    for (let index = 0; index < 50; index++) {
      const e = genome.create(rng, index);
      for (const op of e.pre) expect(space.pre).toContain(op);
      expect(space.reductions).toContain(e.reduction);
      const allocation: BlockAllocation = genome.decode(e);
      // The space's own bounds narrow the run's.
      for (const s of allocation) expect(s).toBeLessThanOrEqual(0.9);
    }
  });
});

describe("broken search spaces", () => {
  const dsa = byName.get("dsa")!;
  const cases: [string, MethodPlugin<unknown>, string, RegExp][] = [
    ["an unknown pre op", dsa, JSON.stringify({ ...dsaBase, pre: ["abs", "log", "foo"] }), /pre\[2\]: unknown op "foo"; known: identity, abs/],
    ["an unknown reduction", dsa, JSON.stringify({ ...dsaBase, reductions: ["mean", "mode"] }), /reductions\[1\]: unknown reduction "mode"/],
    ["an unknown transform op", dsa, JSON.stringify({ ...dsaBase, transform: ["cube"] }), /transform\[0\]: unknown op "cube"/],
    ["an empty reductions list", dsa, JSON.stringify({ ...dsaBase, reductions: [] }), /reductions: empty/],
    ["an empty transform stage that must have ops", dsa, JSON.stringify({ ...dsaBase, transform: [] }), /transform: empty/],
    ["an op listed twice", dsa, JSON.stringify({ ...dsaBase, pre: ["abs", "abs"] }), /pre\[1\]: "abs" is listed twice/],
    ["a count range with min > max", dsa, JSON.stringify({ ...dsaBase, transformCount: [2, 1] }), /transformCount: min 2 > max 1/],
    ["a fractional count", dsa, JSON.stringify({ ...dsaBase, preCount: [0, 1.5] }), /preCount\[1\]/],
    ["lambda with min > max", dsa, JSON.stringify({ ...dsaBase, lambda: [0.3, 0.1] }), /lambda: min 0.3 > max 0.1/],
    ["a negative lambda", dsa, JSON.stringify({ ...dsaBase, lambda: [-0.1, 0.1] }), /lambda: \[-0.1, 0.1\] leaves \[0, 1\]/],
    ["bounds with lo > hi", dsa, JSON.stringify({ ...dsaBase, bounds: { lo: 0.5, hi: 0.2 } }), /bounds: lo 0.5 > hi 0.2/],
    ["bounds reaching 1", dsa, JSON.stringify({ ...dsaBase, bounds: { lo: 0, hi: 1 } }), /bounds.hi: 1 is outside \[0, 1\)/],
    ["a misspelt field", dsa, JSON.stringify({ ...dsaBase, lamda: [0.1, 0.2] }), /lamda: unknown field/],
    ["a missing field", dsa, JSON.stringify({ ...dsaBase, reductions: undefined }), /reductions: missing/],
    ["text that is not JSON", dsa, "{ pre: [abs] ", /not valid JSON/],
    ["a list instead of an object", dsa, "[1, 2]", /Expected object/],
    ["an empty λ list", byName.get("msp")!, JSON.stringify({ lambdas: [], jitter: 0, delta: 0.01, normalisation: "log" }), /lambdas: empty/],
    ["an unknown normalisation", byName.get("msp")!, JSON.stringify({ lambdas: [0.1], jitter: 0, delta: 0.01, normalisation: "zscore" }), /normalisation/],
    ["a zero mutation step", byName.get("msp")!, JSON.stringify({ lambdas: [0.1], jitter: 0, delta: 0, normalisation: "log" }), /delta: must be positive/],
    ["N reaching M", byName.get("msp-nm")!, JSON.stringify({ m: 4, n: [0, 4], lambdas: [0.1], jitter: 0, normalisation: "log" }), /n: max 4 must be below m = 4/],
    ["an M of 1", byName.get("msp-nm")!, JSON.stringify({ m: 1, n: [0, 0], lambdas: [0.1], jitter: 0, normalisation: "log" }), /m: 1 is outside 2\.\.64/],
    ["an M the host does not measure", byName.get("mrp")!, JSON.stringify({ delta: 0.01, m: 3 }), /m: 3 is not supported/],
    ["a zero β step", byName.get("atp")!, JSON.stringify({ step: 0, maxPoints: 10 }), /step: must be positive/],
    ["an OWL λ above 0.5", byName.get("owl")!, JSON.stringify({ m: 5, lambda: 0.7 }), /lambda: 0.7 is outside \[0, 0.5\]/],
    ["uniform bounds below 0", byName.get("uniform")!, JSON.stringify({ bounds: { lo: -0.1, hi: 0.5 } }), /bounds.lo: -0.1 is outside/],
  ];
  for (const [what, plugin, text, pattern] of cases) {
    it(`${plugin.name}: ${what} is a DataError naming the file and the field`, () => {
      const file = writeSpace(text);
      expectTaggedError(DataError, () => loadSearchSpace(plugin, file), pattern, file);
    });
  }

  it("reports every problem of a file at once", () => {
    const file = writeSpace(JSON.stringify({ ...dsaBase, pre: ["foo"], lambda: [0.3, 0.1] }));
    expectTaggedError(DataError, () => loadSearchSpace(dsa, file), /pre\[0\]: unknown op "foo".*; lambda: min 0.3 > max 0.1/, file);
  });

  it("a missing file is a DataError naming it", () => {
    const file = join(scratch, "absent.json");
    expectTaggedError(DataError, () => loadSearchSpace(dsa, file), /no such search-space file/, file);
  });

  it("arbitrary JSON either decodes or is a DataError, for every plugin", () => {
    fc.assert(
      fc.property(fc.json(), fc.constantFrom(...plugins), (text, plugin) => {
        try {
          parseSearchSpace(plugin, text, "arbitrary.json");
        } catch (error) {
          expect(error).toBeInstanceOf(DataError);
          expect((error as DataError).file).toBe("arbitrary.json");
        }
      }),
      { numRuns: 500 },
    );
  });

  it("near-valid spaces (one field replaced by arbitrary JSON) either decode or are a DataError naming that field", () => {
    const dsaKeys = Object.keys(dsaBase);
    fc.assert(
      fc.property(fc.constantFrom(...dsaKeys), fc.jsonValue(), (key, value) => {
        const text = JSON.stringify({ ...dsaBase, [key]: value });
        try {
          parseSearchSpace(dsa, text, "near.json");
        } catch (error) {
          expect(error).toBeInstanceOf(DataError);
          expect((error as DataError).problem).toContain(key);
        }
      }),
      { numRuns: 500 },
    );
  });
});
