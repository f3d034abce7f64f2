/**
 * Search benchmark: every allocation method run through the search command's pipeline on
 * stories260K and the embedded model at 70% unstructured (Wanda and SparseGPT), the
 * searches at one fitness-token budget over three seeds; then evaluations per minute with
 * one and two workers, and dense against sequential fitness.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import type { BackendChoice } from "../src/backend/backend.ts";
import { defaultBaselines, resultsDir } from "../src/defaults.ts";
import { writeFileAtomically } from "../src/files.ts";
import type { CalibrationMode } from "../src/prune/pipeline.ts";
import { searchJob, type GivenSettings, type SearchSettings, type SearchSummary } from "../src/jobs/search.ts";
import { plugin as evopressPlugin } from "../plugins/evopress/index.ts";
import { Rng } from "../src/rng.ts";
import { methodContext } from "../src/search/fitness.ts";
import { openFitnessModel } from "../src/search/fitness-setup.ts";
import { brownSetup, storiesSetup, type ModelSetup } from "./quality.ts";

const SPARSITY = 0.7;
/** `--metrics=wanda,sparsegpt` (both by default). */
const SEARCH_METRICS = (process.argv.find((a) => a.startsWith("--metrics="))?.split("=")[1]?.split(",") ?? ["wanda", "sparsegpt"]) as Array<"wanda" | "sparsegpt">;
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

/**
 * The defaults' table: every search as a new user runs it, `evosparse search --method M
 * --fitness kl --budget-tokens T` with nothing else set (no space file, no --start, no
 * --generations: the run derives its plan from the budget and warm-starts from the best
 * baseline), against every training-free allocation the run re-prunes beside it
 * (--baselines: the default list and MRP). Test perplexity is measured on held-out text
 * the calibration and validation never saw (stories260K: the first 46 TinyStories
 * validation stories, checked disjoint from both ranges). The grid: BUDGETS x SEEDS x
 * models x metrics; `--budgets=`, `--seeds=`, `--searches=`, `--models=` narrow it.
 */
const listArg = (name: string): string[] | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3).split(",");
const BUDGETS = (listArg("budgets") ?? ["200000", "800000"]).map(Number);
const SEEDS = (listArg("seeds") ?? ["0", "1", "2"]).map(Number);
const SEARCHES = listArg("searches") ?? ["evopress", "dsa", "msp"];
const MODELS = listArg("models");
const BASELINES = [...defaultBaselines, "mrp"];

/** A search with the defaults: only the model's data, the metric, the seed and the budget are set. */
const defaultsSettings = (setup: ModelSetup, method: string, metric: "wanda" | "sparsegpt", seed: number, budgetTokens: number): GivenSettings => ({
  method,
  sparsity: SPARSITY,
  metric,
  pattern: { kind: "unstructured" },
  model: setup.model,
  calib: setup.calibration,
  field: "text",
  nsamples: 128,
  calibSeed: 0,
  seqlen: setup.seqlen,
  fitnessData: setup.validation,
  fitnessWindows: 8,
  eval: setup.evaluation,
  evalFormat: "text",
  ...(setup.evalWindows !== undefined ? { evalWindows: setup.evalWindows } : {}),
  population: 16,
  seed,
  mode: "dense",
  finalMode: "sequential",
  batch: 4,
  fitness: "kl",
  budgetTokens,
  baselines: BASELINES.join(","),
});

type Row = { label: string; kind: "baseline" | "search"; budget: number; seed: number; test: number; validation: number | null; evaluations: number; generations: number; tokens: number; seconds: number; winner: string };

const defaultsTable = async (setup: ModelSetup, scratch: string, backend: BackendChoice, metric: "wanda" | "sparsegpt", budget: number): Promise<void> => {
  const rows: Row[] = [];
  let dense = NaN;
  let testWindows = 0;
  for (const method of SEARCHES) {
    for (const seed of SEEDS) {
      log(`${setup.name}, ${metric}, ${budget} tokens: ${method} with the defaults, seed ${seed}`);
      const out = join(scratch, `${setup.name}-${metric}-${budget}-${method}-${seed}`);
      const summary = await Effect.runPromise(searchJob({ settings: defaultsSettings(setup, method, metric, seed, budget), out, workers: 1, backend, log: (line) => log(`  ${line}`) }));
      dense = summary.final.dense;
      testWindows = summary.final.windows;
      const history = readFileSync(join(out, "history.csv"), "utf8").trim().split("\n");
      const column = history[0]!.split(",").indexOf("tokens");
      const tokens = history.slice(1).reduce((n, line) => n + Number(line.split(",")[column]), 0);
      const [own, ...others] = summary.final.results;
      rows.push({ label: method, kind: "search", budget, seed, test: own!.test, validation: own!.validation, evaluations: summary.evaluations, generations: summary.generations, tokens, seconds: summary.searchSeconds, winner: summary.winner ?? "" });
      // The baselines are the same in every run (calibration seed 0): kept once.
      for (const r of others) {
        if (!rows.some((x) => x.label === r.method)) rows.push({ label: r.method, kind: "baseline", budget, seed: 0, test: r.test, validation: r.validation, evaluations: 0, generations: 0, tokens: 0, seconds: 0, winner: "" });
      }
      rmSync(join(out, "cache"), { recursive: true, force: true });
    }
  }
  console.log(`\n### ${setup.name}: ${metric} at ${SPARSITY * 100}% unstructured, searches with the defaults at ${budget} fitness tokens\n`);
  for (const note of setup.notes) console.log(`- ${note}`);
  console.log(
    `- searches: \`evosparse search --method M --fitness kl --budget-tokens ${budget}\` and the model's data, nothing else (128 calibration windows, 8 fitness windows, dense fitness, plan derived from the budget, warm start from the best baseline); seeds ${SEEDS.join(", ")}`,
  );
  console.log(`- test: every allocation re-pruned sequentially (the standard protocol), perplexity on ${testWindows} held-out windows of ${setup.seqlen} (dense ${fmt(dense)}); searches: mean (min-max) over seeds\n`);
  const baselines = rows.filter((r) => r.kind === "baseline");
  const owl = baselines.find((r) => r.label === "owl")?.test;
  const bestBaseline = baselines.reduce((b, r) => (r.test < b.test ? r : b), baselines[0]!);
  console.log("| allocation | test ppl | vs OWL | vs best baseline | generations | fitness tokens | search s | the run's winner by validation |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
  const ratio = (x: number, y: number | undefined) => (y === undefined ? "-" : `${(x / y).toFixed(2)}x`);
  for (const r of baselines) console.log(`| ${r.label} | ${fmt(r.test)} | ${ratio(r.test, owl)} | ${ratio(r.test, bestBaseline.test)} | | | | |`);
  for (const method of SEARCHES) {
    const of = rows.filter((r) => r.kind === "search" && r.label === method);
    if (of.length === 0) continue;
    const mean = of.reduce((n, r) => n + r.test, 0) / of.length;
    const avg = (f: (r: Row) => number) => (of.reduce((n, r) => n + f(r), 0) / of.length).toFixed(0);
    console.log(`| ${method} (defaults) | ${meanAndSpread(of.map((r) => r.test))} | ${ratio(mean, owl)} | ${ratio(mean, bestBaseline.test)} | ${avg((r) => r.generations)} | ${avg((r) => r.tokens)} | ${avg((r) => r.seconds)} | ${of.map((r) => r.winner).join(", ")} |`);
  }
  for (const method of SEARCHES) {
    const of = rows.filter((r) => r.kind === "search" && r.label === method);
    if (of.length === 0) continue;
    const beats = of.filter((r) => r.test < bestBaseline.test).length;
    console.log(`\n- ${method} with the defaults beats the best training-free allocation (${bestBaseline.label}, ${fmt(bestBaseline.test)}) on held-out test perplexity in ${beats} of ${of.length} seeds`);
  }
  writeRows(setup, metric, budget, rows, dense);
};

const meanAndSpread = (xs: readonly number[]): string => {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length === 1) return fmt(mean);
  return `${fmt(mean)} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})`;
};

/** results/bench/search-<model>-<metric>-<budget>.csv (a narrowed grid: -partial.csv, so a full run's file is kept). */
const writeRows = (setup: ModelSetup, metric: string, budget: number, rows: readonly Row[], dense: number): void => {
  const dir = join(resultsDir(), "bench");
  mkdirSync(dir, { recursive: true });
  const partial = listArg("seeds") || listArg("searches") || listArg("budgets") || MODELS ? "-partial" : "";
  writeFileAtomically(
    join(dir, `search-${setup.name}-${metric}-${budget}${partial}.csv`),
    stringify(
      rows.map((r) => [setup.name, metric, r.label, r.kind, budget, r.seed, SPARSITY, setup.seqlen, r.validation ?? "", r.test, dense, r.generations, r.evaluations, r.tokens, r.seconds, r.winner]),
      { header: true, columns: ["model", "metric", "allocation", "kind", "budget_tokens", "seed", "sparsity", "seqlen", "validation_kl", "test_ppl", "dense_ppl", "generations", "evaluations", "fitness_tokens", "search_seconds", "winner"] },
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

/** Spearman's rank correlation (ties take their mean rank). */
const spearman = (a: readonly number[], b: readonly number[]): number => {
  const ranks = (xs: readonly number[]): number[] => {
    const order = xs.map((x, i) => [x, i] as const).sort((p, q) => p[0] - q[0]);
    const r = new Array<number>(xs.length);
    for (let i = 0; i < order.length; ) {
      let j = i;
      while (j + 1 < order.length && order[j + 1]![0] === order[i]![0]) j++;
      for (let k = i; k <= j; k++) r[order[k]![1]] = (i + j) / 2;
      i = j + 1;
    }
    return r;
  };
  const ra = ranks(a);
  const rb = ranks(b);
  const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
  const ma = mean(ra);
  const mb = mean(rb);
  let num = 0;
  let da = 0;
  let db = 0;
  ra.forEach((x, i) => {
    num += (x - ma) * (rb[i]! - mb);
    da += (x - ma) ** 2;
    db += (rb[i]! - mb) ** 2;
  });
  return num / Math.sqrt(da * db);
};

/** The levels the fidelity measurement walks (EvoPress's level arithmetic; the stage plan is not used). */
const FIDELITY_SPACE = { levelSize: 0.05, maxLevels: 8, offspring: 8, stages: [{ survivors: 1, tokens: 1024 }] };

/** Candidates and minibatch of the fidelity measurement. */
const FIDELITY_CANDIDATES = 16;
const FIDELITY_TOKENS = 2048;

/**
 * How well a search's cheap fitness ranks allocations as the protocol does: 16 per-linear
 * allocations, random walks of 1 to 64 EvoPress level switches from uniform (the spread a
 * search's history covers), scored by dense-mode fitness on one minibatch of 2048 tokens
 * (KL and perplexity) and by sequential-mode validation perplexity on the fitness windows;
 * Spearman's rank correlation between each cheap fitness and the sequential one.
 */
const fidelityTable = async (setup: ModelSetup, metric: "wanda" | "sparsegpt", backend: BackendChoice): Promise<void> => {
  const base = {
    model: setup.model, metric, pattern: { kind: "unstructured" as const }, calib: setup.calibration, field: "text", nsamples: NSAMPLES, seqlen: setup.seqlen, seed: 0,
    fitnessData: setup.validation, fitnessWindows: FITNESS_WINDOWS, backend, batch: 4, searchSeed: 0,
  };
  const dense = openFitnessModel({ ...base, mode: "dense", fitness: "ppl" });
  const denseKl = openFitnessModel({ ...base, mode: "dense", fitness: "kl" });
  const sequential = openFitnessModel({ ...base, mode: "sequential", fitness: "ppl" });
  try {
    const context = await methodContext(dense.pruner, SPARSITY, { kind: "unstructured" }, []);
    const plugin = evopressPlugin;
    if (plugin.method.kind !== "evolve") throw new Error("evopress is an evolve method");
    const genome = plugin.method.genome(context, FIDELITY_SPACE as never);
    const rng = new Rng(11);
    const candidates = Array.from({ length: FIDELITY_CANDIDATES }, (_, i) => {
      let g = genome.create(rng, 0);
      const walk = 1 + Math.round((63 * i) / (FIDELITY_CANDIDATES - 1));
      for (let k = 0; k < walk; k++) g = genome.mutate(g, rng.split(`${i}-${k}`));
      return genome.decode(g);
    });
    const minibatch = { generation: 0, stage: 0, tokens: FIDELITY_TOKENS };
    const value = (f: { ok: boolean; value?: number }) => (f.ok ? f.value! : Infinity);
    const ppl: number[] = [];
    const kl: number[] = [];
    const truth: number[] = [];
    for (const [i, c] of candidates.entries()) {
      log(`${setup.name}, ${metric}: fidelity candidate ${i + 1}/${candidates.length}`);
      ppl.push(value(await dense.score(c, minibatch)));
      kl.push(value(await denseKl.score(c, minibatch)));
      truth.push(value(await sequential.score(c)));
    }
    console.log(`\n### ${setup.name}: fidelity of the search's fitness, ${metric} at ${SPARSITY * 100}%\n`);
    console.log(`${FIDELITY_CANDIDATES} per-linear allocations (random walks of 1 to 64 level switches); cheap fitness: dense calibration mode, one minibatch of ${FIDELITY_TOKENS} validation tokens; reference: sequential mode, perplexity on ${FITNESS_WINDOWS} validation windows.\n`);
    console.log("| cheap fitness | Spearman vs sequential validation ppl |");
    console.log("| --- | ---: |");
    console.log(`| dense, KL | ${spearman(kl, truth).toFixed(3)} |`);
    console.log(`| dense, perplexity | ${spearman(ppl, truth).toFixed(3)} |`);
  } finally {
    dense.dispose();
    denseKl.dispose();
    sequential.dispose();
  }
};

/** Section `search`: the methods table on stories260K (when the assets are there) and the embedded model. */
export const searchMethodsSection = async (assets: string, backend: BackendChoice, haveAssets: boolean): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-search-"));
  try {
    console.log("\n## Search: allocation methods compared by test perplexity\n");
    if (!haveAssets) console.log(`(stories260K skipped: ${assets} is absent)`);
    const setups = [...(haveAssets ? [storiesSetup(assets, scratch)] : []), brownSetup()].filter((s) => !MODELS || MODELS.includes(s.name));
    for (const metric of SEARCH_METRICS) {
      for (const setup of setups) {
        if (process.argv.includes("--fidelity")) await fidelityTable(setup, metric, backend);
        for (const budget of BUDGETS) await defaultsTable(setup, scratch, backend, metric, budget);
      }
    }
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
