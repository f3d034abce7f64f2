/**
 * evosparse as a user gets it: `npm pack`, the tarball extracted into node_modules/ of an
 * empty folder (its dependencies linked from this checkout's node_modules, so nothing is
 * downloaded), and the examples run from there. The installed bin runs compiled JavaScript
 * (tsx is not even installed for the JavaScript runs), run folders land in the working
 * directory, and the package's own folder is never written.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, relative, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { tempRoot } from "./helpers/embedded.ts";

const repo = resolve(import.meta.dirname, "..");
const root = tempRoot("package");
const modules = join(root, "node_modules");
const pkg = join(modules, "evosparse");
const work = join(root, "work");
const bin = join(pkg, "bin", "evosparse.mjs");

/** Every file of a folder with its size and modification time, to see whether anything wrote there. */
const snapshot = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => {
      const path = join(e.parentPath, e.name);
      const s = statSync(path);
      return `${relative(dir, path)} ${s.size} ${s.mtimeMs}`;
    })
    .sort();

/** Links one of this checkout's installed packages into the temporary node_modules. */
const link = (name: string): void => {
  const target = join(modules, name);
  if (!existsSync(target)) symlinkSync(realpathSync(join(repo, "node_modules", name)), target);
};

const run = (file: string, ...args: string[]) => {
  const r = spawnSync(process.execPath, [file, ...args], { cwd: work, encoding: "utf8", env: { ...process.env, CI: "true" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

/** The history's generations with the distinct genomes each evaluated. */
const generationsOf = (dir: string): Map<string, Set<string>> => {
  const generations = new Map<string, Set<string>>();
  for (const line of readFileSync(join(dir, "history.csv"), "utf8").trim().split("\n").slice(1)) {
    const [generation, , , genome] = line.split(",");
    (generations.get(generation!) ?? generations.set(generation!, new Set()).get(generation!)!).add(genome!);
  }
  return generations;
};

let before: string[];

beforeAll(() => {
  const packed = join(root, "packed");
  mkdirSync(packed, { recursive: true });
  // prepack compiles dist/ first.
  execFileSync("npm", ["pack", "--pack-destination", packed, "--silent"], { cwd: repo, stdio: "ignore" });
  const tarball = readdirSync(packed).find((f) => f.endsWith(".tgz"))!;
  mkdirSync(modules, { recursive: true });
  execFileSync("tar", ["-xzf", join(packed, tarball), "-C", modules]);
  renameSync(join(modules, "package"), pkg);
  // The dependencies, hoisted as npm would install them; tsx only when a TypeScript method is named.
  const manifest = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
  for (const name of Object.keys(manifest.dependencies)) {
    const scope = name.startsWith("@") ? name.split("/")[0]! : undefined;
    if (scope) mkdirSync(join(modules, scope), { recursive: true });
    if (name !== "tsx") link(name);
  }
  // Their own dependencies, which npm would hoist beside them.
  for (const name of readdirSync(join(repo, "node_modules"))) {
    if (name.startsWith(".") || name === "tsx" || name === "evosparse" || name === "typescript" || name === "vitest") continue;
    if (name.startsWith("@")) {
      mkdirSync(join(modules, name), { recursive: true });
      for (const sub of readdirSync(join(repo, "node_modules", name))) link(`${name}/${sub}`);
    } else link(name);
  }
  mkdirSync(work, { recursive: true });
  cpSync(join(pkg, "examples"), work, { recursive: true });
  // The user's project: an ES module package, as `npm init` with "type": "module" makes it.
  writeFileSync(join(work, "package.json"), JSON.stringify({ name: "my-methods", private: true, type: "module" }));
  before = snapshot(pkg);
}, 600_000);

describe("the packed, installed package", () => {
  it("ships compiled JavaScript with declarations, the examples and the default model; no sources, tests or benches", () => {
    const manifest = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
    for (const entry of [manifest.types, manifest.exports["."].default, manifest.exports["."].types, manifest.exports["./plugin"].default, manifest.exports["./plugin"].types]) {
      expect(existsSync(join(pkg, entry)), entry).toBe(true);
    }
    for (const absent of ["src", "test", "bench", "plugins/dsa/index.ts"]) expect(existsSync(join(pkg, absent)), absent).toBe(false);
    expect(existsSync(join(pkg, "dist", "plugins", "dsa", "index.js"))).toBe(true);
    expect(existsSync(join(pkg, "models", "brown-llama", "model.safetensors"))).toBe(true);
    expect(existsSync(join(modules, "tsx"))).toBe(false);
  });

  it("a JavaScript evolve method from the user's folder searches several generations of distinct candidates, into ./results", () => {
    const r = run(bin, "search", "--method", "./quadratic-method.mjs", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "1", "--eval-windows", "2",
      "--population", "4", "--generations", "3", "--final-mode", "dense", "--backend", "wasm", "--json");
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.generations).toBe(3);
    expect(summary.final.results[0].method).toBe("quadratic");
    expect(summary.settings.method).toBe(join(realpathSync(work), "quadratic-method.mjs"));
    expect(realpathSync(summary.out).startsWith(join(realpathSync(work), "results", "quadratic-"))).toBe(true);
    const generations = generationsOf(summary.out);
    expect(generations.size).toBe(3);
    // Every generation brings new genomes, and the search moved off the uniform start.
    const all = new Set([...generations.values()].flatMap((g) => [...g]));
    expect(all.size).toBeGreaterThan(generations.get("0")!.size);
    for (const genomes of generations.values()) expect(genomes.size).toBeGreaterThan(1);
    expect(summary.best.sparsities.some((s: number) => Math.abs(s - 0.5) > 1e-3)).toBe(true);
  });

  it("examples/search-from-code.mjs searches through the API and prints the best allocation", () => {
    const r = run("search-from-code.mjs");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/generation 1\/3: best [\d.]+\ngeneration 2\/3: best [\d.]+\ngeneration 3\/3: best [\d.]+/);
    const sparsities = /block sparsities: ([\d. ]+)\n/.exec(r.stdout)![1]!.trim().split(" ").map(Number);
    // One per block of the embedded model (8 blocks), averaging the target.
    expect(sparsities.length).toBe(8);
    expect(sparsities.reduce((s, v) => s + v, 0) / 8).toBeCloseTo(0.5, 2);
    const folder = /run folder: (.+)\n/.exec(r.stdout)![1]!;
    expect(realpathSync(folder).startsWith(join(realpathSync(work), "results"))).toBe(true);
    expect(generationsOf(folder).size).toBe(3);
  });

  it("the API and the plugin entry import as packages, with the engine running a search over anything", () => {
    const script = join(work, "engine.mjs");
    writeFileSync(
      script,
      `import * as api from "evosparse";
import * as plugin from "evosparse/plugin";
const genome = {
  create: (rng) => rng.int(100000), mutate: (x, rng) => Math.max(0, Math.min(99999, x + (rng.next() < 0.5 ? -1 : 1) * (1 + rng.int(2000)))),
  crossover: (a, b) => Math.round((a + b) / 2), key: String, decode: (x) => x, describe: String, encode: (x) => x, restore: (x) => x,
};
const result = await api.evolveAsync({ genome, phenotypeKey: String, seed: 1, population: 8, generations: 20,
  evaluate: async (batch) => batch.map((x) => api.fitnessOk((x - 4242) ** 2)) });
console.log(JSON.stringify({
  functions: ["search", "prune", "evaluate", "stats", "evolve", "evolveAsync", "staged", "generational"].filter((f) => typeof api[f] === "function"),
  pluginHelpers: ["projectToTarget", "effectiveBounds", "staged"].filter((f) => typeof plugin[f] === "function"),
  schema: typeof plugin.Schema.Struct, best: result.best.phenotype, first: result.history.filter((r) => r.generation === 0).map((r) => r.fitness),
}));
`,
    );
    const r = run(script);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.functions).toEqual(["search", "prune", "evaluate", "stats", "evolve", "evolveAsync", "staged", "generational"]);
    expect(out.pluginHelpers).toEqual(["projectToTarget", "effectiveBounds", "staged"]);
    expect(out.schema).toBe("function");
    // Better than every individual of the first generation: the engine searched.
    expect((out.best - 4242) ** 2).toBeLessThan(Math.min(...out.first));
  });

  it("the declarations type a TypeScript consumer of both entries", () => {
    writeFileSync(
      join(work, "consumer.ts"),
      `import { search, evolve, type SearchSummary, type Genome, type Strategy } from "evosparse";
import type { MethodPlugin } from "evosparse/plugin";
export const best = async (): Promise<readonly number[]> => ((await search({ method: "msp", sparsity: 0.5 })) satisfies SearchSummary).best.sparsities;
export type Parts = [typeof evolve, Genome<number, number>, Strategy<number, number>, MethodPlugin];
// @ts-expect-error sparsity is a number
search({ sparsity: "half" });
`,
    );
    const tsc = createRequire(join(repo, "package.json")).resolve("typescript/bin/tsc");
    const r = spawnSync(process.execPath, [tsc, "--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext", "--types", "node", "--typeRoots", join(repo, "node_modules", "@types"), "consumer.ts"], { cwd: work, encoding: "utf8" });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  it("a TypeScript method from the user's folder prunes (tsx loaded only for it)", () => {
    link("tsx");
    const r = run(bin, "prune", "--allocation", "./tilt-method.ts", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "128", "--eval", "brown:test", "--eval-windows", "2", "--out", "pruned", "--backend", "wasm", "--json");
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(realpathSync(resolve(work, report.out))).toBe(join(realpathSync(work), "pruned"));
    // tilt 0.02 per block around the target: rising sparsity with depth, mean 0.5.
    const blocks = new Map<number, number>();
    for (const l of report.linears) blocks.set(l.block, l.requested);
    const sparsities = [...blocks.values()];
    for (let b = 1; b < sparsities.length; b++) expect(sparsities[b]! - sparsities[b - 1]!).toBeCloseTo(0.02, 6);
    expect(report.requestedSparsity).toBeCloseTo(0.5, 9);
  });

  it("plugins/README.md's templates (direct, grid, evolve with its own strategy) run as written, from the user's folder", () => {
    const readme = readFileSync(join(pkg, "plugins", "README.md"), "utf8");
    const templates = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((code) => code.includes("export const plugin"));
    const names: string[] = [];
    for (const code of templates) {
      const name = /name: "([\w-]+)"/.exec(code)![1]!;
      // Each template names its default space with the file's JSON in a comment.
      const [, space, json] = /defaultSpace: "([^"]+)",\s*\/\/\s*(\{.*\})/.exec(code)!;
      writeFileSync(join(work, `${name}.mjs`), code);
      writeFileSync(join(work, space!), json!);
      names.push(name);
    }
    expect(names).toEqual(["tilt", "slopes", "climb"]);
    const small = ["--nsamples", "2", "--seqlen", "128", "--backend", "wasm", "--json"];
    for (const name of ["tilt", "slopes"]) {
      const r = run(bin, "prune", "--allocation", `./${name}.mjs`, "--sparsity", "0.5", "--valid-windows", "1", "--out", `pruned-${name}`, ...small);
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout);
      expect(report.requestedSparsity).toBeCloseTo(0.5, 9);
      if (name === "slopes") expect(report.trials.map((t: { label: string }) => t.label)).toEqual(["slope=-0.02", "slope=0", "slope=0.02", "slope=0.04"]);
    }
    const r = run(bin, "search", "--method", "./climb.mjs", "--sparsity", "0.5", "--fitness-windows", "1", "--eval-windows", "2", "--generations", "3", "--final-mode", "dense", ...small);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.generations).toBe(3);
    const generations = generationsOf(summary.out);
    expect(generations.size).toBe(3);
    expect(generations.get("1")!.size).toBeGreaterThan(1);
  });

  it("nothing was written inside the installed package", () => {
    expect(snapshot(pkg)).toEqual(before);
  });
});
