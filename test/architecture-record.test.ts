/**
 * A user's architecture record (`--architecture FILE`) for a model_type evosparse does not
 * know: refused without it, naming the option; with it, the model reads as the record
 * says, in this process and in the worker threads of a search.
 */
import { cpSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, errorLines, evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("architecture");
const record = resolve(import.meta.dirname, "fixtures", "architectures", "tiny-llama.mjs");

describe("--architecture", () => {
  const model = join(root, "tiny");
  cpSync(embeddedModel, model, { recursive: true });
  const config = JSON.parse(readFileSync(join(model, "config.json"), "utf8"));
  writeFileSync(join(model, "config.json"), JSON.stringify({ ...config, model_type: "tiny_llama" }));
  const evalArgs = ["eval", "--eval", "brown:test", "--seqlen", "128", "--eval-windows", "2", "--json"];

  it("an unknown model_type is refused, naming the option that adds one", () => {
    const r = evosparse(...evalArgs, "--model", model);
    expect(r.code).toBe(1);
    expect(errorLines(r.stderr)).toEqual([expect.stringMatching(/config\.json: unknown model_type "tiny_llama" \(supported: .*; a record for another is given with --architecture FILE\)/)]);
  });

  it("with the record the model evaluates as the same weights under llama, and a search's worker threads read it too", () => {
    const reference = jsonOf(evosparse(...evalArgs, "--model", embeddedModel));
    const viaRecord = jsonOf(evosparse(...evalArgs, "--model", model, "--architecture", record));
    expect(viaRecord.ppl).toBe(reference.ppl);
    const search = ["search", "--method", "msp", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "1", "--eval-windows", "2", "--population", "3", "--generations", "2", "--final-mode", "dense", "--workers", "2", "--json"];
    const a = jsonOf(evosparse(...search, "--model", model, "--architecture", record, "--out", join(root, "a")));
    const b = jsonOf(evosparse(...search, "--model", embeddedModel, "--out", join(root, "b")));
    expect(a.workers).toBe(2);
    expect(a.best).toEqual(b.best);
    expect(a.final.results).toEqual(b.final.results);
  });

  it("a module exporting no record is refused, naming its file", () => {
    const r = evosparse(...evalArgs, "--model", model, "--architecture", resolve(import.meta.dirname, "fixtures", "methods", "no-plugin.mjs"));
    expect(r.code).toBe(1);
    expect(errorLines(r.stderr)).toEqual([expect.stringMatching(/no-plugin\.mjs: exports neither `architecture` nor `architectures`/)]);
  });
});
