/**
 * The method registry: built-ins, a user's files (relative, absolute, a folder, a symlink,
 * TypeScript or JavaScript) and packages resolved from the working directory all load the
 * same way; a user's default space is found beside the method's file.
 */
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { availablePlugins, loadPlugin, methodSpec } from "../src/search/registry.ts";
import { loadSearchSpace, resolveSpaceFile } from "../src/search/space.ts";
import { sizeContext } from "../src/search/fitness.ts";
import { tempRoot } from "./helpers/embedded.ts";

const fixtures = resolve(import.meta.dirname, "fixtures", "methods");
const root = tempRoot("registry");

const context = sizeContext(
  Array.from({ length: 4 }, (_, block) => ({ block, linear: "mlp.up_proj", params: 100 })),
  4,
  0.5,
  { kind: "unstructured" },
);

const allocate = async (spec: string, cwd?: string): Promise<number[]> => {
  const plugin = await loadPlugin(spec, cwd);
  if (plugin.method.kind !== "direct") throw new Error("expected a direct method");
  return [...plugin.method.allocate(context, loadSearchSpace(plugin))];
};

describe("the method registry", () => {
  it("a built-in loads by its folder's name", async () => {
    expect(availablePlugins()).toEqual(expect.arrayContaining(["uniform", "owl", "dsa", "msp", "evopress"]));
    expect((await loadPlugin("uniform")).name).toBe("uniform");
  });

  it("a user's file loads from a relative path, an absolute path and a symlink; its default space is the file beside it", async () => {
    // tilt 0.05 over 4 blocks around 0.5: 0.425, 0.475, 0.525, 0.575.
    const expected = [0.425, 0.475, 0.525, 0.575];
    for (const [spec, cwd] of [
      ["./tilt.mjs", fixtures],
      [join(fixtures, "tilt.mjs"), root],
      ["../tilt.mjs", join(fixtures, "folder-method")],
    ] as const) {
      const got = await allocate(spec, cwd);
      got.forEach((v, k) => expect(v).toBeCloseTo(expected[k]!, 9));
    }
    const linked = join(root, "linked");
    symlinkSync(fixtures, linked);
    expect(await allocate("./linked/tilt.mjs", root)).toEqual(await allocate(join(fixtures, "tilt.mjs")));
    expect(resolveSpaceFile(await loadPlugin(join(fixtures, "tilt.mjs")))).toBe(join(fixtures, "tilt.json"));
  });

  it("a folder with a TypeScript index loads as a method, with its own default space", async () => {
    const plugin = await loadPlugin("./folder-method", fixtures);
    expect(plugin.name).toBe("folder-tilt");
    const got = await allocate(join(fixtures, "folder-method"));
    // tilt 0.01 downwards: 0.515, 0.505, 0.495, 0.485.
    [0.515, 0.505, 0.495, 0.485].forEach((v, k) => expect(got[k]).toBeCloseTo(v, 9));
  });

  it("a package name resolves from the working directory's node_modules (exports, then main)", async () => {
    const work = join(root, "work");
    for (const [name, manifest] of [
      ["evosparse-method-tilt", { name: "evosparse-method-tilt", type: "module", exports: { ".": { import: "./lib/index.mjs" } } }],
      ["@someone/tilt", { name: "@someone/tilt", type: "module", main: "lib/index.mjs" }],
    ] as const) {
      const dir = join(work, "node_modules", name);
      mkdirSync(join(dir, "lib"), { recursive: true });
      writeFileSync(join(dir, "package.json"), JSON.stringify(manifest));
      writeFileSync(
        join(dir, "lib", "index.mjs"),
        `export const plugin = { name: "tilt", describe: "", spaceSchema: {}, defaultSpace: "tilt.json", patterns: ["unstructured"], method: { kind: "direct", allocate: () => [] } };\n`,
      );
      // Found from a folder below the one holding node_modules, as import would.
      mkdirSync(join(work, "sub"), { recursive: true });
      expect((await loadPlugin(name, join(work, "sub"))).name).toBe("tilt");
      expect(methodSpec(name, work)).toBe(name);
    }
  });

  it("refuses an unknown name listing the built-ins, a missing file, and a module without a valid plugin, naming the file", async () => {
    await expect(loadPlugin("no-such-method", root)).rejects.toThrow(/unknown method "no-such-method"; built-in: .*uniform.*; or a path to a \.ts, \.mts or \.mjs file/);
    await expect(loadPlugin("./missing.mjs", root)).rejects.toThrow(/\.\/missing\.mjs: no such file/);
    await expect(loadPlugin("./no-plugin.mjs", fixtures)).rejects.toThrow(/no-plugin\.mjs: does not export `plugin`/);
  });

  it("a file is saved in a run's settings as its absolute path, a built-in by its name", () => {
    expect(methodSpec("./tilt.mjs", fixtures)).toBe(join(fixtures, "tilt.mjs"));
    expect(methodSpec("msp", root)).toBe("msp");
  });
});
