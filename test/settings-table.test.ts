/**
 * Settings written once: every setting of a job has a flag, the command line's options
 * come from that table, and the commands printed from settings parse back to them.
 */
import { spawnSync } from "node:child_process";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { settingsFromArgv } from "../src/cli/flags.ts";
import { program } from "../src/cli/program.ts";
import { PRUNE_FLAGS, type PruneSettings } from "../src/jobs/prune.ts";
import { DERIVED_SETTINGS, SEARCH_FLAGS, SearchSettings } from "../src/jobs/search.ts";
import { flagWords, shellWord } from "../src/settings/flag-table.ts";
import { SetupRecord } from "../src/queue/records.ts";
import { Schema } from "effect";

const parse = async (args: string[]): Promise<Record<string, unknown>> => {
  let parsed: Record<string, unknown> | undefined;
  let failure: unknown;
  await program(args, { handler: (_c, argv) => (parsed = argv), onFailure: (e) => (failure ??= e) }).parseAsync();
  if (failure !== undefined) throw failure;
  return parsed!;
};

const word = fc.stringMatching(/^[a-z0-9][a-z0-9._/-]{0,11}$/);
const pruneSettings: fc.Arbitrary<PruneSettings> = fc.record(
  {
    model: word,
    tokenizer: word,
    metric: fc.constantFrom("magnitude", "wanda", "sparsegpt"),
    sparsity: fc.double({ min: 0, max: 0.999, noNaN: true }),
    pattern: fc.oneof(fc.constant({ kind: "unstructured" as const }), fc.integer({ min: 2, max: 16 }).chain((m) => fc.integer({ min: 1, max: m - 1 }).map((n) => ({ kind: "nm" as const, n, m })))),
    allocation: word,
    space: word,
    calib: word,
    field: word,
    nsamples: fc.integer({ min: 1, max: 4096 }),
    seed: fc.integer({ min: -1000, max: 1000 }),
    seqlen: fc.integer({ min: 2, max: 8192 }),
    mode: fc.constantFrom("sequential", "dense"),
    batch: fc.integer({ min: 1, max: 64 }),
    eval: word,
    evalFormat: fc.constantFrom("text", "jsonl", "stories"),
    evalWindows: fc.integer({ min: 1, max: 1000 }),
    valid: word,
    validWindows: fc.integer({ min: 1, max: 1000 }),
  },
  { requiredKeys: ["model", "metric", "pattern", "allocation", "calib", "nsamples", "seed", "mode", "valid", "validWindows"] },
) as fc.Arbitrary<PruneSettings>;

describe("settings and their flags", () => {
  it("every saved search setting has a flag, and the saved schema's fields are the table's", () => {
    // The stage plan is recorded, not given: it is derived from the budget and the space.
    const given = Object.keys(SearchSettings.fields).filter((key) => !(DERIVED_SETTINGS as readonly string[]).includes(key));
    expect(Object.keys(SEARCH_FLAGS).sort()).toEqual(given.sort());
    for (const key of DERIVED_SETTINGS) expect(Object.keys(SearchSettings.fields)).toContain(key);
    const flags = Object.values(SEARCH_FLAGS).map((s) => s.flag);
    expect(new Set(flags).size).toBe(flags.length);
  });

  it("the queue's setup record decodes a setting as settings.json does: a value one refuses, the other refuses", () => {
    // The record's field for each search setting it carries (record name -> setting name).
    const carried = { metric: "metric", mode: "mode", pattern: "pattern", seqlen: "seqlen", batch: "batch", searchSeed: "seed", seed: "calibSeed" } as const;
    const value = fc.oneof(fc.string(), fc.integer({ min: -4, max: 4096 }), fc.double(), fc.constantFrom("wanda", "dense", "sequential", { kind: "unstructured" }, { kind: "nm", n: 2, m: 4 }));
    fc.assert(
      fc.property(fc.constantFrom(...Object.keys(carried)), value, (field, v) => {
        const setting = carried[field as keyof typeof carried];
        const decodes = (schema: Schema.Top) => Schema.is(schema as never)(v);
        const record = (SetupRecord.fields as Record<string, Schema.Top>)[field]!;
        // The record only narrows a setting (a resolved window length, a batch of one or more).
        if (decodes(record)) expect(decodes((SearchSettings.fields as Record<string, Schema.Top>)[setting]!)).toBe(true);
        else if (decodes((SearchSettings.fields as Record<string, Schema.Top>)[setting]!)) expect(["seqlen", "batch"]).toContain(field);
      }),
      { numRuns: 400 },
    );
  });

  it("every flag of the tables is an option of its command (its --help lists it)", () => {
    const bin = new URL("../bin/evosparse.mjs", import.meta.url).pathname;
    for (const [command, table] of [["search", SEARCH_FLAGS], ["prune", PRUNE_FLAGS]] as const) {
      const help = spawnSync(process.execPath, [bin, command, "--help"], { encoding: "utf8" }).stdout;
      for (const spec of Object.values(table)) expect(help, `${command} --${spec.flag}`).toMatch(new RegExp(`--${spec.flag}\\b`));
    }
  });

  it("prune settings printed as flags parse back to the same settings (property)", async () => {
    await fc.assert(
      fc.asyncProperty(pruneSettings, async (settings) => {
        const argv = await parse(["prune", ...flagWords(PRUNE_FLAGS, settings), "--out", "x"]);
        const back = settingsFromArgv(PRUNE_FLAGS, argv);
        for (const [key, value] of Object.entries(settings)) expect(back[key as keyof PruneSettings], key).toEqual(value);
      }),
      { numRuns: 150 },
    );
  });

  it("a printed word survives a POSIX shell as one argument", () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 12 }).filter((w) => !w.includes("\0")), (w) => {
        const echoed = spawnSync("sh", ["-c", `printf '%s' ${shellWord(w)}`], { encoding: "utf8" }).stdout;
        expect(echoed).toBe(w);
      }),
      { numRuns: 60 },
    );
  });
});
