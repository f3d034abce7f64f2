/**
 * Search spaces are JSON files decoded with their plugin's schema at the edge, so a
 * plugin only ever sees a valid space. Every problem (unreadable file, bad JSON, a wrong
 * field) becomes one DataError naming the file and the field.
 */
import { existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { readBoundedUtf8 } from "../reads.ts";
import { Result, Schema, SchemaIssue } from "effect";
import { projectRoot } from "../defaults.ts";
import { DataError } from "../errors.ts";
import type { MethodPlugin } from "./plugin.ts";
import { pluginFolder } from "./registry.ts";

/** The folder of the shipped search spaces (at the package's root, from source or compiled). */
export const searchSpacesDir = join(projectRoot, "search-spaces");

/** `["pre", 2]` -> `pre[2]`, `["bounds", "lo"]` -> `bounds.lo`. */
const fieldPath = (path: readonly PropertyKey[]): string =>
  path
    .map((key, i) => (typeof key === "number" ? `[${key}]` : i === 0 ? String(key) : `.${String(key)}`))
    .join("");

/** Schema's wording for the two problems users make most, in the words of a config file. */
const plainMessage = (message: string): string =>
  message === "Missing key" ? "missing" : message === "Expected no excess property" ? "unknown field" : message;

const formatIssues = SchemaIssue.makeFormatterStandardSchemaV1();

/** Decodes an already parsed space; `file` only names the source in errors. */
export const decodeSearchSpace = <Space>(plugin: MethodPlugin<Space>, json: unknown, file: string): Space => {
  const result = Schema.decodeUnknownResult(plugin.spaceSchema as never)(json, {
    errors: "all",
    onExcessProperty: "error",
  }) as Result.Result<Space, Schema.SchemaError>;
  if (Result.isSuccess(result)) return result.success;
  const problems = formatIssues(result.failure.issue).issues.map(({ path, message }) => {
    const field = fieldPath((path ?? []).map((p) => (typeof p === "object" ? p.key : p)));
    return field === "" ? plainMessage(message) : `${field}: ${plainMessage(message)}`;
  });
  throw new DataError({ file, problem: `invalid ${plugin.name} search space: ${problems.join("; ")}` });
};

/** Parses the text of a space file and decodes it. */
export const parseSearchSpace = <Space>(plugin: MethodPlugin<Space>, text: string, file: string): Space => {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new DataError({ file, problem: `not valid JSON: ${(error as Error).message}` });
  }
  return decodeSearchSpace(plugin, json, file);
};

/**
 * The file a space name refers to: a path as given when it exists, otherwise a bare file
 * name in search-spaces/; no name means the plugin's default space, which a user's plugin
 * keeps beside its own file (a built-in's is in search-spaces/).
 */
export const resolveSpaceFile = (plugin: MethodPlugin<unknown>, file?: string): string => {
  if (file === undefined) {
    const home = pluginFolder(plugin);
    if (home !== undefined) {
      const beside = resolve(home, plugin.defaultSpace);
      if (existsSync(beside)) return beside;
      if (!existsSync(join(searchSpacesDir, plugin.defaultSpace))) {
        throw new DataError({ file: beside, problem: `no such file: the default search space of method ${plugin.name} (give one with --space)` });
      }
    }
    return join(searchSpacesDir, plugin.defaultSpace);
  }
  if (existsSync(file)) return file;
  const shipped = join(searchSpacesDir, file);
  if (basename(file) === file && existsSync(shipped)) return shipped;
  throw new DataError({ file, problem: "no such search-space file (looked in the working directory and search-spaces/)" });
};

/** Reads and validates a search space for `plugin` (its default space when `file` is absent). */
export const loadSearchSpace = <Space>(plugin: MethodPlugin<Space>, file?: string): Space => {
  const path = resolveSpaceFile(plugin as MethodPlugin<unknown>, file);
  return parseSearchSpace(plugin, readBoundedUtf8(path, "space"), path);
};
