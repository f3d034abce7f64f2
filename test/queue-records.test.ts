/**
 * What travels through the job queue: queue addresses, job payloads and setup records are
 * decoded with Schema and refuse anything else with a clear error (properties over
 * arbitrary input); a run's setup rebuilt from its record alone, with no text file read,
 * scores candidates exactly as the search's own model; a changed model byte changes the
 * fingerprint and is named when a worker compares; Redis unreachable is one line.
 */
import { existsSync, copyFileSync, cpSync, openSync, closeSync, writeSync, readSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { QueueError, UsageError } from "../src/errors.ts";
import { parseQueueAddress } from "../src/queue/address.ts";
import {
  checkTokens,
  decodeFitnessJob,
  decodeJobResult,
  decodeSetupRecord,
  fingerprintOf,
  jobIdOf,
  modelDifference,
  modelIdentity,
  setupFromRecord,
  setupRecordOf,
} from "../src/queue/records.ts";
import { openRedis } from "../src/queue/redis.ts";
import { openFitnessModel, type FitnessSetup } from "../src/search/fitness-setup.ts";
import { embeddedModel, errorLines, evosparse, tempRoot } from "./helpers/embedded.ts";
import { freePort } from "./helpers/redis.ts";

const root = tempRoot("queue-records");

describe("queue addresses", () => {
  it("accept redis:// and rediss:// with user, password and database, and never show the password", () => {
    expect(parseQueueAddress("redis://127.0.0.1:6379").shown).toBe("redis://127.0.0.1:6379");
    const a = parseQueueAddress("rediss://me:s3cret@cache.example:6380/2");
    expect(a.url).toBe("rediss://me:s3cret@cache.example:6380/2");
    expect(a.shown).toBe("rediss://me:***@cache.example:6380/2");
  });

  it("refuse anything else with a UsageError naming the flag, without the password", () => {
    for (const bad of ["localhost:6379", "http://h:1", "redis://h:1/x", "redis://:pw@h:99999", "redis://h:1/?a=b", ""]) {
      expect(() => parseQueueAddress(bad)).toThrow(UsageError);
    }
    try {
      parseQueueAddress("http://u:topsecret@h:1");
    } catch (e) {
      expect((e as UsageError).problem).toMatch(/^--queue /);
      expect((e as UsageError).problem).not.toContain("topsecret");
    }
    fc.assert(
      fc.property(fc.string(), (text) => {
        try {
          parseQueueAddress(text);
        } catch (e) {
          expect(e).toBeInstanceOf(UsageError);
        }
      }),
    );
  });
});

describe("job payloads and results", () => {
  const fingerprint = "a".repeat(64);

  it("decode a well-formed job and refuse arbitrary values with 'invalid job payload'", () => {
    expect(decodeFitnessJob({ fingerprint, allocation: [0.5, 0.7], fidelity: { generation: 2, stage: 1, tokens: 512 } })).toEqual({
      fingerprint,
      allocation: [0.5, 0.7],
      fidelity: { generation: 2, stage: 1, tokens: 512 },
    });
    for (const bad of [null, "x", { fingerprint }, { fingerprint: "zz", allocation: [0.5] }, { fingerprint, allocation: [] }, { fingerprint, allocation: ["0.5"] }, { fingerprint, allocation: [0.5], fidelity: { generation: -1, stage: 0 } }]) {
      expect(() => decodeFitnessJob(bad)).toThrow(/^invalid job payload: /);
    }
    fc.assert(
      fc.property(fc.anything(), (value) => {
        try {
          decodeFitnessJob(value);
        } catch (e) {
          expect((e as Error).message).toMatch(/^invalid job payload: /);
        }
      }),
    );
  });

  it("results are a Fitness or an error", () => {
    expect(decodeJobResult({ ok: true, value: 3.5, seconds: 0.1 })).toEqual({ ok: true, value: 3.5, seconds: 0.1 });
    expect(decodeJobResult({ ok: false, error: "non-finite" })).toEqual({ ok: false, error: "non-finite" });
    fc.assert(
      fc.property(fc.anything(), (value) => {
        try {
          decodeJobResult(value);
        } catch (e) {
          expect((e as Error).message).toMatch(/^invalid job result: /);
        }
      }),
    );
  });

  it("job ids name the candidate, its fidelity and the run", () => {
    const a = jobIdOf(fingerprint, [0.5, 0.6], { generation: 1, stage: 0, tokens: 256 });
    expect(a).toMatch(/^c[0-9a-f]{40}$/);
    expect(jobIdOf(fingerprint, [0.5, 0.6], { generation: 1, stage: 0, tokens: 256 })).toBe(a);
    expect(jobIdOf(fingerprint, [0.5, 0.6], { generation: 2, stage: 0, tokens: 256 })).not.toBe(a);
    expect(jobIdOf(fingerprint, [0.5, 0.61], { generation: 1, stage: 0, tokens: 256 })).not.toBe(a);
    expect(jobIdOf("b".repeat(64), [0.5, 0.6], { generation: 1, stage: 0, tokens: 256 })).not.toBe(a);
  });
});

describe("setup records", () => {
  const setup: FitnessSetup = {
    model: embeddedModel,
    metric: "wanda",
    mode: "dense",
    pattern: { kind: "unstructured" },
    calib: "brown:calibration",
    field: "text",
    nsamples: 2,
    seqlen: 64,
    seed: 3,
    fitnessData: "brown:validation",
    fitnessWindows: 3,
    backend: "wasm",
    fitness: "kl",
    searchSeed: 7,
    batch: 2,
  };
  beforeAll(async () => {
    await initBackend("wasm");
  });

  it("rebuild a fitness model that scores exactly as the search's, from tokens alone", async () => {
    const model = openFitnessModel(setup);
    try {
      const record = setupRecordOf(setup, model, modelIdentity(embeddedModel));
      expect(record.fingerprint).toBe(fingerprintOf(record.text));
      const decoded = decodeSetupRecord(record.text, record.fingerprint);
      const rebuilt = setupFromRecord(decoded, embeddedModel);
      // Nothing from the record is a path: the text files are not named, the model is ours.
      expect(rebuilt.calib).toBe("");
      expect(rebuilt.fitnessData).toBe("");
      expect(rebuilt.model).toBe(embeddedModel);
      expect(rebuilt.calibrationTokens).toEqual(model.calibration);
      const copy = openFitnessModel(rebuilt);
      try {
        expect(copy.windows).toEqual(model.windows);
        expect(copy.pool()).toEqual(model.pool());
        const blocks = model.pruner.layout.length > 0 ? new Set(model.pruner.layout.map((e) => e.block)).size : 0;
        const allocation = Array.from({ length: blocks }, (_, b) => 0.4 + (0.3 * b) / blocks);
        for (const fidelity of [undefined, { generation: 3, stage: 1, tokens: 120 }]) {
          expect(await copy.score(allocation, fidelity)).toEqual(await model.score(allocation, fidelity));
        }
      } finally {
        copy.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it("refuse text that is not the record of its fingerprint, or not a record", () => {
    const model = openFitnessModel(setup);
    try {
      const record = setupRecordOf(setup, model, modelIdentity(embeddedModel));
      expect(() => decodeSetupRecord(record.text, "0".repeat(64))).toThrow(/does not hash to it/);
      const other = JSON.stringify({ ...JSON.parse(record.text), metric: "exec" });
      expect(() => decodeSetupRecord(other, fingerprintOf(other))).toThrow(/^invalid setup record: /);
    } finally {
      model.dispose();
    }
    fc.assert(
      fc.property(fc.string(), (text) => {
        expect(() => decodeSetupRecord(text, fingerprintOf(text))).toThrow(/^invalid setup record: /);
      }),
    );
  });

  it("refuse tokens the model cannot read", () => {
    const model = openFitnessModel(setup);
    try {
      const rebuilt = setupFromRecord(decodeSetupRecord(setupRecordOf(setup, model, modelIdentity(embeddedModel)).text, setupRecordOf(setup, model, modelIdentity(embeddedModel)).fingerprint), embeddedModel);
      const vocab = model.checkpoint.spec.vocabSize;
      expect(() => checkTokens(rebuilt, vocab, 64)).not.toThrow();
      expect(() => checkTokens(rebuilt, vocab, 32)).toThrow(/calibration window 0 has 64 tokens/);
      const bad = { ...rebuilt, calibrationTokens: [Int32Array.from([1, vocab])] };
      expect(() => checkTokens(bad, vocab, 64)).toThrow(new RegExp(`token ${vocab}, outside the vocabulary`));
    } finally {
      model.dispose();
    }
  });

  it("a model differing in one byte has another identity, and the difference is named", () => {
    const copy = join(root, "brown-llama-copy");
    cpSync(embeddedModel, copy, { recursive: true });
    expect(modelDifference(modelIdentity(copy), modelIdentity(embeddedModel))).toBeUndefined();
    const weights = join(copy, "model.safetensors");
    const fd = openSync(weights, "r+");
    try {
      const at = 4096;
      const byte = Buffer.alloc(1);
      readSync(fd, byte, 0, 1, at);
      byte[0] = byte[0]! ^ 1;
      writeSync(fd, byte, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    expect(modelDifference(modelIdentity(copy), modelIdentity(embeddedModel))).toMatch(/^model\.safetensors differs \(sha256 [0-9a-f]{12} wanted, [0-9a-f]{12} here\)$/);
    // A single-file model may be another copy under another name; its bytes decide.
    const file = join(root, "stories-like.bin");
    copyFileSync(join(embeddedModel, "config.json"), file);
    const renamed = join(root, "renamed.bin");
    copyFileSync(file, renamed);
    expect(modelDifference(modelIdentity(renamed), modelIdentity(file))).toBeUndefined();
    expect(modelDifference(modelIdentity(copy), modelIdentity(file))).toMatch(/is a file, this one a folder/);
  });
});

describe("Redis unreachable", () => {
  it("is one clear error, for the library and for both commands, nothing written", async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    await expect(openRedis(parseQueueAddress(url), "test")).rejects.toThrow(QueueError);
    await expect(openRedis(parseQueueAddress(url), "test")).rejects.toThrow(`Redis at ${url} is unreachable (ECONNREFUSED)`);
    const worker = evosparse("worker", "--queue", `redis://u:pw@127.0.0.1:${port}`);
    expect(worker.code).toBe(1);
    expect(errorLines(worker.stderr)).toEqual([`evosparse: queue: Redis at redis://u:***@127.0.0.1:${port} is unreachable (ECONNREFUSED)`]);
    const out = join(root, "never");
    const search = evosparse(
      "search", "--method", "dsa", "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
      "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--sparsity", "0.6", "--population", "4", "--generations", "2", "--out", out, "--queue", url,
    );
    expect(search.code).toBe(1);
    expect(errorLines(search.stderr)).toEqual([`evosparse: queue: Redis at ${url} is unreachable (ECONNREFUSED)`]);
    expect(existsSync(out)).toBe(false);
    const bad = evosparse("worker", "--queue", "localhost:6379");
    expect(bad.code).toBe(2);
    expect(errorLines(bad.stderr)[0]).toMatch(/--queue "localhost:6379"|--queue localhost:6379/);
  });
});
