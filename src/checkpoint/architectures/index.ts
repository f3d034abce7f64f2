/**
 * The architectures evosparse reads: the built-in records, and any a user brings as a
 * module exporting `architecture` (or a list, `architectures`) for a new `model_type`
 * (`--architecture FILE|PACKAGE`). A brought record is registered for the process and
 * named in EVOSPARSE_ARCHITECTURES, so the worker threads a run starts register it too.
 */
import { DataError } from "../../errors.ts";
import { importModuleFile, isPathSpec, resolveModuleFile, resolvePackage } from "../../user-module.ts";
import { UsageError } from "../../errors.ts";
import type { Architecture } from "./architecture.ts";
import { gpt2 } from "./gpt2.ts";
import { llama, mistral, qwen2 } from "./llama.ts";
import { opt } from "./opt.ts";

const builtIn: readonly Architecture[] = [llama, mistral, qwen2, opt, gpt2];
const registered: Architecture[] = [];

/** Every architecture known to this process: the built-ins, then the registered ones. */
export const architectures = (): readonly Architecture[] => [...builtIn, ...registered];

export const architectureFor = (modelType: string): Architecture | undefined => architectures().find((a) => a.modelTypes.includes(modelType));

export const supportedModelTypes = (): string[] => architectures().flatMap((a) => a.modelTypes);

const FUNCTIONS = ["specFromConfig", "configFromSpec", "globalNames", "blockNames"] as const;

/** Why a value is not an Architecture record, or undefined when it is one. */
const recordProblem = (value: unknown): string | undefined => {
  if (typeof value !== "object" || value === null) return "is not an object";
  const a = value as Partial<Architecture>;
  if (!Array.isArray(a.modelTypes) || a.modelTypes.length === 0 || !a.modelTypes.every((t) => typeof t === "string" && t !== "")) return "has no modelTypes (a list of config.json model_type values)";
  for (const f of FUNCTIONS) if (typeof a[f] !== "function") return `has no ${f} function`;
  if (!Array.isArray(a.prefixes) || !Array.isArray(a.ignored) || typeof a.writePrefix !== "string") return "needs prefixes, ignored and writePrefix";
  return undefined;
};

/** Adds an architecture record for this process; a model_type another record reads is refused. */
export const registerArchitecture = (architecture: Architecture, source = "the record"): void => {
  const problem = recordProblem(architecture);
  if (problem) throw new DataError({ file: source, problem: `the architecture ${problem}` });
  if (registered.includes(architecture)) return;
  const taken = architecture.modelTypes.filter((t) => architectureFor(t) !== undefined);
  if (taken.length > 0) throw new DataError({ file: source, problem: `model_type ${taken.join(", ")} is already read by another architecture` });
  registered.push(architecture);
};

export const ARCHITECTURES_VARIABLE = "EVOSPARSE_ARCHITECTURES";

const loaded = new Set<string>();

/**
 * Loads architecture modules (files from `cwd`, or packages resolved from it) and registers
 * what they export; their files are added to EVOSPARSE_ARCHITECTURES for worker threads.
 */
export const loadArchitectures = async (specs: readonly string[], cwd = process.cwd()): Promise<void> => {
  for (const spec of specs) {
    const file = isPathSpec(spec) ? resolveModuleFile(spec, cwd) : resolvePackage(spec, cwd);
    if (file === undefined) throw new UsageError({ problem: `--architecture ${spec}: neither a file nor an installed package` });
    if (loaded.has(file)) continue;
    const module = await importModuleFile(file);
    const records = module.architectures ?? (module.architecture === undefined ? undefined : [module.architecture]);
    if (!Array.isArray(records)) throw new DataError({ file, problem: "exports neither `architecture` nor `architectures`" });
    for (const record of records) registerArchitecture(record as Architecture, file);
    loaded.add(file);
  }
  process.env[ARCHITECTURES_VARIABLE] = JSON.stringify([...loaded]);
};

/** In a worker thread: registers the architectures the process that started it had loaded. */
export const loadArchitecturesFromEnvironment = async (): Promise<void> => {
  const text = process.env[ARCHITECTURES_VARIABLE];
  if (!text) return;
  await loadArchitectures(JSON.parse(text) as string[]);
};
