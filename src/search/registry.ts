/**
 * The registry of allocation methods. A method is named on the command line in one of three
 * ways, and all three load the same way, so the built-ins are no different from a user's:
 *  - a built-in: a folder `plugins/<name>/` whose index exports `plugin` (adding a folder
 *    adds a method; nothing here lists them by hand);
 *  - a file: `./my-method.mjs`, `/abs/method.ts`, a folder with an index file;
 *  - a package: `evosparse-method-foo`, resolved from the working directory.
 * A user's method may keep its default space beside its file.
 */
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DataError, UsageError } from "../errors.ts";
import { importModuleFile, isPathSpec, MODULE_EXTENSIONS, resolveModuleFile, resolvePackage } from "../user-module.ts";
import type { MethodPlugin } from "./plugin.ts";

/** The folder of the built-in method plugins (beside src/ from source, beside dist/src/ compiled). */
export const pluginsDir = fileURLToPath(new URL("../../plugins/", import.meta.url));

const entryOf = (name: string): string | undefined =>
  MODULE_EXTENSIONS.map((e) => join(pluginsDir, name, `index${e}`)).find((f) => existsSync(f));

/** Names of the built-in methods, sorted. */
export const availablePlugins = (): string[] =>
  existsSync(pluginsDir)
    ? readdirSync(pluginsDir, { withFileTypes: true })
        .filter((entry) => entry.isDirectory() && entryOf(entry.name) !== undefined)
        .map((entry) => entry.name)
        .sort()
    : [];

const kinds = ["direct", "grid", "evolve"];

/** The parts of the interface the host relies on before calling a plugin. */
export const pluginProblem = (plugin: unknown, name?: string): string | undefined => {
  if (typeof plugin !== "object" || plugin === null) return "does not export `plugin`";
  const p = plugin as Partial<MethodPlugin<unknown>>;
  if (typeof p.name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(p.name)) return `exports a plugin whose name ${JSON.stringify(p.name)} is not a plain word (letters, digits, . _ -)`;
  if (name !== undefined && p.name !== name) return `exports a plugin named ${JSON.stringify(p.name)}, but its folder is ${name}`;
  if (p.defaultSpace !== undefined && typeof p.defaultSpace !== "string") return "has a defaultSpace that is not a file name";
  if (p.spaceSchema === undefined) return "has no spaceSchema";
  if (!Array.isArray(p.patterns)) return "has no patterns";
  if (typeof p.method !== "object" || p.method === null || !kinds.includes(p.method.kind)) {
    return `has no method of kind ${kinds.join(", ")}`;
  }
  return undefined;
};

/** Where each loaded plugin came from: its file, for its default space and for messages. */
const origins = new WeakMap<object, { readonly file: string; readonly builtIn: boolean }>();

/** The folder of a user's plugin file (its default space may live there); undefined for built-ins. */
export const pluginFolder = (plugin: MethodPlugin<unknown>): string | undefined => {
  const origin = origins.get(plugin);
  return origin && !origin.builtIn ? dirname(origin.file) : undefined;
};

const fromFile = async (file: string, folderName?: string): Promise<MethodPlugin<unknown>> => {
  const module = await importModuleFile(file);
  const problem = pluginProblem(module.plugin, folderName);
  if (problem !== undefined) throw new DataError({ file, problem });
  const plugin = module.plugin as MethodPlugin<unknown>;
  origins.set(plugin, { file, builtIn: folderName !== undefined });
  return plugin;
};

const unknownMethod = (spec: string): UsageError =>
  new UsageError({
    problem: `unknown method "${spec}"; built-in: ${availablePlugins().join(", ")}; or a path to a .ts, .mts or .mjs file exporting \`plugin\`, or an installed package's name`,
  });

/**
 * What a method name stands for, as saved in a run's settings: a built-in's or a package's
 * name as given, a file as its absolute path (so a resumed run finds it from anywhere).
 */
export const methodSpec = (spec: string, cwd = process.cwd()): string =>
  availablePlugins().includes(spec) || !isPathSpec(spec) ? spec : resolveModuleFile(spec, cwd);

/**
 * Loads the method named by `spec`: a built-in name, a file path (from `cwd`) or a
 * package name (resolved from `cwd`). An unknown name is a UsageError listing the
 * built-ins; a module that does not export a valid `plugin` is a DataError naming its file.
 */
export const loadPlugin = async (spec: string, cwd = process.cwd()): Promise<MethodPlugin<unknown>> => {
  if (availablePlugins().includes(spec)) return fromFile(entryOf(spec)!, spec);
  if (isPathSpec(spec)) return fromFile(resolveModuleFile(spec, cwd));
  const entry = resolvePackage(spec, cwd);
  if (entry === undefined) throw unknownMethod(spec);
  return fromFile(entry);
};

/** Every built-in method, loaded: for messages that list the methods able to do something. */
export const builtInPlugins = (): Promise<MethodPlugin<unknown>[]> => Promise.all(availablePlugins().map((name) => loadPlugin(name)));

/** The built-in methods that `accepts`, listed for messages ("dsa, msp and msp-nm"). */
export const methodsThat = async (accepts: (plugin: MethodPlugin<unknown>) => boolean): Promise<string> => {
  const names = (await builtInPlugins()).filter(accepts).map((p) => p.name);
  return names.length <= 1 ? names.join("") : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
};
