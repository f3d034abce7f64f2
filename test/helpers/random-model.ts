/**
 * Small seeded random models of every supported family, for comparing the decoder against
 * an independent reference. Weights are large enough (0.1–0.5) that every part of a block
 * changes the logits noticeably.
 */
import type { BlockShape, HostBlock, HostGlobals, HostLinear, HostNorm, HostTensor, ModelSpec } from "../../src/model/spec.ts";
import { linearShapes } from "../../src/model/spec.ts";

/** mulberry32: a tiny deterministic PRNG, uniform in [0, 1). */
export const mulberry32 = (seed: number): (() => number) => {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

export const FAMILY_CASES = [
  "llama-gqa",
  "llama3-scaled",
  "mistral",
  "qwen2",
  "opt-pre",
  "opt-post-projected",
  "gpt2",
  "llama2c",
] as const;
export type FamilyCase = (typeof FAMILY_CASES)[number];

export interface RandomModel {
  readonly spec: ModelSpec;
  readonly globals: HostGlobals;
  readonly blocks: HostBlock[];
}

interface Size {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  readonly maxPositions: number;
}

const SMALL: Size = {
  vocabSize: 61,
  hiddenSize: 32,
  numLayers: 2,
  numHeads: 4,
  headDim: 8,
  intermediateSize: 48,
  maxPositions: 40,
};

const llamaRoles = { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj", gate: "gate_proj", up: "up_proj", down: "down_proj" };
const optRoles = { q: "q_proj", k: "k_proj", v: "v_proj", o: "out_proj", up: "fc1", down: "fc2" };
const gpt2Roles = { qkv: "attn.c_attn", o: "attn.c_proj", up: "mlp.c_fc", down: "mlp.c_proj" };
const llama2cRoles = { q: "wq", k: "wk", v: "wv", o: "wo", gate: "w1", up: "w3", down: "w2" };

const namesOf = (roles: Record<string, string>): string[] => Object.values(roles);

export const familySpec = (c: FamilyCase, size: Size = SMALL): ModelSpec => {
  const base = { ...size, numKvHeads: size.numHeads, embedDim: size.hiddenSize, bosTokenId: 1, eosTokenId: 2 };
  const llamaLike = {
    ...base,
    norm: "rms" as const,
    normEps: 1e-5,
    normBefore: true,
    activation: "silu" as const,
    linears: namesOf(llamaRoles),
    roles: llamaRoles,
    tiedEmbeddings: false,
    finalNorm: true,
  };
  const optLike = {
    ...base,
    norm: "layer" as const,
    normEps: 1e-5,
    positions: { kind: "learned" as const, offset: 2 },
    activation: "relu" as const,
    linears: namesOf(optRoles),
    roles: optRoles,
    tiedEmbeddings: true,
  };
  switch (c) {
    case "llama-gqa":
      return { ...llamaLike, family: "llama", numKvHeads: 2, positions: { kind: "rope", theta: 10000 } };
    case "llama3-scaled":
      // With headDim 8 and theta 5e5 the wavelengths are ~6, ~167, ~4.4e3 and ~1.2e5, so
      // against an original context of 512 one frequency is kept, one smoothed and two divided.
      return {
        ...llamaLike,
        family: "llama",
        numKvHeads: 1,
        positions: {
          kind: "rope",
          theta: 500000,
          scaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 512 },
        },
        tiedEmbeddings: true,
      };
    case "mistral":
      return { ...llamaLike, family: "mistral", numKvHeads: 2, normEps: 1e-6, positions: { kind: "rope", theta: 1e6 } };
    case "qwen2":
      return { ...llamaLike, family: "qwen2", numKvHeads: 2, normEps: 1e-6, positions: { kind: "rope", theta: 1e6 }, tiedEmbeddings: true };
    case "opt-pre":
      return { ...optLike, family: "opt", normBefore: true, finalNorm: true };
    case "opt-post-projected":
      return { ...optLike, family: "opt", normBefore: false, finalNorm: false, embedDim: 16 };
    case "gpt2":
      return {
        ...base,
        family: "gpt2",
        norm: "layer",
        normEps: 1e-5,
        normBefore: true,
        positions: { kind: "learned", offset: 0 },
        activation: "gelu_tanh",
        linears: namesOf(gpt2Roles),
        roles: gpt2Roles,
        tiedEmbeddings: true,
        finalNorm: true,
      };
    case "llama2c":
      return { ...llamaLike, family: "llama2c", linears: namesOf(llama2cRoles), roles: llama2cRoles, positions: { kind: "rope", theta: 10000 } };
  }
};

/** Which linears carry biases in each family. */
const hasBias = (spec: ModelSpec, name: string): boolean => {
  if (spec.family === "opt" || spec.family === "gpt2") return true;
  if (spec.family === "qwen2") return name === spec.roles.q || name === spec.roles.k || name === spec.roles.v;
  return false;
};

/** `blocks` gives each block its own sizes (spec.blocks). */
export const randomModel = (c: FamilyCase, seed: number, size: Size = SMALL, blocks?: readonly BlockShape[]): RandomModel => {
  const plain = familySpec(c, size);
  const spec: ModelSpec = { ...plain, biasedLinears: plain.linears.filter((name) => hasBias(plain, name)), ...(blocks ? { blocks } : {}) };
  const random = mulberry32(seed);
  const uniform = (shape: number[], scale: number, centre = 0): HostTensor => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = centre + scale * (2 * random() - 1);
    return { shape, data };
  };
  const hidden = spec.hiddenSize;
  const norm = (): HostNorm =>
    spec.norm === "layer" ? { weight: uniform([hidden], 0.3, 1), bias: uniform([hidden], 0.2) } : { weight: uniform([hidden], 0.3, 1) };
  const hostBlocks: HostBlock[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    const linears: Record<string, HostLinear> = {};
    for (const [name, [inDim, outDim]] of Object.entries(linearShapes(spec, i))) {
      // ~0.3·sqrt(3/in) keeps each linear's output on the scale of its input.
      const weight = uniform([inDim, outDim], 0.9 / Math.sqrt(inDim));
      linears[name] = hasBias(spec, name) ? { weight, bias: uniform([outDim], 0.2) } : { weight };
    }
    hostBlocks.push({ attnNorm: norm(), mlpNorm: norm(), linears });
  }
  const projected = spec.embedDim !== hidden;
  const globals: HostGlobals = {
    embed: uniform([spec.vocabSize, spec.embedDim], 0.8),
    positions:
      spec.positions.kind === "learned" ? uniform([spec.maxPositions + spec.positions.offset, hidden], 0.5) : undefined,
    finalNorm: spec.finalNorm ? norm() : undefined,
    lmHead: spec.tiedEmbeddings ? undefined : uniform([spec.embedDim, spec.vocabSize], 0.5),
    projectIn: projected ? uniform([spec.embedDim, hidden], 0.9 / Math.sqrt(spec.embedDim)) : undefined,
    projectOut: projected ? uniform([hidden, spec.embedDim], 0.9 / Math.sqrt(hidden)) : undefined,
  };
  return { spec, globals, blocks: hostBlocks };
};

export const blockSourceOf = (m: RandomModel, onLoad?: (index: number) => void) => ({
  numBlocks: m.blocks.length,
  load: (index: number): HostBlock => {
    onLoad?.(index);
    return m.blocks[index];
  },
});

/** Seeded token ids in [0, vocab). */
export const randomIds = (count: number, vocab: number, seed: number): Int32Array => {
  const random = mulberry32(seed);
  return Int32Array.from({ length: count }, () => Math.floor(random() * vocab));
};

/** Next-token targets inside each window (the last position of a window is not scored). */
export const nextTokenTargets = (ids: Int32Array, batch: number, seqlen: number): Int32Array => {
  const targets = new Int32Array(ids.length).fill(-1);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t + 1 < seqlen; t++) targets[b * seqlen + t] = ids[b * seqlen + t + 1];
  }
  return targets;
};
