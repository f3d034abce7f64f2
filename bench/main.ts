/**
 * `npm run bench [-- section...]`: speed and memory of the runtime, measured side by side
 * in one run, and the quality of pruning. Sections: forward (with the backend's matMul, so
 * their ratio is fair), memory, stories, quality (perplexity of two real models by metric x
 * allocation x sparsity, CSV in results/bench/; about 14 minutes on 2 cores), stages (seconds
 * per pruning stage on the GPT-2-small-shaped checkpoint; about 25 minutes, most of it
 * SparseGPT's solve), search (every allocation method through the search pipeline on both
 * models), search-rate (fitness evaluations per minute: 1 and 2 workers, dense and
 * sequential fitness; run it alone, it measures the cores), native (the native BLAS backend
 * against wasm: matMul, forward, fitness, training and SparseGPT's masking, side by side;
 * `--parts=matmul,forward,...` for some of them), structured (structured pruning of both
 * models by every importance at 20% and 50%, with and without LoRA recovery, and the smaller
 * model's parameters, file size and forward speed against dense; CSV in results/bench/),
 * queue (the fitness job queue: its overhead per job with 1, 4 and 16 instant-fitness worker
 * processes, and a short search's evaluations per minute in process, on two threads and on two
 * queue workers; needs redis-server, which it starts and stops itself),
 * levels (SparseGPT's levels at TinyLlama-1.1B's linear sizes: built from one factor a
 * linear against a factorisation a level, and stored packed against plain; a few minutes),
 * gpu (the GPU check: one JSON summary), scale (1.1B and 6.7B LLaMA-shaped checkpoints
 * written by the benchmark: eval, prune and a search, time and peak memory, beside a
 * PyTorch CPU peer; a few hours on 2 cores, so it runs only when named).
 * Sections that need something absent (the assets, the native kernel, a GPU) say so.
 */
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { initBackend, type BackendChoice } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { Decoder } from "../src/model/decoder.ts";
import { projectRoot } from "../src/defaults.ts";
import { blockParameters, forwardFlops, writeGpt2Small } from "./gpt2-small.ts";
import { Rng } from "../src/rng.ts";
import { existsSync } from "node:fs";
import { Effect } from "effect";
import { evaluate } from "../src/jobs/eval.ts";
import { qualitySection, stagesSection } from "./quality.ts";
import { searchMethodsSection, searchRateSection } from "./search.ts";
import { nativeSection } from "./backends.ts";
import { structuredSection } from "./structured.ts";
import { gpuCheck } from "./gpu-check.ts";
import { queueSection } from "./queue.ts";
import { scaleSection } from "./scale.ts";
import { levelsSection } from "./levels.ts";

const args = process.argv.slice(2);
const backendArg = (args.find((a) => a.startsWith("--backend="))?.split("=")[1] ?? "wasm") as BackendChoice;
const sections = args.filter((a) => !a.startsWith("--"));
// The GPU check is its own command (`npm run bench -- gpu`), never part of a full run.
const want = (s: string) => (sections.length === 0 && s !== "gpu" && s !== "scale") || sections.includes(s);
const partsArg = args.find((a) => a.startsWith("--parts="))?.split("=")[1]?.split(",");
const wantPart = (p: string) => partsArg === undefined || partsArg.includes(p);
const assets = join(projectRoot, "..", "shared", "assets");

const time = (f: () => void): number => {
  const t = performance.now();
  f();
  return (performance.now() - t) / 1000;
};

const timeAsync = async (f: () => Promise<unknown>): Promise<number> => {
  const t = performance.now();
  await f();
  return (performance.now() - t) / 1000;
};

/** Best-of-n GFLOP/s of a plain 2-D matMul [m, k] x [k, n]. */
const matmulGflops = (m: number, k: number, n: number, repeats = 5): number => {
  const a = tf.randomUniform([m, k], -1, 1) as tf.Tensor2D;
  const b = tf.randomUniform([k, n], -1, 1) as tf.Tensor2D;
  tf.matMul(a, b).dataSync();
  let best = Infinity;
  for (let r = 0; r < repeats; r++) {
    best = Math.min(
      best,
      time(() => {
        const c = tf.matMul(a, b);
        c.dataSync();
        c.dispose();
      }),
    );
  }
  tf.dispose([a, b]);
  return (2 * m * k * n) / best / 1e9;
};

if (want("gpu")) {
  // Its own backend choice and output (one JSON document on stdout), so nothing else runs.
  await gpuCheck(args.find((a) => a.startsWith("--backend="))?.split("=")[1] as BackendChoice | undefined, assets);
  process.exit(0);
}

const backend = await initBackend(backendArg);
console.log(`# evosparse runtime benchmark\n\nbackend: ${backend.name} (${backend.provider}); node ${process.version}\n`);

let gpt2: ReturnType<typeof writeGpt2Small> | undefined;
const gpt2Checkpoint = () => (gpt2 ??= writeGpt2Small("F16"));

if (want("forward")) {
  const seqlen = 1024;
  const { dir, spec } = gpt2Checkpoint();
  const ckpt = openCheckpointSync(dir);
  const decoder = Decoder.create(spec, ckpt.readGlobals(), { numBlocks: spec.numLayers, load: (i) => ckpt.readBlock(i) });
  const rng = new Rng(5);
  const windows = 2;
  const ids = Int32Array.from({ length: windows * seqlen }, () => rng.int(spec.vocabSize));
  const targets = new Int32Array(ids.length).fill(-1);
  for (let w = 0; w < windows; w++) for (let t = 0; t + 1 < seqlen; t++) targets[w * seqlen + t] = ids[w * seqlen + t + 1]!;
  await decoder.nll(ids.subarray(0, seqlen), targets.subarray(0, seqlen), 1, seqlen);
  const forwardSeconds = await timeAsync(() => decoder.nll(ids, targets, windows, seqlen));
  decoder.dispose();
  ckpt.close();
  const flops = forwardFlops(spec, seqlen, windows, seqlen - 1);
  const forward = flops / forwardSeconds / 1e9;
  // The backend's own matMul rate, measured right after: (a) on a large square product,
  // (b) on exactly the products the forward's linears and head make, weighted by their FLOPs
  // (total FLOPs / total time), since wasm's rate depends strongly on the shape.
  const square = matmulGflops(1024, 1024, 1024);
  const rows = windows * seqlen;
  const d = spec.hiddenSize;
  const f = spec.intermediateSize;
  const shapes: Array<[number, number, number, number]> = [
    [rows, d, 3 * d, spec.numLayers],
    [rows, d, d, spec.numLayers],
    [rows, d, f, spec.numLayers],
    [rows, f, d, spec.numLayers],
    [256, d, spec.vocabSize, Math.ceil(rows / 256)],
  ];
  let shapeFlops = 0;
  let shapeSeconds = 0;
  for (const [m, k, n, count] of shapes) {
    const flopsOne = 2 * m * k * n;
    shapeFlops += flopsOne * count;
    shapeSeconds += (flopsOne / (matmulGflops(m, k, n, 3) * 1e9)) * count;
  }
  const matched = shapeFlops / shapeSeconds / 1e9;
  console.log("## Forward throughput, GPT-2-small-shaped checkpoint (124M parameters, random weights), seqlen 1024\n");
  console.log("| measure | value |\n|---|---|");
  console.log(`| full forward + loss, ${windows} windows of ${seqlen} | ${forwardSeconds.toFixed(2)} s, ${((windows * seqlen) / forwardSeconds).toFixed(0)} tokens/s |`);
  console.log(`| forward effective throughput (${(flops / 1e9).toFixed(0)} GFLOP: linears, causal attention, head) | ${forward.toFixed(1)} GFLOP/s |`);
  console.log(`| backend matMul, the forward's own linear and head shapes (FLOP-weighted) | ${matched.toFixed(1)} GFLOP/s |`);
  console.log(`| backend matMul, 1024 x 1024 x 1024 | ${square.toFixed(1)} GFLOP/s |`);
  console.log(`| ratio forward / matMul on the forward's shapes (target >= 0.70) | ${(forward / matched).toFixed(2)} |`);
  console.log(`| ratio forward / matMul 1024^3 | ${(forward / square).toFixed(2)} |\n`);
}

if (want("memory")) {
  const { dir, spec } = gpt2Checkpoint();
  const data = join(dirname(dir), "memory-text.txt");
  // Random printable text: the runtime's memory does not depend on what the text says.
  const rng = new Rng(9);
  writeFileSync(data, Array.from({ length: 20000 }, () => String.fromCharCode(97 + rng.int(26))).join(""));
  // GPT-2's tokenizer is not available offline; a byte-level tokenizer.json stands in.
  const { byteLevelTokenizerJson } = await import("../src/tokenizer/byte-level.ts");
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(byteLevelTokenizerJson()));
  const probe = (mode: string) =>
    JSON.parse(
      execFileSync(process.execPath, [join(projectRoot, "bin", "run-ts.mjs"), join(projectRoot, "bench", "memory-probe.ts"), dir, data, mode, "512"], {
        encoding: "utf8",
      }).trim(),
    ) as { maxRssBytes: number; seconds: number; ppl: number };
  const resident = probe("resident");
  const streamed = probe("streamed");
  const blockBytes = blockParameters(spec) * 4;
  const saved = resident.maxRssBytes - streamed.maxRssBytes;
  const mb = (b: number) => (b / 2 ** 20).toFixed(0) + " MiB";
  console.log("## Layer-streamed evaluation memory (same checkpoint, one window of 512, fresh process each)\n");
  console.log("| mode | peak RSS | seconds | ppl |\n|---|---|---|---|");
  console.log(`| resident | ${mb(resident.maxRssBytes)} | ${resident.seconds.toFixed(1)} | ${resident.ppl.toFixed(3)} |`);
  console.log(`| streamed | ${mb(streamed.maxRssBytes)} | ${streamed.seconds.toFixed(1)} | ${streamed.ppl.toFixed(3)} |`);
  console.log(
    `\nstreamed saves ${mb(saved)}; target: at least all but two blocks' weights = ${spec.numLayers - 2} x ${mb(blockBytes)} = ${mb((spec.numLayers - 2) * blockBytes)} -> ${saved >= (spec.numLayers - 2) * blockBytes ? "met" : "NOT met"}\n`,
  );
}

if (want("stories") && existsSync(assets)) {
  const report = await Effect.runPromise(
    evaluate({
      model: join(assets, "models", "stories260K"),
      data: join(assets, "data", "tinystories", "valid.head46.txt"),
      format: "stories",
      backend: backendArg,
    }),
  );
  console.log("## stories260K, --format stories on valid.head46.txt\n");
  console.log(`perplexity ${report.ppl.toFixed(4)} (reference 3.3970), ${report.tokens} tokens, ${report.tokensPerSecond.toFixed(0)} tokens/s\n`);
}

if (want("quality")) await qualitySection(assets);

if (want("stages")) {
  const { dir, spec } = gpt2Checkpoint();
  await stagesSection(dir, spec, { calibration: 8, evaluation: 4, seqlen: 256 });
}

if (want("search")) await searchMethodsSection(assets, backendArg, existsSync(assets));

if (want("search-rate")) await searchRateSection(backendArg);

if (want("native")) await nativeSection(gpt2Checkpoint, assets, existsSync(assets), wantPart);

if (want("structured")) await structuredSection(assets, backend, existsSync(assets));

if (want("levels")) levelsSection();

if (want("queue")) await queueSection(backend.name as BackendChoice);

if (want("scale")) await scaleSection(args);

if (gpt2) rmSync(dirname(gpt2.dir), { recursive: true, force: true });
