import { existsSync } from "node:fs";
import { readBoundedUtf8 } from "../reads.ts";
import { join } from "node:path";
import { CheckpointError } from "../errors.ts";
import {
  blockShape,
  type BlockOf,
  type GlobalSource,
  type HostBlock,
  type HostGlobals,
  type HostNorm,
  type HostTensor,
  type ModelSpec,
  type NormOf,
  type SourceBlock,
  type WeightSource,
} from "../model/spec.ts";
import { BLOCK_SHAPES_KEY, type Architecture } from "./architectures/architecture.ts";
import { architectureFor, supportedModelTypes } from "./architectures/index.ts";
import { convertInto, convertToHost, type StoredTensor } from "./convert.ts";
import { formatShape, sameShape } from "./host.ts";
import { allSlots, blockSlots, fileShape, globalSlots, type BlockSlots, type GlobalSlots, type NormSlots, type Slot } from "./layout.ts";
import { openSafetensorsFolder, type SafetensorsFile } from "./safetensors.ts";
import { BlockPrefetch } from "./prefetch.ts";
import type { Checkpoint, StorageDtype } from "./types.ts";

/**
 * Reads config.json. `blockShapes` says whether it gives per-block sizes under
 * evosparse_block_shapes (see BLOCK_SHAPES_KEY; read by each architecture's specFromConfig).
 */
export const readConfig = (dir: string): { arch: Architecture; spec: ModelSpec; file: string; blockShapes: boolean } => {
  const file = join(dir, "config.json");
  if (!existsSync(file)) throw new CheckpointError({ file, problem: "no config.json: not a Hugging Face model folder" });
  let raw: unknown;
  try {
    raw = JSON.parse(readBoundedUtf8(file, "config", { error: (problem) => new CheckpointError({ file, problem }) }));
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError({ file, problem: `invalid JSON (${(e as Error).message})` });
  }
  const modelType = typeof raw === "object" && raw !== null ? (raw as { model_type?: unknown }).model_type : undefined;
  if (typeof modelType !== "string") throw new CheckpointError({ file, problem: "missing model_type" });
  const arch = architectureFor(modelType);
  if (!arch) {
    throw new CheckpointError({
      file,
      problem: `unknown model_type "${modelType}" (supported: ${supportedModelTypes().join(", ")}; a record for another is given with --architecture FILE)`,
    });
  }
  const blockShapes = (raw as Record<string, unknown>)[BLOCK_SHAPES_KEY] != null;
  return { arch, spec: arch.specFromConfig(raw, file), file, blockShapes };
};

/**
 * Opens a Hugging Face model folder: config.json, model.safetensors (or a sharded index)
 * and tokenizer.json. Names, dtypes and shapes are checked against the architecture's
 * table here, from the headers, so that later block reads cannot meet a surprise.
 */
export const openHuggingFace = (dir: string): Checkpoint => {
  const { arch, spec, file: configFile, blockShapes } = readConfig(dir);
  const st = openSafetensorsFolder(dir);
  try {
    const prefix = arch.prefixes.find((p) => st.tensors.has(arch.globalNames(spec, p).embed)) ?? arch.prefixes[0]!;
    const globals = globalSlots(arch, spec, prefix);
    // The config's block count against the file's tensors before a slot per block is made:
    // a config claiming a million blocks is refused at once, not after building them all.
    const perBlock = blockSlotList(blockSlots(arch, spec, prefix, 0)).length;
    if (spec.numLayers * perBlock > st.tensors.size) {
      throw new CheckpointError({
        file: configFile,
        problem: `gives ${spec.numLayers} blocks, which need at least ${spec.numLayers * perBlock} tensors, but ${st.path} holds ${st.tensors.size}: this config.json does not describe these weights`,
      });
    }
    const blocks = Array.from({ length: spec.numLayers }, (_, i) => blockSlots(arch, spec, prefix, i));
    if (blockShapes) checkBlockShapes(st, spec, blocks, configFile);
    validate(st, arch, globals, blocks);
    const tokenizer = join(dir, "tokenizer.json");
    const slotsOf = (i: number): BlockSlots => {
      const slots = blocks[i];
      if (!slots) throw new RangeError(`block ${i} out of range 0..${spec.numLayers - 1}`);
      return slots;
    };
    const prefetch = new BlockPrefetch((i) => blockSlotList(slotsOf(i)).map((slot) => slot.name), (name) => st.readBytesAsync(name));
    return {
      path: dir,
      format: "huggingface",
      spec,
      ...(existsSync(tokenizer) ? { tokenizerPath: tokenizer } : {}),
      readGlobals: () => readGlobals(st, globals),
      readBlock: (i) => readBlock(st, slotsOf(i)),
      readBlockSource: (i) => {
        const slots = slotsOf(i);
        return blockSource(st, slots, prefetch.take(i));
      },
      prefetchBlock: (i) => prefetch.start(i),
      globalSource: () => globalSource(st, spec, globals),
      storageDtype: st.tensors.get(Object.values(slotsOf(0).linears)[0]!.weight.name)!.dtype as StorageDtype,
      bytesPerWeight: Math.max(...blockSlotList(slotsOf(0)).map((slot) => bytesOf(st.tensors.get(slot.name)!.dtype))),
      close: () => st.close(),
    };
  } catch (e) {
    st.close();
    throw e;
  }
};

/** The shard that holds a tensor, so an error names the file to look at. */
const fileOf = (st: SafetensorsFile, name: string): string => st.tensors.get(name)?.file ?? st.path;

/**
 * With per-block sizes in config.json, a block linear whose tensor has another shape means
 * the config's entry for that block is wrong: the error names config.json and the entry.
 */
const checkBlockShapes = (st: SafetensorsFile, spec: ModelSpec, blocks: readonly BlockSlots[], configFile: string): void => {
  blocks.forEach((b, i) => {
    for (const l of Object.values(b.linears)) {
      for (const slot of l.bias ? [l.weight, l.bias] : [l.weight]) {
        const info = st.tensors.get(slot.name);
        const want = fileShape(slot);
        if (!info || sameShape(info.shape, want)) continue;
        const s = blockShape(spec, i);
        throw new CheckpointError({
          file: configFile,
          problem:
            `${BLOCK_SHAPES_KEY}[${i}] (${s.numHeads} attention heads, ${s.numKvHeads} key/value heads, intermediate size ${s.intermediateSize}, ` +
            `head size ${spec.headDim}) does not match ${slot.name}: the file has ${formatShape(info.shape)}, the block's sizes imply ${formatShape(want)}`,
        });
      }
    }
  });
};

const validate = (st: SafetensorsFile, arch: Architecture, globals: GlobalSlots, blocks: readonly BlockSlots[]) => {
  const expected = allSlots(globals, blocks);
  const expectedNames = new Set(expected.map((s) => s.name));
  for (const slot of expected) {
    const info = st.tensors.get(slot.name);
    if (!info) throw new CheckpointError({ file: st.path, problem: `missing tensor ${slot.name}` });
    const want = fileShape(slot);
    if (!sameShape(info.shape, want)) {
      throw new CheckpointError({
        file: fileOf(st, slot.name),
        problem: `shape mismatch for ${slot.name}: file has ${formatShape(info.shape)}, config implies ${formatShape(want)}`,
      });
    }
    if (!["F32", "F16", "BF16"].includes(info.dtype)) {
      throw new CheckpointError({
        file: fileOf(st, slot.name),
        problem: `tensor ${slot.name} has unsupported dtype ${info.dtype} (evosparse reads F32, F16, BF16)`,
      });
    }
  }
  for (const name of st.tensors.keys()) {
    if (!expectedNames.has(name) && !arch.ignored.some((r) => r.test(name))) {
      throw new CheckpointError({ file: fileOf(st, name), problem: `unexpected tensor ${name} (not part of this architecture)` });
    }
  }
};

const bytesOf = (dtype: string): number => (dtype === "F32" ? 4 : 2);

/** How a slot's bytes are stored: what convertInto needs to decode them. */
const storedOf = (st: SafetensorsFile, slot: Slot): StoredTensor => {
  const info = st.tensors.get(slot.name)!;
  const [rows, cols] = info.shape.length === 1 ? [1, info.shape[0]!] : [info.shape[0]!, info.shape.slice(1).reduce((a, b) => a * b, 1)];
  return { file: fileOf(st, slot.name), name: slot.name, dtype: info.dtype as StorageDtype, rows, cols, transposed: slot.transposed };
};

/**
 * Every model weight of a Hugging Face checkpoint is read here (globals and blocks, resident
 * or streamed) and decoded by convertInto, which refuses a non-finite weight naming the
 * shard and the tensor. The generic safetensors reader stays faithful to the file: it also
 * reads training state, where it is not its business to judge values.
 */
const readSlot = (st: SafetensorsFile, slot: Slot): HostTensor => ({ shape: slot.shape, data: convertToHost(storedOf(st, slot), st.readBytes(slot.name)) });

/** A slot as a WeightSource: read (or taken from the prefetched bytes) and decoded when the decoder fills it. */
const slotSource = (st: SafetensorsFile, slot: Slot, prefetched?: Map<string, Uint8Array>): WeightSource => ({
  shape: slot.shape,
  fill: (into) => {
    const bytes = prefetched?.get(slot.name);
    // Prefetched bytes serve one fill; a block filled again reads the file again.
    prefetched?.delete(slot.name);
    convertInto(storedOf(st, slot), bytes ?? st.readBytes(slot.name), into);
  },
});

const mapNorm = <T>(n: NormSlots, f: (slot: Slot) => T): NormOf<T> => ({ weight: f(n.weight), ...(n.bias ? { bias: f(n.bias) } : {}) });

const mapBlock = <T>(b: BlockSlots, f: (slot: Slot) => T): BlockOf<T> => ({
  attnNorm: mapNorm(b.attnNorm, f),
  mlpNorm: mapNorm(b.mlpNorm, f),
  linears: Object.fromEntries(Object.entries(b.linears).map(([name, l]) => [name, { weight: f(l.weight), ...(l.bias ? { bias: f(l.bias) } : {}) }])),
});

/** Every slot of a block, in a fixed order. */
const blockSlotList = (b: BlockSlots): Slot[] => {
  const out: Slot[] = [];
  mapBlock(b, (slot) => out.push(slot));
  return out;
};

const readBlock = (st: SafetensorsFile, b: BlockSlots): HostBlock => mapBlock(b, (slot) => readSlot(st, slot));

const blockSource = (st: SafetensorsFile, b: BlockSlots, prefetched?: Map<string, Uint8Array>): SourceBlock => mapBlock(b, (slot) => slotSource(st, slot, prefetched));

const readNorm = (st: SafetensorsFile, n: NormSlots): HostNorm => mapNorm(n, (slot) => readSlot(st, slot));

const readGlobals = (st: SafetensorsFile, g: GlobalSlots): HostGlobals => ({
  embed: readSlot(st, g.embed),
  ...(g.positions ? { positions: readSlot(st, g.positions) } : {}),
  ...(g.finalNorm ? { finalNorm: readNorm(st, g.finalNorm) } : {}),
  ...(g.lmHead ? { lmHead: readSlot(st, g.lmHead) } : {}),
  ...(g.projectIn ? { projectIn: readSlot(st, g.projectIn) } : {}),
  ...(g.projectOut ? { projectOut: readSlot(st, g.projectOut) } : {}),
});

/**
 * The globals without reading the embedding or the head whole: embedding rows are read as
 * runs of consecutive token ids, head columns as the rows [start, start + count) of the
 * [vocab, embedDim] tensor the file holds (lm_head, or the tied embedding), transposed.
 */
const globalSource = (st: SafetensorsFile, spec: ModelSpec, g: GlobalSlots): GlobalSource => {
  const d = spec.embedDim;
  const embed = storedOf(st, g.embed);
  const width = bytesOf(embed.dtype);
  const headSlot = g.lmHead ?? g.embed;
  const head = storedOf(st, headSlot);
  // lm_head as torch stores it is [vocab, embedDim]: a vocabulary range is a byte range.
  const headByRows = headSlot === g.embed || headSlot.transposed;
  let wholeHead: HostTensor | undefined;
  return {
    embedRows: (ids) => {
      const out = new Float32Array(ids.length * d);
      const order = Array.from(ids.keys()).sort((a, b) => ids[a]! - ids[b]!);
      for (let k = 0; k < order.length; ) {
        // A run of consecutive ids (repeats included) is one read.
        let end = k + 1;
        while (end < order.length && ids[order[end]!]! - ids[order[end - 1]!]! <= 1) end++;
        const first = ids[order[k]!]!;
        const last = ids[order[end - 1]!]!;
        const rows = last - first + 1;
        const values = convertToHost({ ...embed, name: `${embed.name} (rows ${first}..${last})`, rows: 1, cols: rows * d, transposed: false }, st.readBytes(g.embed.name, first * d * width, rows * d * width));
        for (let j = k; j < end; j++) out.set(values.subarray((ids[order[j]!]! - first) * d, (ids[order[j]!]! - first + 1) * d), order[j]! * d);
        k = end;
      }
      return out;
    },
    headColumns: (start, count) => {
      if (!headByRows) {
        wholeHead ??= readSlot(st, headSlot);
        const v = spec.vocabSize;
        const out = new Float32Array(d * count);
        for (let j = 0; j < d; j++) out.set(wholeHead.data.subarray(j * v + start, j * v + start + count), j * count);
        return { shape: [d, count], data: out };
      }
      return {
        shape: [d, count],
        fill: (into) =>
          convertInto({ ...head, name: `${head.name} (rows ${start}..${start + count - 1})`, rows: count, cols: d, transposed: true }, st.readBytes(headSlot.name, start * d * width, count * d * width), into),
      };
    },
    ...(g.positions ? { positions: slotSource(st, g.positions) } : {}),
    ...(g.finalNorm ? { finalNorm: mapNorm(g.finalNorm, (slot) => slotSource(st, slot)) } : {}),
    ...(g.projectIn ? { projectIn: slotSource(st, g.projectIn) } : {}),
    ...(g.projectOut ? { projectOut: slotSource(st, g.projectOut) } : {}),
  };
};
