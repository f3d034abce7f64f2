import { closeSync, readdirSync, readSync } from "node:fs";
import { openRegularFile } from "../reads.ts";
import { dirname, join } from "node:path";
import { CheckpointError } from "../errors.ts";
import { hostGlobalSource, type GlobalSource, type HostBlock, type HostGlobals, type HostTensor, type ModelSpec } from "../model/spec.ts";
import { checkFiniteWeights, transpose2d } from "./host.ts";
import type { Checkpoint } from "./types.ts";

/**
 * llama2.c checkpoints: the "legacy" export (7 int32 header, then float32 tensors) and
 * the version-1 export (256-byte header with magic "ak42"). Weights are stored as
 * torch.nn.Linear does, [out, in], and RoPE rotates interleaved pairs (x0,x1),(x2,x3)...
 * We convert on read to the model's conventions: [in, out] weights and the Hugging Face
 * "rotate half" RoPE, by permuting the q and k output rows of every head the same way
 * transformers' conversion script does. q.k products are unchanged by a permutation
 * applied to both, so the model computes exactly what llama2.c computes.
 */

const LEGACY_HEADER_BYTES = 28;
const V1_HEADER_BYTES = 256;
const V1_MAGIC = 0x616b3432;

export const LLAMA2C_LINEARS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const;

interface Header {
  readonly version: 0 | 1;
  readonly dim: number;
  readonly hiddenDim: number;
  readonly nLayers: number;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly vocabSize: number;
  readonly seqLen: number;
  readonly sharedClassifier: boolean;
}

const readHeader = (fd: number, file: string, size: number): Header => {
  if (size < LEGACY_HEADER_BYTES) throw new CheckpointError({ file, problem: `truncated file: ${size} bytes is shorter than the llama2.c header` });
  const buf = Buffer.alloc(Math.min(V1_HEADER_BYTES, size));
  readSync(fd, buf, 0, buf.length, 0);
  if (buf.readUInt32LE(0) === V1_MAGIC) {
    const version = buf.readInt32LE(4);
    if (version !== 1) throw new CheckpointError({ file, problem: `llama2.c export version ${version} is not supported (only float32 legacy and version 1)` });
    if (size < V1_HEADER_BYTES) throw new CheckpointError({ file, problem: "truncated file: shorter than the version-1 header" });
    const ints = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(8 + 4 * i));
    return { version: 1, ...dims(ints, file), sharedClassifier: buf.readUInt8(36) === 1 };
  }
  const ints = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(4 * i));
  // A negative vocab size is the legacy way to say "the classifier is stored separately".
  return { version: 0, ...dims([...ints.slice(0, 5), Math.abs(ints[5]!), ints[6]!], file), sharedClassifier: ints[5]! > 0 };
};

const dims = (ints: number[], file: string) => {
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen] = ints as [number, number, number, number, number, number, number];
  const ok =
    ints.every((v) => Number.isInteger(v) && v > 0 && v < 1 << 24) &&
    dim % nHeads === 0 &&
    nHeads % nKvHeads === 0 &&
    (dim / nHeads) % 2 === 0;
  if (!ok) throw new CheckpointError({ file, problem: `not a llama2.c checkpoint: implausible header ${JSON.stringify(ints)}` });
  return { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen };
};

export const llama2cSpec = (h: Header): ModelSpec => ({
  family: "llama2c",
  vocabSize: h.vocabSize,
  hiddenSize: h.dim,
  numLayers: h.nLayers,
  numHeads: h.nHeads,
  numKvHeads: h.nKvHeads,
  headDim: h.dim / h.nHeads,
  intermediateSize: h.hiddenDim,
  maxPositions: h.seqLen,
  norm: "rms",
  normEps: 1e-5,
  normBefore: true,
  positions: { kind: "rope", theta: 10000 },
  activation: "silu",
  linears: LLAMA2C_LINEARS,
  roles: { q: "wq", k: "wk", v: "wv", o: "wo", gate: "w1", up: "w3", down: "w2" },
  tiedEmbeddings: h.sharedClassifier,
  finalNorm: true,
  embedDim: h.dim,
  bosTokenId: 1,
  eosTokenId: 2,
});

/** Float offsets (in elements) of every stored array, in file order. */
const layout = (h: Header) => {
  const { dim, hiddenDim: hid, nLayers: L, vocabSize: V } = h;
  const kv = (dim / h.nHeads) * h.nKvHeads;
  const sizes: Record<string, number> = {
    embed: V * dim,
    rms_att: L * dim,
    rms_ffn: L * dim,
    rms_final: dim,
    wq: L * dim * dim,
    wk: L * kv * dim,
    wv: L * kv * dim,
    wo: L * dim * dim,
    w1: L * hid * dim,
    w2: L * dim * hid,
    w3: L * hid * dim,
    freq_cis: h.seqLen * (dim / h.nHeads),
    wcls: h.sharedClassifier ? 0 : V * dim,
  };
  const order =
    h.version === 0
      ? ["embed", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "freq_cis", "wcls"]
      : ["rms_att", "rms_ffn", "rms_final", "embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls"];
  const offsets: Record<string, number> = {};
  let at = 0;
  for (const name of order) {
    offsets[name] = at;
    at += sizes[name]!;
  }
  return { offsets, totalFloats: at, kv };
};

/** Reorders each head's rows from interleaved pairs to the "rotate half" layout. */
export const permuteRopeRows = (t: HostTensor, heads: number): HostTensor => {
  const [rows, cols] = t.shape as [number, number];
  const hd = rows / heads;
  const out = new Float32Array(t.data.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < hd / 2; j++) {
      const base = h * hd;
      out.set(t.data.subarray((base + 2 * j) * cols, (base + 2 * j + 1) * cols), (base + j) * cols);
      out.set(t.data.subarray((base + 2 * j + 1) * cols, (base + 2 * j + 2) * cols), (base + j + hd / 2) * cols);
    }
  }
  return { shape: t.shape, data: out };
};

export const findLlama2cTokenizer = (checkpointFile: string): string | undefined => {
  const dir = dirname(checkpointFile);
  const names = readdirSync(dir);
  if (names.includes("tokenizer.bin")) return join(dir, "tokenizer.bin");
  const tok = names.filter((n) => /^tok.*\.bin$/.test(n)).sort();
  return tok[0] ? join(dir, tok[0]) : undefined;
};

export const openLlama2c = (file: string, tokenizerPath?: string): Checkpoint => {
  // Only a regular file: a named pipe would block the open, a device never ends.
  const { fd, size } = openRegularFile(file, { error: (problem) => new CheckpointError({ file, problem }) });
  try {
    const h = readHeader(fd, file, size);
    const { offsets, totalFloats, kv } = layout(h);
    const headerBytes = h.version === 0 ? LEGACY_HEADER_BYTES : V1_HEADER_BYTES;
    const expected = headerBytes + 4 * totalFloats;
    if (size < expected) throw new CheckpointError({ file, problem: `truncated file: ${size} bytes, the header implies ${expected}` });
    if (size > expected) throw new CheckpointError({ file, problem: `${size - expected} unexpected trailing bytes after the weights the header implies` });
    const spec = llama2cSpec(h);

    /**
     * Every weight of the model is read here (globals and blocks, resident or streamed), so
     * a non-finite value is refused here, named as `label` with its index as stored.
     */
    const read = (name: string, start: number, shape: readonly number[], label: string): HostTensor => {
      const count = shape.reduce((a, b) => a * b, 1);
      const buf = Buffer.alloc(count * 4);
      readSync(fd, buf, 0, buf.length, headerBytes + 4 * (offsets[name]! + start));
      const data = new Float32Array(buf.buffer, buf.byteOffset, count);
      checkFiniteWeights(file, label, data);
      return { shape, data };
    };
    const layerMatrix = (name: string, i: number, rows: number, cols: number) => read(name, i * rows * cols, [rows, cols], `layers.${i}.${name}`);
    const { dim, hiddenDim: hid } = h;
    const tokenizer = tokenizerPath ?? findLlama2cTokenizer(file);

    const readGlobals = (): HostGlobals => ({
        embed: read("embed", 0, [h.vocabSize, dim], "token_embedding_table"),
        finalNorm: { weight: read("rms_final", 0, [dim], "rms_final_weight") },
        ...(h.sharedClassifier ? {} : { lmHead: transpose2d(read("wcls", 0, [h.vocabSize, dim], "wcls")) }),
      });
    const readBlock = (i: number): HostBlock => {
        if (!(i >= 0 && i < h.nLayers)) throw new RangeError(`block ${i} out of range 0..${h.nLayers - 1}`);
        return {
          attnNorm: { weight: read("rms_att", i * dim, [dim], `layers.${i}.rms_att_weight`) },
          mlpNorm: { weight: read("rms_ffn", i * dim, [dim], `layers.${i}.rms_ffn_weight`) },
          linears: {
            wq: { weight: transpose2d(permuteRopeRows(layerMatrix("wq", i, dim, dim), h.nHeads)) },
            wk: { weight: transpose2d(permuteRopeRows(layerMatrix("wk", i, kv, dim), h.nKvHeads)) },
            wv: { weight: transpose2d(layerMatrix("wv", i, kv, dim)) },
            wo: { weight: transpose2d(layerMatrix("wo", i, dim, dim)) },
            w1: { weight: transpose2d(layerMatrix("w1", i, hid, dim)) },
            w2: { weight: transpose2d(layerMatrix("w2", i, dim, hid)) },
            w3: { weight: transpose2d(layerMatrix("w3", i, hid, dim)) },
          },
        };
      };
    // llama2.c models are small (F32 files of at most a few hundred MB, their q/k rows
    // permuted on load): their blocks and globals are read whole, as host arrays.
    let globals: GlobalSource | undefined;
    return {
      path: file,
      format: "llama2c",
      spec,
      ...(tokenizer ? { tokenizerPath: tokenizer } : {}),
      readGlobals,
      readBlock,
      readBlockSource: readBlock,
      globalSource: () => (globals ??= hostGlobalSource(spec, readGlobals())),
      storageDtype: "F32",
      bytesPerWeight: 4,
      close: () => closeSync(fd),
    };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
};
