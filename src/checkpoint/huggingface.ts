import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CheckpointError } from "../errors.ts";
import { blockShape, type HostBlock, type HostGlobals, type HostNorm, type HostTensor, type ModelSpec } from "../model/spec.ts";
import { BLOCK_SHAPES_KEY, type Architecture } from "./architectures/architecture.ts";
import { architectureFor, supportedModelTypes } from "./architectures/index.ts";
import { checkFiniteWeights, formatShape, sameShape, transpose2d } from "./host.ts";
import { allSlots, blockSlots, fileShape, globalSlots, type BlockSlots, type GlobalSlots, type NormSlots, type Slot } from "./layout.ts";
import { openSafetensorsFolder, type SafetensorsFile } from "./safetensors.ts";
import type { Checkpoint } from "./types.ts";

/**
 * Reads config.json. `blockShapes` says whether it gives per-block sizes under
 * evosparse_block_shapes (see BLOCK_SHAPES_KEY; read by each architecture's specFromConfig).
 */
export const readConfig = (dir: string): { arch: Architecture; spec: ModelSpec; file: string; blockShapes: boolean } => {
  const file = join(dir, "config.json");
  if (!existsSync(file)) throw new CheckpointError({ file, problem: "no config.json: not a Hugging Face model folder" });
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new CheckpointError({ file, problem: `invalid JSON (${(e as Error).message})` });
  }
  const modelType = typeof raw === "object" && raw !== null ? (raw as { model_type?: unknown }).model_type : undefined;
  if (typeof modelType !== "string") throw new CheckpointError({ file, problem: "missing model_type" });
  const arch = architectureFor(modelType);
  if (!arch) {
    throw new CheckpointError({
      file,
      problem: `unknown model_type "${modelType}" (supported: ${supportedModelTypes().join(", ")})`,
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
    const blocks = Array.from({ length: spec.numLayers }, (_, i) => blockSlots(arch, spec, prefix, i));
    if (blockShapes) checkBlockShapes(st, spec, blocks, configFile);
    validate(st, arch, globals, blocks);
    const tokenizer = join(dir, "tokenizer.json");
    return {
      path: dir,
      format: "huggingface",
      spec,
      ...(existsSync(tokenizer) ? { tokenizerPath: tokenizer } : {}),
      readGlobals: () => readGlobals(st, globals),
      readBlock: (i) => {
        const slots = blocks[i];
        if (!slots) throw new RangeError(`block ${i} out of range 0..${spec.numLayers - 1}`);
        return readBlock(st, slots);
      },
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

/**
 * Every model weight of a Hugging Face checkpoint is read here (globals and blocks, resident
 * or streamed), so this is where a non-finite weight is refused, naming the shard and the
 * tensor. The generic safetensors reader stays faithful to the file: it also reads training
 * state, where it is not its business to judge values.
 */
const readSlot = (st: SafetensorsFile, slot: Slot): HostTensor => {
  const info = st.tensors.get(slot.name)!;
  const t: HostTensor = { shape: info.shape, data: st.read(slot.name) };
  checkFiniteWeights(fileOf(st, slot.name), slot.name, t.data);
  return slot.transposed ? transpose2d(t) : t;
};

const readNorm = (st: SafetensorsFile, n: NormSlots): HostNorm => ({
  weight: readSlot(st, n.weight),
  ...(n.bias ? { bias: readSlot(st, n.bias) } : {}),
});

const readGlobals = (st: SafetensorsFile, g: GlobalSlots): HostGlobals => ({
  embed: readSlot(st, g.embed),
  ...(g.positions ? { positions: readSlot(st, g.positions) } : {}),
  ...(g.finalNorm ? { finalNorm: readNorm(st, g.finalNorm) } : {}),
  ...(g.lmHead ? { lmHead: readSlot(st, g.lmHead) } : {}),
  ...(g.projectIn ? { projectIn: readSlot(st, g.projectIn) } : {}),
  ...(g.projectOut ? { projectOut: readSlot(st, g.projectOut) } : {}),
});

const readBlock = (st: SafetensorsFile, b: BlockSlots): HostBlock => ({
  attnNorm: readNorm(st, b.attnNorm),
  mlpNorm: readNorm(st, b.mlpNorm),
  linears: Object.fromEntries(
    Object.entries(b.linears).map(([name, l]) => [
      name,
      { weight: readSlot(st, l.weight), ...(l.bias ? { bias: readSlot(st, l.bias) } : {}) },
    ]),
  ),
});
