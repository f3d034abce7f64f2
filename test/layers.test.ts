/**
 * The source folders form layers: a folder imports only from folders below it, so the
 * pipeline reads bottom-up (checkpoint -> model -> calibration -> scores -> allocation ->
 * masks -> evaluation) and the jobs that compose it sit above every layer.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const src = resolve(import.meta.dirname, "..", "src");
const plugins = resolve(import.meta.dirname, "..", "plugins");

/** Each folder's layer, lowest first; folders of one layer do not import each other. */
const LAYERS: readonly (readonly string[])[] = [
  ["."],
  ["model", "tokenizer", "backend", "output", "report", "workers", "engine", "settings"],
  ["data", "checkpoint/architectures", "memory"],
  ["checkpoint"],
  ["allocation"],
  ["eval"],
  ["prune", "train"],
  ["search"],
  ["queue"],
  ["jobs"],
  ["cli", "api"],
];
const rank = new Map(LAYERS.flatMap((folders, k) => folders.map((f) => [f, k] as const)));

const sources = (dir: string): string[] =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith(".ts") ? [path] : [];
  });

const folderOf = (file: string): string => relative(src, dirname(file)) || ".";

/** Folder -> folders it imports from (relative imports and worker URLs). */
const edges = (): Map<string, Set<string>> => {
  const graph = new Map<string, Set<string>>();
  for (const file of sources(src)) {
    const text = readFileSync(file, "utf8");
    const from = folderOf(file);
    for (const match of text.matchAll(/(?:from\s*|import\s*\(\s*|new URL\(\s*)["'](\.{1,2}\/[^"']+)["']/g)) {
      const target = resolve(dirname(file), match[1]!);
      if (!target.startsWith(src)) continue;
      const to = folderOf(/\.[cm]?[jt]s$/.test(target) ? target : join(target, "x.ts"));
      if (to !== from) (graph.get(from) ?? graph.set(from, new Set()).get(from)!).add(to);
    }
  }
  return graph;
};

describe("the source layers", () => {
  it("every folder has a layer", () => {
    const folders = new Set(sources(src).map(folderOf));
    expect([...folders].filter((f) => !rank.has(f))).toEqual([]);
  });

  it("no folder imports from its own layer or one above it", () => {
    const upward: string[] = [];
    for (const [from, targets] of edges()) {
      for (const to of targets) if (!(rank.get(to)! < rank.get(from)!)) upward.push(`${from} -> ${to}`);
    }
    expect(upward).toEqual([]);
  });

  it("the folder graph has no cycle", () => {
    const graph = edges();
    const state = new Map<string, "open" | "done">();
    const cycles: string[] = [];
    const visit = (node: string, path: string[]): void => {
      if (state.get(node) === "done") return;
      if (state.get(node) === "open") {
        cycles.push([...path.slice(path.indexOf(node)), node].join(" -> "));
        return;
      }
      state.set(node, "open");
      for (const next of graph.get(node) ?? []) visit(next, [...path, node]);
      state.set(node, "done");
    };
    for (const node of graph.keys()) visit(node, []);
    expect(cycles).toEqual([]);
  });

  /**
   * A plugin sees numbers, never tensors: besides its own folder it imports only the
   * plugin interface, the engine, the allocation helpers, the seeded generator and the
   * errors (what `evosparse/plugin` offers a user's method), and of packages only effect.
   */
  it("plugins import only the plugin interface, the engine, allocation helpers, rng and errors", () => {
    const allowed = [/^src\/search\/plugin\.ts$/, /^src\/engine\//, /^src\/allocation\//, /^src\/rng\.ts$/, /^src\/errors\.ts$/];
    const outside: string[] = [];
    const files = readdirSync(plugins).flatMap((name) => (statSync(join(plugins, name)).isDirectory() ? sources(join(plugins, name)) : []));
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      const text = readFileSync(file, "utf8");
      for (const match of text.matchAll(/(?:from\s*|import\s*\(\s*)["']([^"']+)["']/g)) {
        const spec = match[1]!;
        if (!spec.startsWith(".")) {
          if (spec !== "effect") outside.push(`${relative(plugins, file)} -> ${spec}`);
          continue;
        }
        const target = resolve(dirname(file), spec);
        if (target.startsWith(dirname(file))) continue;
        const fromRoot = relative(resolve(plugins, ".."), target);
        if (!allowed.some((rule) => rule.test(fromRoot))) outside.push(`${relative(plugins, file)} -> ${fromRoot}`);
      }
    }
    expect(outside).toEqual([]);
  });
});
