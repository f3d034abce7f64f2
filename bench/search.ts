/**
 * Search benchmark: every allocation method run through the search command's pipeline on
 * stories260K and the embedded model at 70% unstructured Wanda, with a fixed seed and
 * budget; then evaluations per minute with one and two workers, and dense against
 * sequential fitness.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import type { BackendChoice } from "../src/backend/backend.ts";
import { resultsDir } from "../src/defaults.ts";
import { writeFileAtomically } from "../src/files.ts";
import type { CalibrationMode } from "../src/prune/pipeline.ts";
import { searchJob, type SearchSettings, type SearchSummary } from "../src/jobs/search.ts";
import { brownSetup, storiesSetup, type ModelSetup } from "./quality.ts";

const METHODS = ["uniform", "owl", "atp", "mrp", "dsa", "msp"] as const;
const SPARSITY = 0.7;
const SEED = 0;
const POPULATION = 12;
const GENERATIONS = 8;
const NSAMPLES = 32;
const FITNESS_WINDOWS = 8;
const EVAL_WINDOWS = 128;

const log = (line: string) => process.stderr.write(`${line}\n`);

const settingsFor = (setup: ModelSetup, method: string, overrides: Partial<SearchSettings> = {}) => ({
  method,
  sparsity: SPARSITY,
  metric: "wanda" as const,
  pattern: { kind: "unstructured" as const },
  model: setup.model,
  calib: setup.calibration,
  field: "text",
  nsamples: NSAMPLES,
  calibSeed: 0,
  seqlen: setup.seqlen,
  fitnessData: setup.validation,
  fitnessWindows: FITNESS_WINDOWS,
  eval: setup.evaluation,
  evalFormat: "text" as const,
  evalWindows: EVAL_WINDOWS,
  population: POPULATION,
  generations: GENERATIONS,
  seed: SEED,
  mode: "dense" as CalibrationMode,
  finalMode: "sequential" as CalibrationMode,
  batch: 4,
  ...overrides,
});

const runOne = (settings: ReturnType<typeof settingsFor>, out: string, workers: number, backend: BackendChoice): Promise<SearchSummary> =>
  Effect.runPromise(searchJob({ settings, out, workers, backend, log: (line) => log(`  ${line}`) }));

const fmt = (x: number | null | undefined): string => (x === null || x === undefined ? "-" : x.toFixed(2));

const methodsTable = async (setup: ModelSetup, scratch: string, backend: BackendChoice): Promise<void> => {
  const rows: Array<{ method: string; validation: number | null; test: number; evaluations: number; seconds: number; genome: string }> = [];
  let dense = NaN;
  let testWindows = 0;
  for (const method of METHODS) {
    log(`${setup.name}: ${method}`);
    const summary = await runOne(settingsFor(setup, method), join(scratch, `${setup.name}-${method}`), 1, backend);
    const own = summary.final.results[0]!;
    dense = summary.final.dense;
    testWindows = summary.final.windows;
    rows.push({ method, validation: own.validation, test: own.test, evaluations: summary.evaluations, seconds: summary.searchSeconds, genome: summary.best.genome });
  }
  console.log(`\n### ${setup.name}: allocation methods at ${SPARSITY * 100}% unstructured, Wanda\n`);
  for (const note of setup.notes) console.log(`- ${note}`);
  console.log(
    `- seed ${SEED}; dsa and msp: population ${POPULATION}, ${GENERATIONS} generations (at most ${POPULATION * GENERATIONS} evaluations); ` +
      `fitness: validation perplexity on ${FITNESS_WINDOWS} windows of ${setup.seqlen}, dense calibration mode; ${NSAMPLES} calibration windows`,
  );
  console.log(`- test: every allocation re-pruned sequentially (the standard protocol), perplexity on the first ${testWindows} windows of ${setup.seqlen} (dense ${fmt(dense)})\n`);
  console.log("| method | validation ppl | test ppl | evaluations | search s | best |");
  console.log("| --- | ---: | ---: | ---: | ---: | --- |");
  for (const r of rows) console.log(`| ${r.method} | ${fmt(r.validation)} | ${fmt(r.test)} | ${r.evaluations} | ${r.seconds.toFixed(1)} | ${r.genome} |`);
  const test = (m: string) => rows.find((r) => r.method === m)!.test;
  for (const searched of ["dsa", "msp"]) {
    for (const baseline of ["uniform", "owl"]) {
      console.log(`- ${searched} < ${baseline} on test: ${test(searched) < test(baseline) ? "yes" : "no"} (${fmt(test(searched))} vs ${fmt(test(baseline))})`);
    }
  }
  const dir = join(resultsDir(), "bench");
  mkdirSync(dir, { recursive: true });
  writeFileAtomically(
    join(dir, `search-${setup.name}.csv`),
    stringify(
      rows.map((r) => [setup.name, r.method, SPARSITY, setup.seqlen, r.validation ?? "", r.test, dense, r.evaluations, r.seconds, r.genome]),
      { header: true, columns: ["model", "method", "sparsity", "seqlen", "validation_ppl", "test_ppl", "dense_ppl", "evaluations", "search_seconds", "best"] },
    ),
  );
};

/**
 * Fitness evaluations per minute of a short dense-mode DSA search (evaluation time alone,
 * the part workers share) with the given backend and workers.
 */
export const fitnessRate = async (setup: ModelSetup, scratch: string, backend: BackendChoice, workers: number): Promise<number> => {
  const label = `${backend}-${workers}`;
  log(`${setup.name}: fitness rate, ${backend}, ${workers} worker${workers === 1 ? "" : "s"}`);
  const s = await runOne(settingsFor(setup, "dsa", { mode: "dense", population: 16, generations: 3, evalWindows: 1 }), join(scratch, `rate-${setup.name}-${label}`), workers, backend);
  return s.evaluations / (s.evaluationSeconds / 60);
};

/** Evaluations per minute of the same DSA search under different settings, side by side. */
const throughput = async (setup: ModelSetup, scratch: string, backend: BackendChoice): Promise<void> => {
  const rate = async (label: string, workers: number, mode: CalibrationMode, population: number, generations: number) => {
    log(`${setup.name}: throughput, ${label}`);
    const s = await runOne(settingsFor(setup, "dsa", { mode, population, generations, evalWindows: 1 }), join(scratch, `rate-${label}`), workers, backend);
    return { label, evaluations: s.evaluations, seconds: s.searchSeconds, perMinute: s.evaluationsPerMinute, evaluating: s.evaluationSeconds, evalRate: s.evaluations / (s.evaluationSeconds / 60) };
  };
  const one = await rate("1 worker", 1, "dense", 16, 3);
  const two = await rate("2 workers", 2, "dense", 16, 3);
  const sequential = await rate("sequential fitness", 1, "sequential", 8, 2);
  const dense = await rate("dense fitness", 1, "dense", 8, 2);
  console.log(`\n### ${setup.name}: fitness evaluations per minute (DSA, Wanda 70%, ${FITNESS_WINDOWS} windows of ${setup.seqlen})\n`);
  console.log("Search seconds include the main thread's work between evaluations (decoding genomes, their statistics);");
  console.log("evaluation seconds are the wall time spent waiting for fitness evaluations, the part workers share.\n");
  console.log("| setting | evaluations | search s | evaluations/min (search) | evaluation s | evaluations/min (evaluation) |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const r of [one, two, sequential, dense]) {
    console.log(`| ${r.label} | ${r.evaluations} | ${r.seconds.toFixed(1)} | ${r.perMinute.toFixed(1)} | ${r.evaluating.toFixed(1)} | ${r.evalRate.toFixed(1)} |`);
  }
  console.log(`\n- 2 workers / 1 worker, whole search: **${(two.perMinute / one.perMinute).toFixed(2)}x**; evaluations alone: **${(two.evalRate / one.evalRate).toFixed(2)}x** (target 1.7x)`);
  console.log(`- dense / sequential fitness: **${(dense.evalRate / sequential.evalRate).toFixed(2)}x** (evaluations alone), ${(dense.perMinute / sequential.perMinute).toFixed(2)}x (whole search)`);
};

/** Section `search`: the methods table on stories260K (when the assets are there) and the embedded model. */
export const searchMethodsSection = async (assets: string, backend: BackendChoice, haveAssets: boolean): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-search-"));
  try {
    console.log("\n## Search: allocation methods compared by test perplexity\n");
    if (!haveAssets) console.log(`(stories260K skipped: ${assets} is absent)`);
    const setups = [...(haveAssets ? [storiesSetup(assets, scratch)] : []), brownSetup()];
    for (const setup of setups) await methodsTable(setup, scratch, backend);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};

/** Section `search-rate`: evaluations per minute, run alone so the two cores are free. */
export const searchRateSection = async (backend: BackendChoice): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-rate-"));
  try {
    await throughput(brownSetup(), scratch, backend);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};
