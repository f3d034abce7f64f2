/**
 * Methods are found by folder: `plugins/<name>/index.ts` exporting `plugin`. Adding a
 * folder adds a method; nothing here lists them by hand.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { DataError, UsageError } from "../errors.ts";
import type { MethodPlugin } from "./plugin.ts";

/** The folder of the method plugins. */
export const pluginsDir = fileURLToPath(new URL("../../plugins/", import.meta.url));

const entryOf = (name: string): string => join(pluginsDir, name, "index.ts");

/** Names of the available methods, sorted. */
export const availablePlugins = (): string[] =>
  readdirSync(pluginsDir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && existsSync(entryOf(entry.name)))
    .map((entry) => entry.name)
    .sort();

const kinds = ["direct", "grid", "evolve"];

/** The parts of the interface the host relies on before calling a plugin. */
const shapeProblem = (plugin: unknown, name: string): string | undefined => {
  if (typeof plugin !== "object" || plugin === null) return "does not export `plugin`";
  const p = plugin as Partial<MethodPlugin<unknown>>;
  if (p.name !== name) return `exports a plugin named ${JSON.stringify(p.name)}, but its folder is ${name}`;
  if (typeof p.defaultSpace !== "string") return "has no defaultSpace";
  if (p.spaceSchema === undefined) return "has no spaceSchema";
  if (!Array.isArray(p.patterns)) return "has no patterns";
  if (typeof p.method !== "object" || p.method === null || !kinds.includes(p.method.kind)) {
    return `has no method of kind ${kinds.join(", ")}`;
  }
  return undefined;
};

/** Loads the method called `name`; an unknown name is a UsageError listing the known ones. */
export const loadPlugin = async (name: string): Promise<MethodPlugin<unknown>> => {
  const known = availablePlugins();
  if (!known.includes(name)) {
    throw new UsageError({ problem: `unknown method "${name}"; known: ${known.join(", ")}` });
  }
  const file = entryOf(name);
  const module = (await import(pathToFileURL(file).href)) as { readonly plugin?: unknown };
  const problem = shapeProblem(module.plugin, name);
  if (problem !== undefined) throw new DataError({ file, problem });
  return module.plugin as MethodPlugin<unknown>;
};
