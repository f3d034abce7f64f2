/**
 * Modules the user brings: a method, a fitness measure or an architecture given on the
 * command line as a file (`./my-method.mjs`, `/abs/method.ts`, a folder holding index.*) or
 * as a package name resolved from the working directory, as `import` would from a script
 * there. TypeScript files are loaded through tsx only when one is named, so an installed
 * evosparse (compiled JavaScript) compiles nothing at start.
 */
import { existsSync, realpathSync, statSync } from "node:fs";
import { readBoundedUtf8 } from "./reads.ts";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { DataError, UsageError } from "./errors.ts";

/** The file extensions a user module may have. */
export const MODULE_EXTENSIONS = [".ts", ".mts", ".mjs", ".js"] as const;

const TS_EXTENSION = /\.[cm]?ts$/;

/** Whether a name on the command line means a file rather than a built-in or a package. */
export const isPathSpec = (spec: string): boolean =>
  spec.startsWith(".") || isAbsolute(spec) || spec.includes("\\") || MODULE_EXTENSIONS.some((e) => spec.endsWith(e)) || (spec.includes("/") && !spec.startsWith("@"));

/** A folder's entry: index.ts, index.mts, index.mjs or index.js, the first that exists. */
const folderEntry = (dir: string): string | undefined => MODULE_EXTENSIONS.map((e) => join(dir, `index${e}`)).find((f) => existsSync(f));

/** A path on the command line as the module file it names, from `cwd`. */
export const resolveModuleFile = (spec: string, cwd = process.cwd()): string => {
  const given = resolve(cwd, spec);
  if (!existsSync(given)) throw new UsageError({ problem: `${spec}: no such file (resolved to ${given})` });
  // A symlink loads as the file it points to, so the module's own relative imports work.
  const path = realpathSync(given);
  if (statSync(path).isDirectory()) {
    const entry = folderEntry(path);
    if (!entry) throw new DataError({ file: path, problem: `a folder given as a module needs an index file (${MODULE_EXTENSIONS.map((e) => `index${e}`).join(", ")})` });
    return entry;
  }
  if (!MODULE_EXTENSIONS.some((e) => path.endsWith(e))) {
    throw new DataError({ file: path, problem: `not a module: a ${MODULE_EXTENSIONS.join(", ")} file is expected` });
  }
  return path;
};

/** The entry file of package.json's `exports` ("." or the whole field), `module` or `main`. */
const packageEntry = (dir: string): string | undefined => {
  const file = join(dir, "package.json");
  let json: { exports?: unknown; main?: unknown; module?: unknown };
  try {
    json = JSON.parse(readBoundedUtf8(file, "config"));
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError({ file, problem: `not valid JSON: ${(e as Error).message}` });
  }
  const pick = (target: unknown): string | undefined => {
    if (typeof target === "string") return target;
    if (typeof target !== "object" || target === null) return undefined;
    const record = target as Record<string, unknown>;
    if ("." in record) return pick(record["."]);
    for (const condition of ["import", "node", "default"]) if (condition in record) return pick(record[condition]);
    return undefined;
  };
  const entry = pick(json.exports) ?? (typeof json.module === "string" ? json.module : undefined) ?? (typeof json.main === "string" ? json.main : undefined);
  if (entry !== undefined) return resolve(dir, entry);
  return folderEntry(dir);
};

/** A package name as its entry file, looked up in node_modules from `cwd` upwards. */
export const resolvePackage = (name: string, cwd = process.cwd()): string | undefined => {
  for (let dir = resolve(cwd); ; dir = dirname(dir)) {
    const candidate = join(dir, "node_modules", name);
    if (existsSync(join(candidate, "package.json"))) {
      const entry = packageEntry(candidate);
      if (!entry || !existsSync(entry)) throw new DataError({ file: join(candidate, "package.json"), problem: `package ${name} names no entry file that exists (exports, module or main)` });
      return entry;
    }
    if (dirname(dir) === dir) return undefined;
  }
};

/** Whether this module runs as compiled JavaScript (an installed package) rather than from source. */
const compiled = import.meta.url.endsWith(".js");

let tsLoader: Promise<void> | undefined;

/**
 * Imports a user's module file. From source, the TypeScript loader is already in place
 * (tsx or the test runner); compiled, the first TypeScript file registers tsx's loader for
 * the process (registered, not scoped: a scoped import would load a second copy of
 * evosparse and effect for the plugin, whose schemas the host could not read).
 */
export const importModuleFile = async (file: string): Promise<Record<string, unknown>> => {
  const url = pathToFileURL(file).href;
  try {
    if (compiled && TS_EXTENSION.test(file)) {
      tsLoader ??= import("tsx/esm/api").then(({ register }) => void register());
      await tsLoader;
    }
    return (await import(url)) as Record<string, unknown>;
  } catch (e) {
    const message = String((e as Error)?.message ?? e).split("\n")[0]!;
    // Node's rule: a .ts file is CommonJS unless its package.json says "type": "module".
    const hint = TS_EXTENSION.test(file) && /require\(\)|Cannot use import statement|exports is not defined/.test(message)
      ? ` (a .ts file is an ES module only under a package.json with "type": "module"; otherwise name it .mts)`
      : "";
    throw new DataError({ file, problem: `cannot load: ${message}${hint}` });
  }
};
