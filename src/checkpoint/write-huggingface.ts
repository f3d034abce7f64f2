import { constants, copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { writeNewFile } from "../files.ts";
import { markerContent, namedByTarget, OUTPUT_MARKER, replaceDir, stagingFolder } from "../output/folder.ts";
import type { HostBlock, HostGlobals, HostTensor, ModelSpec } from "../model/spec.ts";
import { architectureFor } from "./architectures/index.ts";
import { encodeFrom } from "./convert.ts";
import { formatShape, sameShape } from "./host.ts";
import { blockEntries, blockSlots, globalEntries, globalSlots, slotList, type Slot } from "./layout.ts";
import { writeSafetensors } from "./safetensors.ts";
import type { StorageDtype } from "./types.ts";

export interface WriteOptions {
  readonly dtype?: StorageDtype;
  /** tokenizer.json content to write, or a file to copy. */
  readonly tokenizerJson?: object;
  readonly tokenizerFile?: string;
  /**
   * Extra files (name -> content) written into the folder, e.g. a training log. A function
   * is called after the weights are written, so a report can include the export's time.
   */
  readonly extraFiles?: Readonly<Record<string, string | (() => string)>>;
  /** The command that writes the folder, recorded in its marker (default "evosparse"). */
  readonly command?: string;
  /** An existing folder evosparse wrote may be replaced; any other existing folder is an error. */
  readonly overwrite?: boolean;
}

/**
 * Writes a Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
 * The folder is assembled under a temporary name beside the target and renamed into
 * place at the end, so an interrupted write never leaves a folder that looks complete.
 * It holds evosparse's output marker, so a later `--overwrite` can tell it was written here.
 */
/** Blocks to write: all in memory, or read one at a time (a pruned model larger than memory). */
export type BlocksToWrite = readonly HostBlock[] | { readonly count: number; read(index: number): HostBlock };

export const writeHuggingFace = (
  dir: string,
  spec: ModelSpec,
  globals: HostGlobals,
  blocks: BlocksToWrite,
  options: WriteOptions = {},
): void => {
  const arch = architectureFor(spec.family);
  if (!arch) throw new Error(`cannot write family ${spec.family} as a Hugging Face checkpoint`);
  const dtype = options.dtype ?? "F32";
  const prefix = arch.writePrefix;
  const entries: Array<[Slot, HostTensor | (() => HostTensor)]> = [...globalEntries(globalSlots(arch, spec, prefix), globals)];
  const count = "count" in blocks ? blocks.count : blocks.length;
  const check = (i: number, b: HostBlock): HostBlock => {
    // Block i is written with its own sizes (spec.blocks): a tensor of another shape would make a folder that cannot be opened.
    for (const [slot, t] of blockEntries(blockSlots(arch, spec, prefix, i), b)) {
      if (!sameShape(t.shape, slot.shape)) throw new Error(`${slot.name} has shape ${formatShape(t.shape)} but the spec gives block ${i} ${formatShape(slot.shape)}`);
    }
    return b;
  };
  // Tensors are written in name order, which keeps each block's tensors together: the last
  // block read is kept until the next one is needed, so every block is read once.
  let last: { index: number; block: HostBlock } | undefined;
  const blockAt = (i: number): HostBlock => {
    if (!("count" in blocks)) return blocks[i]!;
    if (last?.index !== i) last = { index: i, block: check(i, blocks.read(i)) };
    return last.block;
  };
  for (let i = 0; i < count; i++) {
    const slots = blockSlots(arch, spec, prefix, i);
    if (!("count" in blocks)) check(i, blocks[i]!);
    for (const slot of slotList(slots)) entries.push([slot, () => blockEntries(slots, blockAt(i)).find(([s]) => s.name === slot.name)![1]]);
  }

  const staging = stagingFolder(dir);
  try {
    mkdirSync(dirname(dir), { recursive: true });
    mkdirSync(staging);
    const config = { ...arch.configFromSpec(spec), torch_dtype: { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype] };
    writeNewFile(join(staging, "config.json"), JSON.stringify(config, null, 2) + "\n");
    writeSafetensors(
      join(staging, "model.safetensors"),
      entries.map(([slot, t]) => ({
        name: slot.name,
        dtype,
        // The file's shape: [out, in] for a transposed slot.
        shape: slot.transposed ? [...slot.shape].reverse() : slot.shape,
        data: {
          bytes: () => {
            const tensor = typeof t === "function" ? t() : t;
            const [rows, cols] = tensor.shape.length === 2 ? (tensor.shape as [number, number]) : [1, tensor.data.length];
            return encodeFrom(dtype, tensor.data, rows, cols, slot.transposed);
          },
        },
      })),
      { format: "pt" },
    );
    if (options.tokenizerJson) writeNewFile(join(staging, "tokenizer.json"), JSON.stringify(options.tokenizerJson));
    else if (options.tokenizerFile) copyFileSync(options.tokenizerFile, join(staging, "tokenizer.json"), constants.COPYFILE_EXCL);
    for (const [name, content] of Object.entries(options.extraFiles ?? {})) writeNewFile(join(staging, name), typeof content === "function" ? content() : content);
    writeNewFile(join(staging, OUTPUT_MARKER), markerContent(options.command ?? "evosparse", readdirSync(staging)));
    replaceDir(staging, dir, { overwrite: options.overwrite ?? false });
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    // A file-system error names the hidden staging folder: name the folder asked for instead.
    throw namedByTarget(e, staging, dir);
  }
};

export { replaceDir } from "../output/folder.ts";
