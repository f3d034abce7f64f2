/**
 * An independent float64 forward pass written directly from the family descriptions:
 * plain loops over one token at a time, no tensors. It shares nothing with the decoder but
 * the spec type, so agreement between the two is evidence that both follow the definitions.
 */
import type { HostBlock, HostGlobals, HostTensor, ModelSpec } from "../../src/model/spec.ts";

type Vec = Float64Array;

/** A float64 copy of a model; its arrays may be edited in place (e.g. for finite differences). */
export interface ReferenceWeights {
  embed: Vec; // [vocab][embedDim]
  positions?: Vec; // [rows][hidden]
  finalNormWeight?: Vec;
  finalNormBias?: Vec;
  lmHead?: Vec; // [embedDim][vocab]
  projectIn?: Vec; // [embedDim][hidden]
  projectOut?: Vec; // [hidden][embedDim]
  blocks: {
    attnNormWeight: Vec;
    attnNormBias?: Vec;
    mlpNormWeight: Vec;
    mlpNormBias?: Vec;
    linears: Record<string, { weight: Vec; bias?: Vec; inDim: number; outDim: number }>;
  }[];
}

const f64 = (t: HostTensor | undefined): Vec | undefined => (t ? Float64Array.from(t.data) : undefined);

export const referenceWeights = (globals: HostGlobals, blocks: readonly HostBlock[]): ReferenceWeights => ({
  embed: Float64Array.from(globals.embed.data),
  positions: f64(globals.positions),
  finalNormWeight: f64(globals.finalNorm?.weight),
  finalNormBias: f64(globals.finalNorm?.bias),
  lmHead: f64(globals.lmHead),
  projectIn: f64(globals.projectIn),
  projectOut: f64(globals.projectOut),
  blocks: blocks.map((b) => ({
    attnNormWeight: Float64Array.from(b.attnNorm.weight.data),
    attnNormBias: f64(b.attnNorm.bias),
    mlpNormWeight: Float64Array.from(b.mlpNorm.weight.data),
    mlpNormBias: f64(b.mlpNorm.bias),
    linears: Object.fromEntries(
      Object.entries(b.linears).map(([name, l]) => [
        name,
        { weight: Float64Array.from(l.weight.data), bias: f64(l.bias), inDim: l.weight.shape[0], outDim: l.weight.shape[1] },
      ]),
    ),
  })),
});

/** x (length in) times W stored row-major [in][out], plus bias. */
const affine = (x: Vec, w: Vec, inDim: number, outDim: number, bias?: Vec): Vec => {
  const y = new Float64Array(outDim);
  for (let i = 0; i < inDim; i++) {
    const xi = x[i];
    for (let o = 0; o < outDim; o++) y[o] += xi * w[i * outDim + o];
  }
  if (bias) for (let o = 0; o < outDim; o++) y[o] += bias[o];
  return y;
};

const norm = (spec: ModelSpec, x: Vec, weight: Vec, bias?: Vec): Vec => {
  const n = x.length;
  const y = new Float64Array(n);
  if (spec.norm === "rms") {
    let ms = 0;
    for (let i = 0; i < n; i++) ms += x[i] * x[i];
    const r = 1 / Math.sqrt(ms / n + spec.normEps);
    for (let i = 0; i < n; i++) y[i] = x[i] * r * weight[i];
    return y;
  }
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let variance = 0;
  for (let i = 0; i < n; i++) variance += (x[i] - mean) ** 2;
  variance /= n;
  const r = 1 / Math.sqrt(variance + spec.normEps);
  for (let i = 0; i < n; i++) y[i] = (x[i] - mean) * r * weight[i] + (bias ? bias[i] : 0);
  return y;
};

const act = (kind: ModelSpec["activation"], v: number): number => {
  if (kind === "relu") return Math.max(0, v);
  if (kind === "silu") return v / (1 + Math.exp(-v));
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
};

/** Rotary inverse frequencies with the optional LLaMA-3 band-wise rescaling. */
export const referenceInverseFrequencies = (spec: ModelSpec): number[] => {
  const p = spec.positions;
  if (p.kind !== "rope") return [];
  const freqs: number[] = [];
  for (let i = 0; i < spec.headDim; i += 2) {
    const base = Math.pow(p.theta, -i / spec.headDim);
    const s = p.scaling;
    if (!s) {
      freqs.push(base);
      continue;
    }
    const wavelength = (2 * Math.PI) / base;
    const shortest = s.originalMaxPositions / s.highFreqFactor;
    const longest = s.originalMaxPositions / s.lowFreqFactor;
    if (wavelength < shortest) freqs.push(base);
    else if (wavelength > longest) freqs.push(base / s.factor);
    else {
      const smooth = (s.originalMaxPositions / wavelength - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      freqs.push((1 - smooth) * (base / s.factor) + smooth * base);
    }
  }
  return freqs;
};

/** Rotates every head of one token's vector in place: pairs (j, j + headDim/2). */
const rotate = (vec: Vec, heads: number, headDim: number, position: number, freqs: number[]): void => {
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      const a = vec[h * headDim + j];
      const b = vec[h * headDim + j + half];
      const angle = position * freqs[j];
      vec[h * headDim + j] = a * Math.cos(angle) - b * Math.sin(angle);
      vec[h * headDim + j + half] = b * Math.cos(angle) + a * Math.sin(angle);
    }
  }
};

type Block = ReferenceWeights["blocks"][number];

const lin = (block: Block, name: string, x: Vec): Vec => {
  const l = block.linears[name];
  return affine(x, l.weight, l.inDim, l.outDim, l.bias);
};

/** Block `index`'s heads: its entry in spec.blocks when blocks differ, else the spec's. */
const headsOf = (spec: ModelSpec, index: number): { numHeads: number; numKvHeads: number } => spec.blocks?.[index] ?? spec;

const selfAttention = (spec: ModelSpec, index: number, block: Block, xs: Vec[]): Vec[] => {
  const { headDim, roles } = spec;
  const { numHeads, numKvHeads } = headsOf(spec, index);
  const qs: Vec[] = [];
  const ks: Vec[] = [];
  const vs: Vec[] = [];
  for (const x of xs) {
    if (roles.qkv) {
      const all = lin(block, roles.qkv, x);
      const qw = numHeads * headDim;
      const kw = numKvHeads * headDim;
      qs.push(all.slice(0, qw));
      ks.push(all.slice(qw, qw + kw));
      vs.push(all.slice(qw + kw, qw + 2 * kw));
    } else {
      qs.push(lin(block, roles.q!, x));
      ks.push(lin(block, roles.k!, x));
      vs.push(lin(block, roles.v!, x));
    }
  }
  if (spec.positions.kind === "rope") {
    const freqs = referenceInverseFrequencies(spec);
    qs.forEach((q, t) => rotate(q, numHeads, headDim, t, freqs));
    ks.forEach((k, t) => rotate(k, numKvHeads, headDim, t, freqs));
  }
  const group = numHeads / numKvHeads;
  return xs.map((_, t) => {
    const out = new Float64Array(numHeads * headDim);
    for (let h = 0; h < numHeads; h++) {
      const g = Math.floor(h / group);
      const scores: number[] = [];
      for (let u = 0; u <= t; u++) {
        let dot = 0;
        for (let j = 0; j < headDim; j++) dot += qs[t][h * headDim + j] * ks[u][g * headDim + j];
        scores.push(dot / Math.sqrt(headDim));
      }
      const top = Math.max(...scores);
      const weights = scores.map((s) => Math.exp(s - top));
      const total = weights.reduce((a, b) => a + b, 0);
      for (let u = 0; u <= t; u++) {
        for (let j = 0; j < headDim; j++) out[h * headDim + j] += (weights[u] / total) * vs[u][g * headDim + j];
      }
    }
    return lin(block, roles.o, out);
  });
};

const feedForward = (spec: ModelSpec, block: Block, x: Vec): Vec => {
  const { roles } = spec;
  const up = lin(block, roles.up, x);
  const inner = new Float64Array(up.length);
  if (roles.gate) {
    const gate = lin(block, roles.gate, x);
    for (let i = 0; i < up.length; i++) inner[i] = act(spec.activation, gate[i]) * up[i];
  } else {
    for (let i = 0; i < up.length; i++) inner[i] = act(spec.activation, up[i]);
  }
  return lin(block, roles.down, inner);
};

const plus = (a: Vec, b: Vec): Vec => a.map((v, i) => v + b[i]);

/** Logits [seqlen][vocab] of one window, positions starting at 0. */
export const referenceLogits = (spec: ModelSpec, w: ReferenceWeights, ids: ArrayLike<number>): Vec[] => {
  const e = spec.embedDim;
  const d = spec.hiddenSize;
  let xs: Vec[] = Array.from(ids, (id, t) => {
    let x: Vec = w.embed.slice(id * e, (id + 1) * e);
    if (w.projectIn) x = affine(x, w.projectIn, e, d);
    if (spec.positions.kind === "learned") {
      const row = t + spec.positions.offset;
      x = plus(x, w.positions!.slice(row * d, (row + 1) * d));
    }
    return x;
  });
  for (const [index, block] of w.blocks.entries()) {
    if (spec.normBefore) {
      const attn = selfAttention(spec, index, block, xs.map((x) => norm(spec, x, block.attnNormWeight, block.attnNormBias)));
      const hs = xs.map((x, t) => plus(x, attn[t]));
      xs = hs.map((h) => plus(h, feedForward(spec, block, norm(spec, h, block.mlpNormWeight, block.mlpNormBias))));
    } else {
      const attn = selfAttention(spec, index, block, xs);
      const hs = xs.map((x, t) => norm(spec, plus(x, attn[t]), block.attnNormWeight, block.attnNormBias));
      xs = hs.map((h) => norm(spec, plus(h, feedForward(spec, block, h)), block.mlpNormWeight, block.mlpNormBias));
    }
  }
  return xs.map((x) => {
    let h = spec.finalNorm ? norm(spec, x, w.finalNormWeight!, w.finalNormBias) : x;
    if (w.projectOut) h = affine(h, w.projectOut, d, e);
    if (w.lmHead) return affine(h, w.lmHead, e, spec.vocabSize);
    const logits = new Float64Array(spec.vocabSize);
    for (let v = 0; v < spec.vocabSize; v++) {
      let dot = 0;
      for (let i = 0; i < e; i++) dot += h[i] * w.embed[v * e + i];
      logits[v] = dot;
    }
    return logits;
  });
};

/** Summed NLL and count over positions with targets ≥ 0, windows of `seqlen` run separately. */
export const referenceNll = (
  spec: ModelSpec,
  w: ReferenceWeights,
  ids: Int32Array,
  targets: Int32Array,
  seqlen: number,
): { nll: number; count: number } => {
  let nll = 0;
  let count = 0;
  for (let start = 0; start < ids.length; start += seqlen) {
    const logits = referenceLogits(spec, w, ids.subarray(start, start + seqlen));
    logits.forEach((row, t) => {
      const target = targets[start + t];
      if (target < 0) return;
      const top = Math.max(...row);
      const lse = top + Math.log(row.reduce((a, v) => a + Math.exp(v - top), 0));
      nll += lse - row[target];
      count++;
    });
  }
  return { nll, count };
};
