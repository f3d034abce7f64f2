/**
 * Numeric flags: any value is either accepted and used exactly as given, or refused with a
 * line naming the flag before the command runs. Checked on the real command definitions,
 * parsed in-process with the command's work replaced by a recorder.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { givenFlags } from "../src/cli/flags.ts";
import { parseNumberFlag, type NumberRule } from "../src/settings/number-rule.ts";
import { parsePattern } from "../src/cli/options.ts";
import { program } from "../src/cli/program.ts";
import { UsageError } from "../src/errors.ts";

const NUMERIC_FLAGS: Record<string, readonly string[]> = {
  eval: ["seqlen", "eval-windows", "batch"],
  stats: ["nsamples", "seqlen", "seed"],
  prune: ["sparsity", "nsamples", "seqlen", "seed", "eval-windows", "valid-windows", "batch", "fusion-steps", "recover-steps", "recover-rank", "recover-alpha", "recover-lr", "recover-batch", "recover-checkpoint-every"],
  search: ["sparsity", "nsamples", "calib-seed", "seqlen", "fitness-windows", "eval-windows", "population", "generations", "budget-evals", "budget-tokens", "time-budget", "patience", "seed", "workers", "batch", "fusion-steps"],
  train: ["dim", "layers", "heads", "kv-heads", "ffn", "context", "steps", "batch", "seqlen", "lr", "warmup", "weight-decay", "seed", "eval-every", "eval-windows", "vocab", "workers", "checkpoint-every"],
};
/** Flags a command needs to run at all, left out when they are the flag under test. */
const REQUIRED: Record<string, Record<string, string>> = { prune: { out: "x", sparsity: "0.5" }, train: { out: "x" }, search: { sparsity: "0.5" } };
const required = (command: string, flag: string): string[] =>
  Object.entries(REQUIRED[command] ?? {})
    .filter(([name]) => name !== flag)
    .map(([name, value]) => `--${name}=${value}`);

const camel = (flag: string) => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

type Outcome = { ran: true; argv: Record<string, unknown> } | { ran: false; error: unknown };

const parse = async (args: string[]): Promise<Outcome> => {
  let argv: Record<string, unknown> | undefined;
  let failure: unknown;
  await program(args, {
    handler: (_command, parsed) => (argv = parsed),
    onFailure: (error) => (failure ??= error),
  }).parseAsync();
  return failure !== undefined ? { ran: false, error: failure } : { ran: true, argv: argv! };
};

const values = fc.oneof(
  fc.string({ maxLength: 8 }),
  fc.double({ noNaN: false }).map(String),
  fc.integer({ min: -1000, max: 100000 }).map(String),
  fc.double({ min: -2, max: 2 }).map((x) => x.toFixed(3)),
  fc.constantFrom("0", "-0", "1", "2", "0.5", "1e3", "1e400", "0x10", "NaN", "Infinity", "", " 5 ", "1.0", "+3", ".5", "5.", "1,5", "9007199254740993"),
);

describe("numeric flags", () => {
  it("parseNumberFlag gives Number(text) under the rule, or a UsageError naming the flag (property)", () => {
    const rules: NumberRule[] = [{}, { whole: true, min: 1 }, { min: 0, max: 1, maxExclusive: true }, { min: 0, minExclusive: true }, { whole: true, min: -5, max: 5 }];
    fc.assert(
      fc.property(values, fc.constantFrom(...rules), (text, rule) => {
        let value: number;
        try {
          value = parseNumberFlag("knob", text, rule);
        } catch (error) {
          expect(error).toBeInstanceOf(UsageError);
          expect((error as UsageError).problem).toMatch(/^--knob /);
          return;
        }
        expect(value).toBe(Number(text.trim()) === 0 ? 0 : Number(text.trim()));
        expect(Number.isFinite(value)).toBe(true);
        if (rule.whole) expect(Number.isSafeInteger(value)).toBe(true);
        if (rule.min !== undefined) expect(rule.minExclusive ? value > rule.min : value >= rule.min).toBe(true);
        if (rule.max !== undefined) expect(rule.maxExclusive ? value < rule.max : value <= rule.max).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  for (const [command, flags] of Object.entries(NUMERIC_FLAGS)) {
    it(`${command}: every numeric flag is used as given or refused before the command runs (property)`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...flags), values, async (flag, text) => {
          const outcome = await parse([command, ...required(command, flag), `--${flag}=${text}`]);
          if (outcome.ran) {
            const value = outcome.argv[camel(flag)];
            expect(typeof value).toBe("number");
            expect(value).toBe(Number(text.trim()) === 0 ? 0 : Number(text.trim()));
          } else {
            expect(outcome.error).toBeInstanceOf(UsageError);
            expect((outcome.error as UsageError).problem).toContain(`--${flag}`);
          }
        }),
        { numRuns: 150 },
      );
    });
  }

  it("refuses a flag given twice and a flag without its value", async () => {
    const twice = await parse(["eval", "--batch", "2", "--batch", "3"]);
    expect(twice.ran).toBe(false);
    expect((twice as { error: UsageError }).error.problem).toContain("--batch is given 2 times");
    const empty = await parse(["eval", "--batch="]);
    expect(empty.ran).toBe(false);
    expect((empty as { error: UsageError }).error.problem).toContain("--batch needs a value");
  });

  it("keeps defaults as numbers", async () => {
    const outcome = await parse(["prune", ...required("prune", "")]);
    expect(outcome.ran).toBe(true);
    const argv = (outcome as { argv: Record<string, unknown> }).argv;
    expect(argv.nsamples).toBe(128);
    expect(argv.seed).toBe(0);
    expect(argv.sparsity).toBe(0.5);
  });

  it("givenFlags names the flags written on the command line, in camelCase", () => {
    expect([...givenFlags(["search", "--resume", "dir", "--time-budget=5", "--no-json", "--seed", "3", "--", "--sparsity"])]).toEqual(["resume", "timeBudget", "json", "seed"]);
  });
});

describe("N:M patterns", () => {
  it("accepts 1 <= N < M and refuses the rest with a UsageError (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: -3, max: 40 }), fc.integer({ min: -3, max: 40 }), (n, m) => {
        const text = `${n}:${m}`;
        if (n >= 1 && n < m) expect(parsePattern(text)).toEqual({ kind: "nm", n, m });
        else expect(() => parsePattern(text)).toThrow(UsageError);
      }),
    );
    expect(parsePattern("unstructured")).toEqual({ kind: "unstructured" });
    expect(() => parsePattern("2:4:8")).toThrow(/--pattern 2:4:8/);
  });
});
