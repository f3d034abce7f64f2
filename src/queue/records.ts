/**
 * What travels through the queue, as data only, decoded with Schema on both sides:
 *
 * - the run's setup record, stored once per search under its fingerprint: the model's
 *   file digests (never a path: a worker uses its own `--model`), the pruning and fitness
 *   settings, the backend family, and the calibration and fitness windows as tokens;
 * - a fitness job: the fingerprint, one allocation, its fidelity;
 * - a job's result: a Fitness.
 *
 * The fingerprint is the SHA-256 of the setup record's text, so a worker that decodes the
 * record checks it against the fingerprint it was asked under, and two runs share a queue
 * only when everything that decides a fitness is the same.
 */
import { createHash } from "node:crypto";
import { readdirSync, statSync } from "node:fs";
import { fileDigest } from "../reads.ts";
import { basename, join } from "node:path";
import { Schema } from "effect";
import type { Window } from "../data/windows.ts";
import type { Fidelity, Fitness } from "../engine/genome.ts";
import { FITNESS_MEASURES } from "../search/fitness.ts";
import type { FitnessModel, FitnessSetup } from "../search/fitness-setup.ts";
import { SearchSettings, StructuredImportanceSchema } from "../search/settings.ts";

export const RECORD_VERSION = 1;

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));
const Hex64 = Schema.String.check(Schema.isPattern(/^[0-9a-f]{64}$/));
/** Int32 little-endian, base64: compact, and checked against the model's vocabulary on arrival. */
const Tokens = Schema.String.check(Schema.isPattern(/^[A-Za-z0-9+/]*={0,2}$/));
const WindowRecord = Schema.Struct({ ids: Tokens, targets: Tokens });

const ModelFile = Schema.Struct({ name: Schema.String, bytes: Count, sha256: Hex64 });

/** The search's own settings schema gives each setting's field, so the record decodes a setting as settings.json does. */
const setting = SearchSettings.fields;

export const SetupRecord = Schema.Struct({
  version: Schema.Literal(RECORD_VERSION),
  /** A single checkpoint file (llama2.c) or a Hugging Face folder's weight and config files. */
  model: Schema.Struct({ kind: Schema.Literals(["file", "folder"]), files: Schema.Array(ModelFile) }),
  /** The backend family the fitnesses must be computed with (results differ in the last bits). */
  backend: Schema.String,
  metric: setting.metric,
  mode: setting.mode,
  pattern: setting.pattern,
  // A resolved window length (settings.json's 0 means "the model's context", never sent).
  seqlen: setting.seqlen.check(Schema.isGreaterThanOrEqualTo(2)),
  batch: setting.batch.check(Schema.isGreaterThanOrEqualTo(1)),
  /** Queue workers compute the built-in measures only (a search refuses a user's with --queue). */
  fitness: Schema.Literals(FITNESS_MEASURES),
  /** The seed of the stage minibatches (the search's seed). */
  searchSeed: setting.seed,
  /** The calibration seed (structured fitness draws from it too). */
  seed: setting.calibSeed,
  structured: Schema.optional(Schema.Struct({ importance: StructuredImportanceSchema, target: Schema.Finite, fusionSteps: setting.fusionSteps })),
  calibration: Schema.Array(Tokens),
  windows: Schema.Array(WindowRecord),
  pool: Schema.Array(WindowRecord),
});
export type SetupRecord = typeof SetupRecord.Type;

const FidelitySchema = Schema.Struct({ generation: Count, stage: Count, tokens: Schema.optional(Count) });

/** One candidate to score. */
export const FitnessJob = Schema.Struct({
  fingerprint: Hex64,
  allocation: Schema.Array(Schema.Finite).check(Schema.isMinLength(1)),
  fidelity: Schema.optional(FidelitySchema),
});
export type FitnessJob = typeof FitnessJob.Type;

/** What a worker returns for a job. */
export const JobResult = Schema.Union([
  Schema.Struct({ ok: Schema.Literal(true), value: Schema.Finite, seconds: Schema.optional(Schema.Finite), tokens: Schema.optional(Count) }),
  Schema.Struct({ ok: Schema.Literal(false), error: Schema.String, seconds: Schema.optional(Schema.Finite), tokens: Schema.optional(Count) }),
]);

/** Schema's message on one line, for logs and errors. */
const oneLine = (e: unknown): string => ((e as Error)?.message ?? String(e)).replace(/\s*\n\s*/g, " ").slice(0, 300);

const decoder =
  <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S, what: string) =>
  (input: unknown): S["Type"] => {
    try {
      return Schema.decodeUnknownSync(schema)(input);
    } catch (e) {
      throw new Error(`invalid ${what}: ${oneLine(e)}`);
    }
  };

export const decodeFitnessJob = decoder(FitnessJob, "job payload");
export const decodeJobResult = (input: unknown): Fitness => decoder(JobResult, "job result")(input) as Fitness;

/** The setup record from its stored text, checked against the fingerprint it was stored under. */
export const decodeSetupRecord = (text: string, fingerprint: string): SetupRecord => {
  if (fingerprintOf(text) !== fingerprint) throw new Error(`the setup stored under fingerprint ${fingerprint.slice(0, 12)} does not hash to it`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`invalid setup record: not JSON (${oneLine(e)})`);
  }
  return decoder(SetupRecord, "setup record")(json);
};

export const fingerprintOf = (text: string): string => createHash("sha256").update(text).digest("hex");

/** Little-endian whatever the machine, so a record (and its fingerprint) is the same everywhere. */
const encodeTokens = (tokens: Int32Array): string => {
  const bytes = Buffer.allocUnsafe(4 * tokens.length);
  tokens.forEach((t, i) => bytes.writeInt32LE(t, 4 * i));
  return bytes.toString("base64");
};

const decodeTokens = (text: string): Int32Array => {
  const bytes = Buffer.from(text, "base64");
  if (bytes.byteLength % 4 !== 0) throw new Error("invalid setup record: a token array is not a whole number of int32");
  const out = new Int32Array(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readInt32LE(4 * i);
  return out;
};

const digestOf = (path: string): string => fileDigest(path);

/** The files whose bytes decide a model's outputs: the weights and, for a folder, its config. */
const WEIGHT_FILE = /^(config\.json|.*\.safetensors|.*\.safetensors\.index\.json)$/;

export type ModelIdentity = SetupRecord["model"];

export const modelIdentity = (path: string): ModelIdentity => {
  if (statSync(path).isDirectory()) {
    const names = readdirSync(path).filter((n) => WEIGHT_FILE.test(n)).sort();
    return { kind: "folder", files: names.map((name) => ({ name, bytes: statSync(join(path, name)).size, sha256: digestOf(join(path, name)) })) };
  }
  return { kind: "file", files: [{ name: basename(path), bytes: statSync(path).size, sha256: digestOf(path) }] };
};

/**
 * Why a worker's model is not the record's, in words, or undefined when it is: a file's
 * name may differ (another copy), never its bytes; a folder must hold the same files.
 */
export const modelDifference = (mine: ModelIdentity, wanted: ModelIdentity): string | undefined => {
  if (mine.kind !== wanted.kind) return `the search's model is a ${wanted.kind}, this one a ${mine.kind}`;
  if (mine.files.length !== wanted.files.length) return `the search's model has ${wanted.files.length} weight files, this one ${mine.files.length}`;
  for (const [i, w] of wanted.files.entries()) {
    const m = mine.files[i]!;
    if (mine.kind === "folder" && m.name !== w.name) return `the search's model has ${w.name}, this one ${m.name}`;
    if (m.sha256 !== w.sha256) return `${w.name} differs (sha256 ${w.sha256.slice(0, 12)} wanted, ${m.sha256.slice(0, 12)} here)`;
  }
  return undefined;
};

/** The record of a search's setup and its fingerprint. */
export const setupRecordOf = (setup: FitnessSetup, model: FitnessModel, identity: ModelIdentity): { readonly text: string; readonly fingerprint: string } => {
  const windowRecord = (w: Window) => ({ ids: encodeTokens(w.ids), targets: encodeTokens(w.targets) });
  // Queue workers compute the built-in measures only (the search refuses a user's with --queue).
  const fitness = setup.fitness ?? "ppl";
  if (!(FITNESS_MEASURES as readonly string[]).includes(fitness)) throw new Error(`fitness ${fitness} is not one queue workers compute`);
  const record: SetupRecord = {
    version: RECORD_VERSION,
    model: identity,
    backend: setup.backend,
    metric: setup.metric,
    mode: setup.mode,
    pattern: setup.pattern,
    seqlen: setup.seqlen,
    batch: setup.batch ?? 1,
    fitness: fitness as (typeof FITNESS_MEASURES)[number],
    searchSeed: setup.searchSeed ?? 0,
    seed: setup.seed,
    ...(setup.structured ? { structured: setup.structured } : {}),
    calibration: model.calibration.map(encodeTokens),
    windows: model.windows.map(windowRecord),
    // Structured fitness has no stage minibatches, so no pool to send.
    pool: setup.structured ? [] : model.pool().map(windowRecord),
  };
  const text = JSON.stringify(record);
  return { text, fingerprint: fingerprintOf(text) };
};

/**
 * A fitness setup from a record and the worker's own copy of the model: nothing in it is a
 * path from the queue, and no text file is read. Token ids are checked against the
 * vocabulary by `checkTokens` once the model is open.
 */
export const setupFromRecord = (record: SetupRecord, modelPath: string): FitnessSetup => {
  const windows = (list: SetupRecord["windows"]): Window[] => list.map((w) => ({ ids: decodeTokens(w.ids), targets: decodeTokens(w.targets) }));
  const calibration = record.calibration.map(decodeTokens);
  return {
    model: modelPath,
    metric: record.metric,
    mode: record.mode,
    pattern: record.pattern,
    calib: "",
    nsamples: calibration.length,
    seqlen: record.seqlen,
    seed: record.seed,
    batch: record.batch,
    field: "text",
    fitnessData: "",
    fitnessWindows: record.windows.length,
    backend: record.backend as FitnessSetup["backend"],
    fitness: record.fitness,
    searchSeed: record.searchSeed,
    ...(record.structured ? { structured: record.structured } : {}),
    calibrationTokens: calibration,
    fitnessTokens: { windows: windows(record.windows), pool: windows(record.pool) },
  };
};

/** Refuses windows the model cannot read: ids outside its vocabulary, longer than its context, mismatched targets. */
export const checkTokens = (setup: FitnessSetup, vocab: number, context: number): void => {
  const check = (ids: Int32Array, what: string, low = 0) => {
    if (ids.length < 2 || ids.length > context) throw new Error(`invalid setup record: ${what} has ${ids.length} tokens (the model reads 2 to ${context})`);
    for (const id of ids) if (id < low || id >= vocab) throw new Error(`invalid setup record: ${what} holds token ${id}, outside the vocabulary of ${vocab}`);
  };
  if ((setup.calibrationTokens?.length ?? 0) < 1) throw new Error("invalid setup record: no calibration windows");
  if ((setup.fitnessTokens?.windows.length ?? 0) < 1) throw new Error("invalid setup record: no fitness windows");
  setup.calibrationTokens?.forEach((ids, i) => check(ids, `calibration window ${i}`));
  for (const [name, list] of [["fitness", setup.fitnessTokens?.windows ?? []], ["pool", setup.fitnessTokens?.pool ?? []]] as const) {
    list.forEach((w, i) => {
      check(w.ids, `${name} window ${i}`);
      if (w.targets.length !== w.ids.length) throw new Error(`invalid setup record: ${name} window ${i} has ${w.targets.length} targets for ${w.ids.length} ids`);
      check(w.targets, `${name} window ${i}'s targets`, -1);
    });
  }
};

/** A job's id: the same candidate at the same fidelity of the same run is the same job, so a resumed search finds results already computed. */
export const jobIdOf = (fingerprint: string, allocation: readonly number[], fidelity: Fidelity | undefined): string =>
  `c${createHash("sha256").update(JSON.stringify([fingerprint, allocation, fidelity ?? null])).digest("hex").slice(0, 40)}`;
