import { writeHuggingFace } from "../src/checkpoint/write-huggingface.ts";
import { readConfig } from "../src/checkpoint/huggingface.ts";
import { Rng } from "../src/rng.ts";
import { linearShapes, type HostBlock, type HostGlobals, type HostTensor, type ModelSpec } from "../src/model/spec.ts";
import { mkdirSync, writeFileSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

/** GPT-2 small's config.json: 12 blocks of width 768, 12 heads, 50257 tokens, 1024 positions. */
export const GPT2_SMALL_CONFIG = {
  model_type: "gpt2",
  vocab_size: 50257,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  n_positions: 1024,
  activation_function: "gelu_new",
  layer_norm_epsilon: 1e-5,
};

const randomTensor = (rng: Rng, shape: readonly number[], std: number): HostTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  // Uniform with the right spread is plenty for timing and cheaper than normals.
  const half = std * Math.sqrt(3);
  for (let i = 0; i < n; i++) data[i] = (2 * rng.next() - 1) * half;
  return { shape, data };
};

/**
 * Writes a GPT-2-small-shaped checkpoint (124M parameters) with seeded random weights in
 * the real layout, through the same writer users' pruned checkpoints go through.
 */
export const writeGpt2Small = (dtype: "F32" | "F16" = "F16"): { dir: string; spec: ModelSpec } => {
  const parent = mkdtempSync(join(tmpdir(), "evosparse-bench-"));
  const configDir = join(parent, "config-only");
  mkdirSync(configDir);
  writeFileSync(join(configDir, "config.json"), JSON.stringify(GPT2_SMALL_CONFIG));
  const { spec } = readConfig(configDir);
  const rng = new Rng(1234);
  const shapes = linearShapes(spec, 0);
  const d = spec.hiddenSize;
  const ones = (n: number): HostTensor => ({ shape: [n], data: new Float32Array(n).fill(1) });
  const zeros = (n: number): HostTensor => ({ shape: [n], data: new Float32Array(n) });
  const blocks: HostBlock[] = Array.from({ length: spec.numLayers }, (_, i) => {
    const r = rng.split(i);
    return {
      attnNorm: { weight: ones(d), bias: zeros(d) },
      mlpNorm: { weight: ones(d), bias: zeros(d) },
      linears: Object.fromEntries(
        spec.linears.map((name) => [name, { weight: randomTensor(r, shapes[name]!, 0.02), bias: zeros(shapes[name]![1]) }]),
      ),
    };
  });
  const globals: HostGlobals = {
    embed: randomTensor(rng.split("wte"), [spec.vocabSize, d], 0.02),
    positions: randomTensor(rng.split("wpe"), [spec.maxPositions, d], 0.01),
    finalNorm: { weight: ones(d), bias: zeros(d) },
  };
  const dir = join(parent, "gpt2-small");
  writeHuggingFace(dir, spec, globals, blocks, { dtype });
  return { dir, spec };
};

/** Parameters of the prunable linears of one block. */
export const blockParameters = (spec: ModelSpec): number =>
  Object.values(linearShapes(spec, 0)).reduce((n, [i, o]) => n + i * o + o, 0) + 4 * spec.hiddenSize;

/**
 * Useful FLOPs (2 per multiply-add) of a forward over `windows` windows of `seqlen` tokens:
 * the linears, the causal attention products (q·kᵀ and p·v over the seqlen·(seqlen+1)/2
 * query-key pairs a causal model needs, whatever the implementation computes beyond them),
 * and the LM head on the scored rows. Elementwise work (norms, softmax, RoPE) is not counted.
 */
export const forwardFlops = (spec: ModelSpec, seqlen: number, windows: number, scoredRows = seqlen): number => {
  const linear = Object.values(linearShapes(spec, 0)).reduce((n, [i, o]) => n + i * o, 0);
  const causalPairs = (seqlen * (seqlen + 1)) / 2;
  const perWindow =
    spec.numLayers * (2 * linear * seqlen + 2 * 2 * causalPairs * spec.numHeads * spec.headDim) +
    2 * scoredRows * spec.embedDim * spec.vocabSize;
  return perWindow * windows;
};
