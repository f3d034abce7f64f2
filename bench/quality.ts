/**
 * Two benchmark sections about pruning itself, run through the same path as the prune
 * command (calibration windows -> Pruner -> plugin allocation -> sequential pruning ->
 * perplexity):
 *  - `quality`: perplexity of real models pruned with every metric x allocation at
 *    50-80% unstructured and 2:4, and whether the published orderings hold;
 *  - `stages`: seconds per pruning stage on a GPT-2-small-shaped checkpoint.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import { perBlock } from "../src/allocation/allocation.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { splitStories } from "../src/data/text-source.ts";
import { contiguousWindows, scoredTokens, type Window } from "../src/data/windows.ts";
import { defaultData, defaultModel, projectRoot, resultsDir } from "../src/defaults.ts";
import { evaluationWindows } from "../src/eval/inputs.ts";
import { writeFileAtomically } from "../src/files.ts";
import type { ModelSpec } from "../src/model/spec.ts";
import type { PruneMetric } from "../src/prune/prune-linear.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { createPruner, openCalibratedModel } from "../src/prune/setup.ts";
import { targetOf, toAllocation } from "../src/allocation/pattern.ts";
import { allocationFitness, methodContext } from "../src/search/fitness.ts";
import type { BlockAllocation, MethodPlugin, Pattern } from "../src/search/plugin.ts";
import { loadPlugin } from "../src/search/registry.ts";
import { runFixedMethod } from "../src/search/run-method.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { Rng } from "../src/rng.ts";

const METRICS: readonly PruneMetric[] = ["magnitude", "wanda", "sparsegpt"];
const ALLOCATIONS = ["uniform", "owl", "atp"] as const;
type AllocationName = (typeof ALLOCATIONS)[number];

/** The table's columns: four unstructured targets and the 2:4 pattern. */
interface Column {
  readonly label: string;
  readonly pattern: Pattern;
  readonly sparsity?: number;
}
const COLUMNS: readonly Column[] = [
  ...[0.5, 0.6, 0.7, 0.8].map((s) => ({ label: `${s * 100}%`, pattern: { kind: "unstructured" } as Pattern, sparsity: s })),
  { label: "2:4", pattern: { kind: "nm", n: 2, m: 4 } },
];

/**
 * Calibration windows per model. The protocol's default is 128; measured on this 2-core
 * machine (wasm), a sequential prune with 32 windows takes 3-5 s (brown model, magnitude and
 * wanda; sparsegpt 9 s) and 3-4 s (stories260K), so 128 windows would add some 15 minutes
 * over the 78 pruned cells. 32 keeps the section within its budget of about 15 minutes.
 */
const NSAMPLES = 32;
/**
 * Evaluation windows of brown:test. All 439 take 25-30 s per evaluation here, which over 40
 * evaluations made the section about 30 minutes; its first 128 windows (the search bench's
 * evaluation set too) are the same fixed text for every cell, so comparisons stay paired.
 */
const BROWN_EVAL_WINDOWS = 128;
const SEED = 0;
/** Validation windows for ATP's beta grid. */
const VALID_WINDOWS = 4;
/** Windows per forward pass, for calibration and evaluation alike. */
const BATCH = 4;

export interface ModelSetup {
  /** Short name: the CSV file is quality-<name>.csv. */
  readonly name: string;
  readonly model: string;
  readonly calibration: string;
  readonly validation: string;
  readonly evaluation: string;
  /** The first windows of the evaluation text only (all of them when absent). */
  readonly evalWindows?: number;
  readonly seqlen: number;
  readonly notes: readonly string[];
}

interface Cell {
  readonly metric: PruneMetric;
  readonly allocation: AllocationName;
  readonly column: Column;
  readonly ppl: number;
  readonly beta?: number;
}

const log = (line: string) => process.stderr.write(`${line}\n`);

const fmt = (ppl: number): string =>
  !Number.isFinite(ppl) ? String(ppl) : ppl >= 1e5 ? ppl.toExponential(2) : ppl >= 1000 ? ppl.toFixed(0) : ppl.toFixed(2);

/** First byte at or after `offset` that starts a UTF-8 character, so a cut never splits one. */
const charStart = (bytes: Buffer, offset: number): number => {
  let i = offset;
  while (i < bytes.length && (bytes[i]! & 0xc0) === 0x80) i++;
  return i;
};

/**
 * stories260K's data, split so nothing evaluated is also calibrated on or chosen with.
 * valid.head46.txt is the first 46 stories of the TinyStories validation split and
 * validation.prefix.txt is a prefix of that same split, so the 46 stories sit at the start
 * of the prefix (they end at byte 31 367, checked below on every run). Calibration is
 * drawn from bytes [40 000, 420 000) and ATP's validation windows from [420 000, end).
 */
export const storiesSetup = (assets: string, scratch: string): ModelSetup => {
  const data = join(assets, "data", "tinystories");
  const evaluation = join(data, "valid.head46.txt");
  const prefixFile = join(data, "validation.prefix.txt");
  const prefix = readFileSync(prefixFile);
  const calibrationStart = 40_000;
  const validationStart = 420_000;
  // The prefix doubles the evaluation file's newlines, so match on the last story's last
  // words rather than on whole stories.
  const stories = splitStories(readFileSync(evaluation, "utf8"));
  const tail = stories[stories.length - 1]!.slice(-60);
  const prefixText = prefix.toString("utf8");
  const at = prefixText.indexOf(tail);
  if (at < 0) throw new Error(`the last story of ${evaluation} is not in ${prefixFile}: the leakage check cannot be made`);
  const storiesEnd = Buffer.byteLength(prefixText.slice(0, at + tail.length), "utf8");
  if (storiesEnd > calibrationStart) throw new Error(`the evaluation stories end at byte ${storiesEnd}, past the calibration start ${calibrationStart}`);
  const calibration = join(scratch, "tinystories-calibration.txt");
  const validation = join(scratch, "tinystories-validation.txt");
  writeFileSync(calibration, prefix.subarray(charStart(prefix, calibrationStart), charStart(prefix, validationStart)));
  writeFileSync(validation, prefix.subarray(charStart(prefix, validationStart)));
  return {
    name: "stories260K",
    model: join(assets, "models", "stories260K", "stories260K.bin"),
    calibration,
    validation,
    evaluation,
    seqlen: 512,
    notes: [
      `calibration: bytes [${calibrationStart}, ${validationStart}) of tinystories/validation.prefix.txt; ATP validation: bytes [${validationStart}, ${prefix.length}) of it`,
      `evaluation: tinystories/valid.head46.txt as one contiguous text (no BOS); its 46 stories end at byte ${storiesEnd} of validation.prefix.txt, before the calibration range`,
    ],
  };
};

export const brownSetup = (): ModelSetup => ({
  name: "brown-llama",
  model: defaultModel(),
  calibration: defaultData("calibration"),
  validation: defaultData("validation"),
  evaluation: defaultData("test"),
  evalWindows: BROWN_EVAL_WINDOWS,
  seqlen: 256,
  notes: [
    "calibration brown:calibration, ATP validation brown:validation, evaluation brown:test (disjoint source files of the Brown corpus)",
    `evaluation: the first ${BROWN_EVAL_WINDOWS} of brown:test's 439 contiguous windows, to keep the section near 15 minutes (all 439 take 25-30 s per cell here)`,
  ],
});

/** Chosen β of an ATP label such as "beta=0.004". */
const betaOf = (label: string | undefined): number | undefined => {
  const m = label?.match(/^beta=(.+)$/);
  return m ? Number(m[1]) : undefined;
};

const qualityOfModel = async (setup: ModelSetup, plugins: ReadonlyMap<AllocationName, MethodPlugin<unknown>>) => {
  const started = performance.now();
  // The same start as the prune and search commands.
  const model = openCalibratedModel({ model: setup.model, calib: setup.calibration, nsamples: NSAMPLES, seqlen: setup.seqlen, seed: SEED });
  const { tokenizer, seqlen } = model;
  const validation = evaluationWindows({ data: setup.validation, format: "text", maxWindows: VALID_WINDOWS }, tokenizer, seqlen);
  const test = evaluationWindows(
    { data: setup.evaluation, format: "text", ...(setup.evalWindows !== undefined ? { maxWindows: setup.evalWindows } : {}) },
    tokenizer,
    seqlen,
  );
  const spaces = new Map([...plugins].map(([name, plugin]) => [name, loadSearchSpace(plugin)]));

  const cells: Cell[] = [];
  let densePpl = NaN;
  for (const metric of METRICS) {
    // One Pruner per (model, metric, mode): its dense statistics, sort orders and pruned
    // blocks are reused by every cell of the row.
    const sequential = createPruner(model, { metric, mode: "sequential", batch: BATCH });
    const dense = createPruner(model, { metric, mode: "dense", batch: BATCH });
    try {
      if (Number.isNaN(densePpl)) {
        sequential.restoreDense();
        densePpl = (await sequential.perplexity(test, { batch: BATCH })).ppl;
        log(`${setup.name}: dense ${fmt(densePpl)}`);
      }
      // Allocations equal to whole weights (ATP's beta = 0 is uniform; so is OWL's 2:4 when every
      // block rounds to N = 2) prune identically: each is evaluated once.
      const byKey = new Map<string, number>();
      for (const column of COLUMNS) {
        const target = targetOf(column.pattern, column.sparsity);
        // Plugins see the dense model's statistics, the same in either mode; the dense-mode
        // Pruner is the one that already holds them for ATP's fitness.
        const context = await methodContext(dense, target, column.pattern, [...plugins.values()]);
        for (const name of ALLOCATIONS) {
          const plugin = plugins.get(name)!;
          if (!plugin.patterns.includes(column.pattern.kind)) continue;
          const t0 = performance.now();
          const fitness = allocationFitness(dense, validation, column.pattern);
          const result = await Effect.runPromise(
            runFixedMethod(plugin, context, spaces.get(name), (batch: readonly BlockAllocation[]) => Effect.forEach(batch, (b) => Effect.promise(() => fitness(b)))),
          );
          const allocation = toAllocation(result.allocation, sequential.layout, column.pattern);
          const key = sequential.allocationKey(allocation);
          let ppl = byKey.get(key);
          if (ppl === undefined) {
            await sequential.apply(allocation);
            ppl = (await sequential.perplexity(test, { batch: BATCH })).ppl;
            byKey.set(key, ppl);
          }
          const beta = betaOf(result.label);
          cells.push({ metric, allocation: name, column, ppl, ...(beta !== undefined ? { beta } : {}) });
          log(
            `${setup.name}: ${metric} ${name} ${column.label}: ${fmt(ppl)}${beta !== undefined ? ` (beta ${beta})` : ""} [${((performance.now() - t0) / 1000).toFixed(1)} s]`,
          );
        }
      }
    } finally {
      sequential.dispose();
      dense.dispose();
    }
  }
  model.close();
  return { cells, densePpl, calibration: model.calibration, validation, test, seconds: (performance.now() - started) / 1000 };
};

const cellOf = (cells: readonly Cell[], metric: PruneMetric, allocation: AllocationName, label: string) =>
  cells.find((c) => c.metric === metric && c.allocation === allocation && c.column.label === label);

const printTable = (cells: readonly Cell[], densePpl: number): void => {
  console.log(`| metric | allocation | ${COLUMNS.map((c) => c.label).join(" | ")} |`);
  console.log(`|---|---|${COLUMNS.map(() => "---").join("|")}|`);
  console.log(`| dense | - | ${COLUMNS.map(() => fmt(densePpl)).join(" | ")} |`);
  for (const metric of METRICS) {
    for (const allocation of ALLOCATIONS) {
      const row = COLUMNS.map((c) => {
        const cell = cellOf(cells, metric, allocation, c.label);
        return cell ? fmt(cell.ppl) : "n/a";
      });
      console.log(`| ${metric} | ${allocation} | ${row.join(" | ")} |`);
    }
  }
  const betas = METRICS.map(
    (metric) =>
      `${metric} ${COLUMNS.flatMap((c) => {
        const beta = cellOf(cells, metric, "atp", c.label)?.beta;
        return beta === undefined ? [] : [`${c.label} ${beta}`];
      }).join(", ")}`,
  );
  const missing = cells.length < METRICS.length * ALLOCATIONS.length * COLUMNS.length ? "n/a: the method does not support the pattern. " : "";
  console.log(`\n${missing}ATP's chosen beta: ${betas.join("; ")}.\n`);
};

const writeCsv = (setup: ModelSetup, cells: readonly Cell[], densePpl: number): string => {
  const dir = join(resultsDir(), "bench");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `quality-${setup.name}.csv`);
  const rows = [
    [setup.name, "dense", "", "", 0, setup.seqlen, densePpl, densePpl, ""],
    ...cells.map((c) => [
      setup.name,
      c.metric,
      c.allocation,
      c.column.pattern.kind === "nm" ? `${c.column.pattern.n}:${c.column.pattern.m}` : "unstructured",
      targetOf(c.column.pattern, c.column.sparsity),
      setup.seqlen,
      c.ppl,
      densePpl,
      c.beta ?? "",
    ]),
  ];
  writeFileAtomically(
    file,
    stringify(rows, { header: true, columns: ["model", "metric", "allocation", "pattern", "sparsity", "seqlen", "ppl", "dense_ppl", "beta"] }),
  );
  return file;
};

const printChecks = (setup: ModelSetup, cells: readonly Cell[]): void => {
  const ppl = (metric: PruneMetric, allocation: AllocationName, label: string) => cellOf(cells, metric, allocation, label)?.ppl ?? NaN;
  const line = (claim: string, a: number, b: number, holds: boolean) =>
    console.log(`- ${claim}: ${holds ? "yes" : "NO"} (${fmt(a)} vs ${fmt(b)})`);
  console.log(`Published orderings, ${setup.name} (printed facts, not assertions):\n`);
  const [wanda70, magnitude70, sparsegpt70] = [ppl("wanda", "uniform", "70%"), ppl("magnitude", "uniform", "70%"), ppl("sparsegpt", "uniform", "70%")];
  line(`wanda < magnitude at 70% (uniform; wanda/magnitude = ${(wanda70 / magnitude70).toFixed(3)})`, wanda70, magnitude70, wanda70 < magnitude70);
  line("sparsegpt < magnitude at 70% (uniform)", sparsegpt70, magnitude70, sparsegpt70 < magnitude70);
  const owl70 = ppl("wanda", "owl", "70%");
  line("owl < uniform, wanda at 70%", owl70, wanda70, owl70 < wanda70);
  const unstructured = COLUMNS.filter((c) => c.pattern.kind === "unstructured");
  for (const metric of METRICS) {
    for (const c of unstructured) {
      const atp = ppl(metric, "atp", c.label);
      const uni = ppl(metric, "uniform", c.label);
      line(`atp <= uniform, ${metric} at ${c.label}`, atp, uni, atp <= uni);
    }
  }
  for (const metric of METRICS) {
    for (const allocation of ALLOCATIONS) {
      const values = unstructured.map((c) => ppl(metric, allocation, c.label));
      const increasing = values.every((v, i) => i === 0 || v > values[i - 1]!);
      console.log(
        `- perplexity increases with sparsity, ${metric} ${allocation}: ${increasing ? "yes" : "NO"} (${values.map(fmt).join(" < ")} at ${unstructured.map((c) => c.label).join("/")})`,
      );
    }
  }
  console.log("");
};

/** The `quality` section: skips with a message when the shared assets are absent. */
export const qualitySection = async (assets: string): Promise<void> => {
  const started = performance.now();
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-quality-"));
  try {
    const setups: ModelSetup[] = [];
    if (existsSync(assets)) setups.push(storiesSetup(assets, scratch));
    else console.log(`(stories260K skipped: the shared assets are not at ${assets})\n`);
    setups.push(brownSetup());
    const plugins = new Map<AllocationName, MethodPlugin<unknown>>();
    for (const name of ALLOCATIONS) plugins.set(name, await loadPlugin(name));

    console.log("## Pruning quality: perplexity by metric x allocation x sparsity\n");
    console.log(
      [
        `Protocol: sequential pruning (block i calibrated on the outputs of pruned blocks 0..i-1), seed ${SEED}.`,
        `Calibration: ${NSAMPLES} windows per model, not the protocol's 128: measured here, a sequential prune costs 3-9 s with 32 windows,`,
        "so 128 would add some 15 minutes to a section meant to take about 15 (the evaluations take most of it).",
        `ATP's beta: the grid of search-spaces/atp.json, each candidate scored by validation perplexity (${VALID_WINDOWS} windows) of a *dense-mode*`,
        "Pruner (statistics from the dense model, as docs/methods.md allows for choosing among candidates); the chosen allocation is then",
        "pruned sequentially for the reported number. OWL: search-spaces/owl.json (M = 5, lambda = 0.08). Perplexity: contiguous windows.",
        "2:4 column: uniform is 2:4 in every block; a method whose plugin accepts N:M gives each block its own N:4, N = 2 on average.",
        "",
      ].join("\n"),
    );
    for (const setup of setups) {
      const result = await qualityOfModel(setup, plugins);
      console.log(`### ${setup.name}, seqlen ${setup.seqlen}\n`);
      for (const note of setup.notes) console.log(`- ${note}`);
      console.log(
        `- ${result.calibration.length} calibration windows; ${result.validation.length} validation windows; ${result.test.length} evaluation windows, ${scoredTokens(result.test)} scored tokens; ${result.seconds.toFixed(0)} s\n`,
      );
      printTable(result.cells, result.densePpl);
      const file = writeCsv(setup, result.cells, result.densePpl);
      console.log(`CSV: ${file.slice(projectRoot.length + 1)}\n`);
      printChecks(setup, result.cells);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  console.log(`section quality: ${((performance.now() - started) / 1000).toFixed(0)} s\n`);
};

/** Random token windows: timings do not depend on what the tokens say. */
export const randomWindows = (rng: Rng, count: number, seqlen: number, vocab: number): Int32Array[] =>
  Array.from({ length: count }, () => Int32Array.from({ length: seqlen }, () => rng.int(vocab)));

/** The `stages` section: where the time of a sequential prune goes, per metric. */
export const stagesSection = async (checkpointDir: string, spec: ModelSpec, sizes: { calibration: number; evaluation: number; seqlen: number }): Promise<void> => {
  const started = performance.now();
  const checkpoint = openCheckpointSync(checkpointDir);
  const rng = new Rng(11);
  const calibration = randomWindows(rng.split("calibration"), sizes.calibration, sizes.seqlen, spec.vocabSize);
  const evaluation: Window[] = randomWindows(rng.split("evaluation"), sizes.evaluation, sizes.seqlen, spec.vocabSize).flatMap((w) =>
    contiguousWindows(Array.from(w), sizes.seqlen),
  );
  console.log("## Seconds per pruning stage, GPT-2-small-shaped checkpoint (124M parameters, random weights, F16 on disk)\n");
  console.log(
    `Uniform 50% unstructured, sequential mode; ${sizes.calibration} random calibration windows and ${sizes.evaluation} random evaluation windows of ${sizes.seqlen} tokens, ${BATCH} windows per forward pass.`,
  );
  console.log(
    [
      "load = reading the checkpoint and building the model (outside the stages); total = load + apply + evaluation, wall clock.",
      "The windows are few on purpose, yet not fewer: SparseGPT's masking is its float64 solve (Cholesky factors and inverse of",
      "each Hessian, 3072 x 3072 for mlp.c_proj), whose cost does not depend on the number of windows; forward and statistics do.",
      "",
    ].join("\n"),
  );
  console.log("| metric | load | calibration forward | statistics | scoring | masking | evaluation | total | ppl |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const metric of METRICS) {
    const t0 = performance.now();
    const pruner = Pruner.create(checkpoint, { metric, mode: "sequential", calibration, batch: BATCH });
    const load = (performance.now() - t0) / 1000;
    try {
      await pruner.apply(perBlock(new Array<number>(spec.numLayers).fill(0.5), pruner.layout));
      const ppl = (await pruner.perplexity(evaluation, { batch: BATCH })).ppl;
      const total = (performance.now() - t0) / 1000;
      const t = pruner.timings;
      const s = (x: number) => x.toFixed(2);
      console.log(
        `| ${metric} | ${s(load)} | ${s(t.forward)} | ${s(t.statistics)} | ${s(t.scoring)} | ${s(t.masking)} | ${s(t.evaluation)} | ${s(total)} | ${fmt(ppl)} |`,
      );
    } finally {
      pruner.dispose();
    }
  }
  checkpoint.close();
  console.log(`\nsection stages: ${((performance.now() - started) / 1000).toFixed(0)} s\n`);
};
