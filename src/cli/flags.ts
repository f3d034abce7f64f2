/**
 * Numeric flags, checked as yargs reads them (the CLI parses with `parse-numbers` off, so
 * each option sees the text as typed): refused values never reach a command.
 */
import type { Argv } from "yargs";
import { camelOf, type FlagSpec, type FlagTable } from "../settings/flag-table.ts";
import { describeRule, parseNumberFlag, WHOLE_POSITIVE, type NumberRule } from "../settings/number-rule.ts";
import { parsePattern } from "./options.ts";

export { SEED, SEQLEN, SPARSITY, WHOLE_NON_NEGATIVE, WHOLE_POSITIVE } from "../settings/number-rule.ts";

interface NumberOptionSpec extends NumberRule {
  readonly describe: string;
  readonly default?: number;
}

/** A yargs option for a numeric flag checked by `rule`; its help names what it accepts. */
export const numberOption = (flag: string, spec: NumberOptionSpec) => {
  const { describe, default: fallback, ...rule } = spec;
  return {
    describe: `${describe} (${describeRule(rule)})`,
    requiresArg: true,
    ...(fallback !== undefined ? { default: fallback } : {}),
    coerce: (raw: unknown) => parseNumberFlag(flag, raw, rule),
  } as const;
};

/** The options of the command line that were given explicitly (camelCase names). */
export const givenFlags = (args: readonly string[]): Set<string> => {
  const given = new Set<string>();
  for (const arg of args) {
    if (arg === "--") break;
    const match = /^--(?:no-)?([^=]+)/.exec(arg);
    if (match) given.add(match[1]!.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()));
  }
  return given;
};

/** The yargs option of a setting's flag. */
const optionOf = (spec: FlagSpec) => {
  const fallback = spec.default !== undefined ? { default: spec.default } : {};
  switch (spec.kind) {
    case "number":
      return numberOption(spec.flag, { ...spec.rule, describe: spec.describe, ...(spec.default !== undefined ? { default: spec.default } : {}) });
    case "choice":
      return { choices: spec.choices, describe: spec.describe, ...fallback };
    default:
      return { type: "string", requiresArg: true, describe: spec.describe, ...fallback } as const;
  }
};

/** Adds an option for every setting of a job's flag table, in the table's order. */
export const tableOptions = <S>(y: Argv, table: FlagTable<S>): Argv => {
  let out = y;
  for (const key of Object.keys(table) as (keyof S)[]) out = out.option(table[key].flag, optionOf(table[key]));
  return out;
};

/**
 * The settings the command line gives, by setting name (patterns parsed); a setting whose
 * flag is absent and has no default is left out. Throws a UsageError for a bad pattern.
 */
export const settingsFromArgv = <S>(table: FlagTable<S>, argv: Readonly<Record<string, unknown>>): Partial<S> => {
  const settings: Partial<Record<keyof S, unknown>> = {};
  for (const key of Object.keys(table) as (keyof S)[]) {
    const spec = table[key];
    const value = argv[camelOf(spec.flag)];
    if (value === undefined) continue;
    settings[key] = spec.kind === "pattern" ? parsePattern(String(value)) : value;
  }
  return settings as Partial<S>;
};

/** `--memory` and `--streamed`: how a run may use memory (they never change its results). */
export const memoryOptions = <T>(y: Argv<T>) =>
  y
    .option("memory", numberOption("memory", { ...WHOLE_POSITIVE, describe: "MiB this run may use; the run is planned to fit (default: what the machine has available)" }))
    .option("streamed", { type: "boolean", default: false, describe: "use as little memory as the run allows, even where more would fit: one block on the backend, pruned blocks and ranks on disk" });
