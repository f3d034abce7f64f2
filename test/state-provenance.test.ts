/**
 * Saved state is tied to what made it: a search resumed after its model's bytes, its
 * settings.json, or its engine state changed is refused in one line naming what changed,
 * and so is `train --resume` with another learning rate, seed or text; one saved with a
 * shipped space that has changed since names the file that holds it now. An unchanged
 * resume goes on. The commands run for real on the embedded model.
 */
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { brownText } from "../src/data/brown.ts";
import { defaultModel } from "../src/defaults.ts";
import { train, type TrainOptions } from "../src/jobs/train.ts";
import { resumeRemedy } from "../src/jobs/search.ts";
import { checkStamp, stamp, type Provenance } from "../src/output/provenance.ts";
import { fileDigest } from "../src/reads.ts";
import { searchSpacesDir } from "../src/search/space.ts";
import { oneLine, runCli, scratchFolder } from "./helpers/cli.ts";

const { root } = scratchFolder("evosparse-provenance-");
const run = (...args: string[]) => runCli(args);

describe("the stamp", () => {
  const made: Provenance = { settings: { "--lr": 0.003, "--seed": 0 }, files: { "--data a.txt": "ab".repeat(32) } };
  it("property: a stamped state reads back as itself, and any change of a value in it is refused", () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ minLength: 1, maxLength: 6 }).filter((k) => k !== "made" && k !== "digest"), fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string()), { minKeys: 1 }), (state) => {
        const json = JSON.parse(JSON.stringify(stamp(state, made))) as Record<string, unknown>;
        expect(checkStamp(json, made, "state.json", "start afresh")).toEqual(JSON.parse(JSON.stringify(state)));
        const key = Object.keys(state)[0]!;
        const edited = { ...json, [key]: typeof json[key] === "string" ? `${json[key] as string}x` : "edited" };
        expect(() => checkStamp(edited, made, "state.json", "start afresh")).toThrow(/was changed after evosparse wrote it/);
      }),
      { numRuns: 60 },
    );
  });
  it("names each setting and file that differs", () => {
    const json = JSON.parse(JSON.stringify(stamp({ step: 3 }, made)));
    const now: Provenance = { settings: { "--lr": 0.01, "--seed": 0 }, files: { "--data a.txt": "cd".repeat(32) } };
    expect(() => checkStamp(json, now, "state.json", "start afresh")).toThrow(/--lr was 0.003, now 0.01; --data a.txt has other bytes \(sha256 abababababab then, cdcdcdcdcdcd now\)/);
  });
});

describe("a search saved with a shipped space whose bytes changed since", () => {
  // A default space replaced by a later version (evopress's per-linear levels, now
  // evopress-linear.json): the state cannot continue, and the refusal names the file that
  // holds its space now.
  const shipped = (name: string) => join(searchSpacesDir, name);
  const madeWith = (file: string, digest: string): Provenance => ({ settings: { "--space": file }, files: { [`--space ${file}`]: digest } });
  const defaultSpace = shipped("evopress.json");
  const now = madeWith(defaultSpace, fileDigest(defaultSpace));

  it("names the shipped space that holds the saved bytes now", () => {
    const saved = JSON.parse(JSON.stringify(stamp({ generation: 1 }, madeWith(defaultSpace, fileDigest(shipped("evopress-linear.json"))))));
    const remedy = resumeRemedy(saved, now);
    expect(remedy).toBe("start a new search (the space it was saved with is search-spaces/evopress-linear.json now: --space evopress-linear.json)");
    expect(() => checkStamp(saved, now, "engine-state.json", remedy)).toThrow(/--space \S*evopress\.json has other bytes .*resume with what made it, or start a new search \(.*--space evopress-linear\.json\)$/);
  });

  it("says only to start a new search when no shipped space holds them, the file is the user's, or nothing changed", () => {
    const linearBytes = fileDigest(shipped("evopress-linear.json"));
    // Bytes no shipped space holds.
    expect(resumeRemedy(stamp({ generation: 1 }, madeWith(defaultSpace, "ab".repeat(32))), now)).toBe("start a new search");
    // A space of the user's own, outside search-spaces/, even with a shipped file's old bytes.
    const elsewhere = join(root, "evopress.json");
    expect(resumeRemedy(stamp({ generation: 1 }, madeWith(elsewhere, linearBytes)), madeWith(elsewhere, "cd".repeat(32)))).toBe("start a new search");
    // The space unchanged (the refusal is about something else).
    expect(resumeRemedy(stamp({ generation: 1 }, now), now)).toBe("start a new search");
  });

  it("property: any saved JSON at all gives a remedy, never an exception", () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.string(), (saved, label) => {
        expect(resumeRemedy(saved, now)).toBe("start a new search");
        expect(resumeRemedy({ made: { files: { [label]: label } } }, now)).toBe("start a new search");
      }),
      { numRuns: 200 },
    );
  });
});

describe("search --resume", () => {
  const model = join(root, "model");
  const dir = join(root, "run");
  const flags = ["--sparsity", "0.7", "--population", "3", "--generations", "1", "--fitness-windows", "1", "--nsamples", "2", "--eval-windows", "2", "--backend", "wasm"];
  let settings = "";
  let engine = "";
  beforeAll(() => {
    cpSync(defaultModel(), model, { recursive: true });
    const first = run("search", "--model", model, "--out", dir, ...flags);
    expect(first.code, first.stderr).toBe(0);
    settings = readFileSync(join(dir, "settings.json"), "utf8");
    engine = readFileSync(join(dir, "engine-state.json"), "utf8");
  }, 120_000);
  const restore = () => {
    writeFileSync(join(dir, "settings.json"), settings);
    writeFileSync(join(dir, "engine-state.json"), engine);
  };
  const resume = () => run("search", "--resume", dir, "--generations", "2", "--backend", "wasm");

  it("refuses after the model's bytes changed, naming the file", () => {
    const weights = join(model, "model.safetensors");
    const original = readFileSync(weights);
    const changed = Buffer.from(original);
    changed[changed.length - 1] ^= 0x01; // the last weight's low bits: still a valid model
    writeFileSync(weights, changed);
    try {
      const r = resume();
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/engine-state\.json: was saved by a run with other inputs or settings: model model\.safetensors has other bytes/);
    } finally {
      writeFileSync(weights, original);
    }
  });

  it("refuses an edited settings.json, naming the flag, and one with an unknown field", () => {
    restore();
    writeFileSync(join(dir, "settings.json"), settings.replace('"sparsity": 0.7', '"sparsity": 0.6'));
    const r = resume();
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/--sparsity was 0\.7, now 0\.6/);
    writeFileSync(join(dir, "settings.json"), settings.replace("{", '{\n  "extra": 1,'));
    const strict = resume();
    expect(strict.code).toBe(1);
    expect(oneLine(strict.stderr)).toMatch(/settings\.json: invalid settings: .*extra/);
    restore();
  });

  it("refuses an edited engine state (a fitness, a generation)", () => {
    const state = JSON.parse(engine) as { generation: number; history: { fitness: number | null }[] };
    for (const edit of [(s: typeof state) => (s.generation += 1), (s: typeof state) => (s.history[0]!.fitness = 1.5)]) {
      restore();
      const edited = JSON.parse(engine) as typeof state;
      edit(edited);
      writeFileSync(join(dir, "engine-state.json"), JSON.stringify(edited));
      const r = resume();
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/engine-state\.json: was changed after evosparse wrote it/);
    }
    restore();
  });

  it("an unchanged run resumes and finishes", () => {
    restore();
    const r = resume();
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, "summary.json"), "utf8")).generations).toBe(2);
  }, 120_000);
});

describe("train --resume", () => {
  const data = join(root, "train.txt");
  const validation = join(root, "val.txt");
  const out = join(root, "trained");
  const options: TrainOptions = {
    data,
    validation,
    out,
    size: { hiddenSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1, intermediateSize: 64, contextLength: 64 },
    steps: 12,
    batch: 2,
    seqlen: 32,
    lr: 1e-2,
    warmupSteps: 2,
    weightDecay: 0.1,
    seed: 3,
    evalEvery: 0,
    evalWindows: 2,
    backend: "wasm",
    vocabSize: 258,
    workers: 1,
    checkpointEvery: 4,
    resume: false,
  };
  const cli = (changes: Record<string, string>) => {
    const flags: Record<string, string> = {
      data, validation, out, dim: "32", layers: "2", heads: "2", "kv-heads": "1", ffn: "64", context: "64", steps: "12", batch: "2", seqlen: "32",
      lr: "0.01", warmup: "2", "weight-decay": "0.1", seed: "3", "eval-every": "0", "eval-windows": "2", vocab: "258", workers: "1", "checkpoint-every": "4", backend: "wasm", ...changes,
    };
    return run("train", "--resume", ...Object.entries(flags).flatMap(([k, v]) => [`--${k}`, v]));
  };

  it("refuses another --lr, --seed or --data, naming it, and leaves the checkpoint", async () => {
    writeFileSync(data, brownText("train").slice(0, 20_000));
    writeFileSync(validation, brownText("validation").slice(0, 4_000));
    await expect(train({ ...options, onStep: (s) => { if (s.step === 6) throw new Error("killed"); } })).rejects.toThrow("killed");
    const checkpoint = join(`${out}.checkpoint`, "state.json");
    expect(existsSync(checkpoint)).toBe(true);
    const saved = readFileSync(checkpoint, "utf8");
    const other = join(root, "other.txt");
    writeFileSync(other, brownText("train").slice(20_000, 40_000));
    for (const [changes, named] of [
      [{ lr: "0.02" }, /--lr was 0\.01, now 0\.02/],
      [{ seed: "4" }, /--seed was 3, now 4/],
      [{ data: other }, /--data was .*train\.txt, now .*other\.txt/],
    ] as const) {
      const r = cli(changes);
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(named);
      expect(readFileSync(checkpoint, "utf8")).toBe(saved);
    }
    // The same text with other bytes under the same name is named too.
    writeFileSync(data, brownText("train").slice(1, 20_001));
    const changedText = cli({});
    expect(oneLine(changedText.stderr)).toMatch(/--data .*train\.txt has other bytes/);
  }, 120_000);
});
