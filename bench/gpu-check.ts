/**
 * `npm run bench -- gpu`: the GPU check. One command, a few minutes on a machine with a GPU,
 * printing one JSON summary on stdout (progress on stderr): the adapter, matMul GFLOP/s at
 * 4096^3, a GPT-2-small-shaped forward's tokens/s at seqlen 1024, stories260K's perplexity
 * against wasm (with the shared assets), and a short DSA search on the embedded model. The
 * backend is WebGPU unless `--backend=` names another. On a software adapter (lavapipe) the
 * sizes shrink so that the check still ends in minutes, and the summary says so.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { describeBackend, initBackend, type BackendChoice, type BackendInfo } from "../src/backend/backend.ts";
import { checkWebgpuDevice, webgpuMaxBinding } from "../src/backend/webgpu.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { evaluate } from "../src/jobs/eval.ts";
import { searchJob } from "../src/jobs/search.ts";
import { Decoder } from "../src/model/decoder.ts";
import { Rng } from "../src/rng.ts";
import { writeGpt2Small } from "./gpt2-small.ts";
import { brownSetup } from "./quality.ts";
import { existsSync } from "node:fs";

const log = (line: string) => process.stderr.write(`gpu check: ${line}\n`);
const seconds = (start: number) => (performance.now() - start) / 1000;

/** GFLOP/s of n x n x n products: `repeats` of them queued, then one scalar read back. */
const matMulRate = async (n: number, repeats: number): Promise<number> => {
  const a = tf.randomUniform([n, n], -1, 1, "float32", 1);
  const b = tf.randomUniform([n, n], -1, 1, "float32", 2);
  const run = async (count: number) => {
    const products = Array.from({ length: count }, () => tf.matMul(a, b));
    const total = tf.addN(products.map((p) => tf.sum(p)));
    await total.data();
    tf.dispose([...products, total]);
  };
  await run(1);
  const t = performance.now();
  await run(repeats);
  const s = seconds(t);
  tf.dispose([a, b]);
  return (repeats * 2 * n ** 3) / s / 1e9;
};

const forwardRate = async (seqlen: number): Promise<number> => {
  const { dir, spec } = writeGpt2Small("F16");
  try {
    const ckpt = openCheckpointSync(dir);
    const decoder = Decoder.create(spec, ckpt.readGlobals(), { numBlocks: spec.numLayers, load: (i) => ckpt.readBlock(i) });
    const rng = new Rng(5);
    const ids = Int32Array.from({ length: seqlen }, () => rng.int(spec.vocabSize));
    const targets = new Int32Array(seqlen).fill(-1);
    for (let t = 0; t + 1 < seqlen; t++) targets[t] = ids[t + 1]!;
    await decoder.nll(ids, targets, 1, seqlen);
    const t = performance.now();
    await decoder.nll(ids, targets, 1, seqlen);
    const s = seconds(t);
    decoder.dispose();
    ckpt.close();
    return seqlen / s;
  } finally {
    rmSync(dirname(dir), { recursive: true, force: true });
  }
};

const storiesPerplexity = async (assets: string, backend: BackendChoice) => {
  const model = join(assets, "models", "stories260K");
  const data = join(assets, "data", "tinystories", "valid.head46.txt");
  if (!existsSync(model) || !existsSync(data)) return { skipped: "the shared assets (stories260K) are absent" };
  const on = (b: BackendChoice) => Effect.runPromise(evaluate({ model, data, format: "stories", backend: b }));
  const wasm = await on("wasm");
  const gpu = await on(backend);
  return { reference: 3.397, wasm: wasm.ppl, [backend]: gpu.ppl, relativeDifference: Math.abs(gpu.ppl - wasm.ppl) / wasm.ppl };
};

const shortSearch = async (backend: BackendChoice) => {
  const setup = brownSetup();
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-gpu-check-"));
  try {
    const t = performance.now();
    const summary = await Effect.runPromise(
      searchJob({
        settings: {
          method: "dsa",
          sparsity: 0.7,
          metric: "wanda",
          pattern: { kind: "unstructured" },
          model: setup.model,
          calib: setup.calibration,
          field: "text",
          nsamples: 8,
          calibSeed: 0,
          seqlen: setup.seqlen,
          fitnessData: setup.validation,
          fitnessWindows: 4,
          eval: setup.evaluation,
          evalFormat: "text",
          evalWindows: 16,
          population: 6,
          generations: 3,
          seed: 0,
          mode: "dense",
          finalMode: "sequential",
          batch: 4,
        },
        out: join(scratch, "dsa"),
        workers: 1,
        backend,
        log: (line) => log(`  ${line}`),
      }),
    );
    const own = summary.final.results[0]!;
    return { method: "dsa", evaluations: summary.evaluations, seconds: seconds(t), testPerplexity: own.test, densePerplexity: summary.final.dense };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
};

export const gpuCheck = async (choice: BackendChoice | undefined, assets: string): Promise<void> => {
  const started = performance.now();
  const backend = choice ?? "webgpu";
  let info: BackendInfo;
  try {
    info = await initBackend(backend);
  } catch (e) {
    console.log(JSON.stringify({ ok: false, backend, problem: String((e as Error)?.message ?? e) }, null, 2));
    process.exitCode = 1;
    return;
  }
  const software = info.warning !== undefined;
  const sizes = software ? { matMul: 1024, repeats: 2, seqlen: 256 } : { matMul: 4096, repeats: 10, seqlen: 1024 };
  log(`backend ${describeBackend(info)}`);
  const summary: Record<string, unknown> = { ok: true, backend: info.name, adapter: info.detail ?? info.provider, softwareAdapter: software };
  if (software) summary.note = `a software adapter: matMul at ${sizes.matMul}^3 and the forward at seqlen ${sizes.seqlen} instead of 4096^3 and 1024`;
  log("matMul");
  summary.matMulGflops = { size: sizes.matMul, gflops: await matMulRate(sizes.matMul, sizes.repeats) };
  log("GPT-2-small-shaped forward");
  // The token embedding (50257 x 768 floats, 154 MB) is one buffer: some adapters cannot bind it.
  const maxBinding = info.name === "webgpu" ? webgpuMaxBinding() : undefined;
  const embeddingBytes = 50257 * 768 * 4;
  summary.gpt2SmallForward =
    maxBinding !== undefined && maxBinding < embeddingBytes
      ? { skipped: `the token embedding (${embeddingBytes} bytes) exceeds this adapter's largest storage binding (${maxBinding} bytes)` }
      : { seqlen: sizes.seqlen, tokensPerSecond: await forwardRate(sizes.seqlen) };
  log("stories260K perplexity");
  summary.stories260K = await storiesPerplexity(assets, info.name as BackendChoice);
  await initBackend(info.name as BackendChoice);
  log("short DSA search on the embedded model");
  summary.search = await shortSearch(info.name as BackendChoice);
  if (info.name === "webgpu") {
    try {
      await checkWebgpuDevice();
      summary.deviceErrors = "none";
    } catch (e) {
      summary.deviceErrors = String((e as Error).message);
      summary.ok = false;
    }
  }
  summary.seconds = Number(seconds(started).toFixed(1));
  console.log(JSON.stringify(summary, null, 2));
  if (summary.ok !== true) process.exitCode = 1;
};
