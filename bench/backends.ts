/**
 * Section `native`: the native BLAS backend against wasm, side by side in one process.
 * (1) matMul through tfjs against the bare sgemm on the same shapes and threads; (2) a
 * GPT-2-small-shaped forward + loss at seqlen 1024 on wasm and on native with 1 and 2
 * threads, with the share of native's time spent outside the products; (3) dense-mode
 * fitness evaluations per minute on the embedded model and stories260K, 1 and 2 workers;
 * (4) training steps per second of the embedded model's recipe; (5) SparseGPT's masking
 * stage on the GPT-2-small-shaped checkpoint, JavaScript against LAPACK/BLAS, with the
 * perplexities both give.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../src/backend/backend.ts";
import { nativeBlas, nativeBlasMissing } from "../src/backend/native-blas.ts";
import { productClock } from "../src/backend/native.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { contiguousWindows, type Window } from "../src/data/windows.ts";
import { train } from "../src/jobs/train.ts";
import { pruneJob } from "../src/jobs/prune.ts";
import { Effect } from "effect";
import { Decoder } from "../src/model/decoder.ts";
import type { ModelSpec } from "../src/model/spec.ts";
import { perBlock } from "../src/allocation/allocation.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { setSparseGptLinalg } from "../src/prune/sparsegpt.ts";
import { Rng } from "../src/rng.ts";
import { forwardFlops } from "./gpt2-small.ts";
import { brownSetup, randomWindows, storiesSetup } from "./quality.ts";
import { fitnessRate } from "./search.ts";

const log = (line: string) => process.stderr.write(`${line}\n`);
const seconds = (start: number) => (performance.now() - start) / 1000;

/** Best of `repeats` timings of f. */
const best = (repeats: number, f: () => void): number => {
  let top = Infinity;
  for (let r = 0; r < repeats; r++) {
    const t = performance.now();
    f();
    top = Math.min(top, seconds(t));
  }
  return top;
};

/** The forward's product shapes [m, k, n] and how often each runs (GPT-2-small, 1024 tokens). */
const forwardShapes = (spec: ModelSpec, rows: number): Array<[number, number, number]> => [
  [rows, spec.hiddenSize, 3 * spec.hiddenSize],
  [rows, spec.hiddenSize, spec.intermediateSize],
  [rows, spec.intermediateSize, spec.hiddenSize],
  [256, spec.hiddenSize, spec.vocabSize],
];

const matMulTable = async (spec: ModelSpec): Promise<void> => {
  const blas = nativeBlas()!;
  await initBackend("native");
  console.log("### matMul through tfjs (native backend) against the bare sgemm, same shapes and threads\n");
  console.log("| shape m x k x n | threads | sgemm GFLOP/s | tfjs native GFLOP/s | ratio (target >= 0.85) |\n|---|---|---|---|---|");
  for (const threads of [1, 2]) {
    blas.setThreads(threads);
    for (const [m, k, n] of forwardShapes(spec, 1024)) {
      const flops = 2 * m * k * n;
      const a = new Float32Array(m * k).fill(0.5);
      const b = new Float32Array(k * n).fill(0.25);
      const c = new Float32Array(m * n);
      blas.sgemm(false, false, m, n, k, a, b, c, 1, 0, 0);
      const ta = tf.tensor2d(a, [m, k]);
      const tb = tf.tensor2d(b, [k, n]);
      tf.matMul(ta, tb).dispose();
      // Alternated, so that both see the same machine load.
      let raw = Infinity;
      let through = Infinity;
      for (let r = 0; r < 5; r++) {
        raw = Math.min(raw, best(1, () => blas.sgemm(false, false, m, n, k, a, b, c, 1, 0, 0)));
        through = Math.min(through, best(1, () => tf.matMul(ta, tb).dispose()));
      }
      tf.dispose([ta, tb]);
      console.log(`| ${m} x ${k} x ${n} | ${threads} | ${(flops / raw / 1e9).toFixed(1)} | ${(flops / through / 1e9).toFixed(1)} | ${(raw / through).toFixed(2)} |`);
    }
  }
  console.log();
};

const forwardTable = async (gpt2: { dir: string; spec: ModelSpec }): Promise<void> => {
  const { dir, spec } = gpt2;
  const blas = nativeBlas()!;
  const ckpt = openCheckpointSync(dir);
  const seqlen = 1024;
  const rng = new Rng(5);
  const ids = Int32Array.from({ length: seqlen }, () => rng.int(spec.vocabSize));
  const targets = new Int32Array(seqlen).fill(-1);
  for (let t = 0; t + 1 < seqlen; t++) targets[t] = ids[t + 1]!;
  const runs: Array<{ label: string; backend: "wasm" | "native"; threads?: number }> = [
    { label: "wasm", backend: "wasm" },
    { label: "native, 1 thread", backend: "native", threads: 1 },
    { label: "native, 2 threads", backend: "native", threads: 2 },
  ];
  const rows: Array<{ label: string; tokens: number; outside?: number }> = [];
  for (const run of runs) {
    log(`forward: ${run.label}`);
    await initBackend(run.backend);
    if (run.threads) blas.setThreads(run.threads);
    const decoder = Decoder.create(spec, ckpt.readGlobals(), { numBlocks: spec.numLayers, load: (i) => ckpt.readBlock(i) });
    await decoder.nll(ids, targets, 1, seqlen);
    let top = Infinity;
    let outside: number | undefined;
    for (let r = 0; r < 2; r++) {
      productClock.seconds = 0;
      const t = performance.now();
      await decoder.nll(ids, targets, 1, seqlen);
      const s = seconds(t);
      if (s < top) {
        top = s;
        outside = run.backend === "native" ? 1 - productClock.seconds / s : undefined;
      }
    }
    decoder.dispose();
    rows.push({ label: run.label, tokens: seqlen / top, ...(outside !== undefined ? { outside } : {}) });
  }
  ckpt.close();
  const flops = forwardFlops(spec, seqlen, 1, seqlen - 1);
  console.log(`### GPT-2-small-shaped forward + loss, one window of ${seqlen} (${(flops / 1e9).toFixed(0)} GFLOP), best of 2\n`);
  console.log("| backend | tokens/s | x wasm | time outside matMul (target <= 25%) |\n|---|---|---|---|");
  const wasm = rows[0]!.tokens;
  for (const r of rows) {
    console.log(`| ${r.label} | ${r.tokens.toFixed(0)} | ${(r.tokens / wasm).toFixed(2)} | ${r.outside === undefined ? "-" : `${(100 * r.outside).toFixed(0)}%`} |`);
  }
  console.log("\ntargets: native >= 4x wasm on one thread, >= 6x on two\n");
};

const fitnessTable = async (assets: string, haveAssets: boolean): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-native-"));
  try {
    const setups = [brownSetup(), ...(haveAssets ? [storiesSetup(assets, scratch)] : [])];
    console.log("### Dense-mode fitness evaluations per minute (DSA, Wanda 70%, evaluation time alone)\n");
    console.log("| model | wasm, 1 worker | wasm, 2 workers | native, 1 worker | native, 2 workers | native / wasm (1 worker) |\n|---|---|---|---|---|---|");
    for (const setup of setups) {
      const rate: Record<string, number> = {};
      for (const backend of ["wasm", "native"] as const) {
        for (const workers of [1, 2]) rate[`${backend}${workers}`] = await fitnessRate(setup, scratch, backend, workers);
      }
      const f = (x: number) => x.toFixed(1);
      console.log(`| ${setup.name} | ${f(rate.wasm1!)} | ${f(rate.wasm2!)} | ${f(rate.native1!)} | ${f(rate.native2!)} | ${(rate.native1! / rate.wasm1!).toFixed(2)} |`);
    }
    if (!haveAssets) console.log("\n(stories260K skipped: the shared assets are absent)");
    console.log();
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};

const trainingTable = async (): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-train-"));
  const steps = 12;
  try {
    console.log(`### Training steps per second, the embedded model's recipe (first ${steps} steps, the first 2 not timed)\n`);
    console.log("| backend | workers | steps/s |\n|---|---|---|");
    const rates: Record<string, number> = {};
    for (const backend of ["wasm", "native"] as const) {
      for (const workers of [1, 2]) {
        log(`training: ${backend}, ${workers} workers`);
        const stamps: number[] = [];
        await train({
          data: "brown:train",
          out: join(scratch, `${backend}-${workers}`),
          size: { hiddenSize: 128, numLayers: 8, numHeads: 4, numKvHeads: 2, intermediateSize: 320, contextLength: 256 },
          steps,
          batch: 8,
          seqlen: 256,
          lr: 3e-3,
          warmupSteps: 50,
          weightDecay: 0.1,
          seed: 0,
          evalEvery: 0,
          evalWindows: 0,
          backend,
          vocabSize: 258,
          workers,
          checkpointEvery: 0,
          resume: false,
          onStep: () => stamps.push(performance.now()),
        });
        const rate = (stamps.length - 3) / ((stamps.at(-1)! - stamps[2]!) / 1000);
        rates[`${backend}${workers}`] = rate;
        console.log(`| ${backend} | ${workers} | ${rate.toFixed(2)} |`);
      }
    }
    console.log(`\nnative / wasm: ${(rates.native1! / rates.wasm1!).toFixed(2)}x with 1 worker, ${(rates.native2! / rates.wasm2!).toFixed(2)}x with 2 (byte-level tokenizer: the recipe's BPE is learned the same way on both and is not timed)\n`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};

const sparseGptTable = async (gpt2: { dir: string; spec: ModelSpec }, assets: string, haveAssets: boolean): Promise<void> => {
  const { dir, spec } = gpt2;
  await initBackend("native");
  const checkpoint = openCheckpointSync(dir);
  const rng = new Rng(11);
  // As the stages section draws them: 8 calibration and 4 evaluation windows of 256.
  const calibration = randomWindows(rng.split("calibration"), 8, 256, spec.vocabSize);
  const evaluation: Window[] = randomWindows(rng.split("evaluation"), 4, 256, spec.vocabSize).flatMap((w) => contiguousWindows(Array.from(w), 256));
  console.log("### SparseGPT's masking stage, GPT-2-small-shaped checkpoint, uniform 50%, sequential mode (native backend for the forwards)\n");
  console.log("| float64 algebra | masking s | total s | ppl |\n|---|---|---|---|");
  const results: Record<string, { masking: number; ppl: number }> = {};
  for (const route of ["native", "js"] as const) {
    log(`sparsegpt stages: ${route}`);
    setSparseGptLinalg(route);
    const t0 = performance.now();
    const pruner = Pruner.create(checkpoint, { metric: "sparsegpt", mode: "sequential", calibration, batch: 4 });
    try {
      await pruner.apply(perBlock(new Array<number>(spec.numLayers).fill(0.5), pruner.layout));
      const ppl = (await pruner.perplexity(evaluation, { batch: 4 })).ppl;
      results[route] = { masking: pruner.timings.masking, ppl };
      console.log(`| ${route === "js" ? "JavaScript" : "LAPACK/BLAS (native)"} | ${pruner.timings.masking.toFixed(2)} | ${seconds(t0).toFixed(1)} | ${ppl} |`);
    } finally {
      pruner.dispose();
    }
  }
  setSparseGptLinalg("native");
  checkpoint.close();
  const { js, native } = results as { js: { masking: number; ppl: number }; native: { masking: number; ppl: number } };
  console.log(`\nmasking: native ${(js.masking / native.masking).toFixed(1)}x faster (target >= 10x); ppl relative difference ${(Math.abs(native.ppl - js.ppl) / js.ppl).toExponential(2)} (target <= 1e-6)`);
  console.log(
    "(per linear the two routes give the same masks and, but for about one weight in a million that differs by one float32 ulp, the same bits;\n" +
      "in sequential mode each block is calibrated on the pruned blocks before it, which carries such a difference on to every later block:\n" +
      "on this random-weight model, whose predictions are nearly uniform, that moves the perplexity; on the trained models below it does not)\n",
  );
  await trainedModelRows(haveAssets, assets);
};

/** SparseGPT 50%, sequential, 32 calibration windows, on the trained models, by both routes. */
const trainedModelRows = async (haveAssets: boolean, assets: string): Promise<void> => {
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-sparsegpt-"));
  try {
    console.log("| model (SparseGPT 50%, sequential, 32 calibration and 32 test windows) | ppl, LAPACK/BLAS | ppl, JavaScript | relative difference |\n|---|---|---|---|");
    for (const setup of [brownSetup(), ...(haveAssets ? [storiesSetup(assets, scratch)] : [])]) {
      const ppl: Record<string, number> = {};
      for (const route of ["native", "js"] as const) {
        log(`sparsegpt on ${setup.name}: ${route}`);
        setSparseGptLinalg(route);
        const report = await Effect.runPromise(
          pruneJob({
            model: setup.model,
            metric: "sparsegpt",
            sparsity: 0.5,
            pattern: { kind: "unstructured" },
            allocation: "uniform",
            calib: setup.calibration,
            field: "text",
            nsamples: 32,
            seed: 0,
            seqlen: setup.seqlen,
            mode: "sequential",
            batch: 4,
            eval: setup.evaluation,
            evalFormat: "text",
            evalWindows: 32,
            valid: setup.validation,
            validWindows: 1,
            backend: "native",
            out: join(scratch, `${setup.name}-${route}`),
          }),
        );
        ppl[route] = report.evaluation!.pruned;
      }
      setSparseGptLinalg("native");
      console.log(`| ${setup.name} | ${ppl.native} | ${ppl.js} | ${(Math.abs(ppl.native! - ppl.js!) / ppl.js!).toExponential(2)} |`);
    }
    console.log();
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};

export const nativeSection = async (gpt2: () => { dir: string; spec: ModelSpec }, assets: string, haveAssets: boolean, parts: (part: string) => boolean): Promise<void> => {
  const missing = nativeBlasMissing();
  if (missing) {
    console.log(`## Native backend\n\nskipped: ${missing}\n`);
    return;
  }
  const started = performance.now();
  console.log(`## Native backend (OpenBLAS ${nativeBlas()!.describe().core} kernel) against wasm\n`);
  if (parts("matmul")) await matMulTable(gpt2().spec);
  if (parts("forward")) await forwardTable(gpt2());
  if (parts("fitness")) await fitnessTable(assets, haveAssets);
  if (parts("training")) await trainingTable();
  if (parts("sparsegpt")) await sparseGptTable(gpt2(), assets, haveAssets);
  await initBackend("wasm");
  console.log(`section native: ${seconds(started).toFixed(0)} s\n`);
};
