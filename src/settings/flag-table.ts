/**
 * A command's settings and their flags, written once. A job declares its settings as an
 * Effect Schema (what is saved, decoded and passed to workers) and, beside it, a table
 * naming each setting's flag: the compiler checks that every setting has one. The command
 * line's options, the settings read from them, the flags a resumed run may not change and
 * the commands printed for reproduction all derive from that pair.
 */
import { UsageError } from "../errors.ts";
import { parseNumberFlag, type NumberRule } from "./number-rule.ts";

interface FlagBase {
  /** The flag without its dashes, e.g. "calib-seed". */
  readonly flag: string;
  readonly describe: string;
}

/** How one setting appears on the command line. */
export type FlagSpec = FlagBase &
  (
    | { readonly kind: "text"; readonly default?: string }
    /** A file or folder (or a built-in source such as brown:test): compared as a path. */
    | { readonly kind: "path"; readonly default?: string }
    | { readonly kind: "number"; readonly rule: NumberRule; readonly default?: number }
    | { readonly kind: "choice"; readonly choices: readonly string[]; readonly default?: string }
    /** `unstructured` or `N:M`, held as { kind, n, m }. */
    | { readonly kind: "pattern"; readonly default?: string }
  );

/** One flag for every setting of S. */
export type FlagTable<S> = { readonly [K in keyof S]-?: FlagSpec };

/** The camelCase name yargs gives a flag's value: calib-seed -> calibSeed. */
export const camelOf = (flag: string): string => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** A setting's value as the command line writes it. */
export const flagText = (spec: FlagSpec, value: unknown): string => {
  if (spec.kind === "pattern") {
    const p = value as { kind: string; n?: number; m?: number };
    return p.kind === "nm" ? `${p.n}:${p.m}` : "unstructured";
  }
  return String(value);
};

/** Quoted for a POSIX shell when it needs to be, so a printed command runs as printed. */
export const shellWord = (word: string): string => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`);

/** `--flag value` words for the settings given, in the table's order; absent ones are left out. */
export const flagWords = <S>(table: FlagTable<S>, settings: Partial<S>): string[] => {
  const words: string[] = [];
  for (const key of Object.keys(table) as (keyof S)[]) {
    const value = settings[key];
    if (value === undefined) continue;
    words.push(`--${table[key].flag}`, shellWord(flagText(table[key], value)));
  }
  return words;
};

/** The setting a flag (camelCase, as yargs names it) sets, if any. */
export const settingOfFlag = <S>(table: FlagTable<S>, camelFlag: string): keyof S | undefined =>
  (Object.keys(table) as (keyof S)[]).find((key) => camelOf(table[key].flag) === camelFlag);

/** Every setting's default, as the command line would fill it in (patterns still as text). */
export const flagDefaults = <S>(table: FlagTable<S>): Partial<Record<keyof S, string | number>> => {
  const defaults: Partial<Record<keyof S, string | number>> = {};
  for (const key of Object.keys(table) as (keyof S)[]) {
    const value = table[key].default;
    if (value !== undefined) defaults[key] = value;
  }
  return defaults;
};

/**
 * Settings given by name (the API's options, a queue's or a file's record) checked as the
 * command line checks its flags: a name the table does not hold, a number its rule refuses,
 * a value outside a flag's choices or text that is not text is a UsageError naming the flag.
 * Numbers come back as numbers (the command line's text too); patterns are left to the caller.
 */
export const checkSettings = <S>(table: FlagTable<S>, given: Readonly<Record<string, unknown>>): Partial<S> => {
  const keys = Object.keys(table) as (keyof S & string)[];
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(given)) {
    if (value === undefined) continue;
    if (!(keys as string[]).includes(name)) {
      const near = keys.find((k) => k.toLowerCase().startsWith(name.toLowerCase().slice(0, 4)));
      throw new UsageError({ problem: `unknown setting ${JSON.stringify(name)}${near ? ` (did you mean ${near}?)` : ""}; the settings are ${keys.join(", ")}` });
    }
    const spec = table[name as keyof S];
    switch (spec.kind) {
      case "number":
        out[name] = parseNumberFlag(spec.flag, value, spec.rule);
        break;
      case "choice":
        if (typeof value !== "string" || !spec.choices.includes(value)) {
          throw new UsageError({ problem: `--${spec.flag} ${JSON.stringify(value)} is not one of ${spec.choices.join(", ")}` });
        }
        out[name] = value;
        break;
      case "pattern":
        out[name] = value;
        break;
      default:
        if (typeof value !== "string" || value === "") throw new UsageError({ problem: `--${spec.flag} takes a non-empty text, not ${JSON.stringify(value)}` });
        out[name] = value;
    }
  }
  return out as Partial<S>;
};
