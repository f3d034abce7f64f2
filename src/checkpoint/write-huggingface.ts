import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { HostBlock, HostGlobals, HostTensor, ModelSpec } from "../model/spec.ts";
import { architectureFor } from "./architectures/index.ts";
import { transpose2d } from "./host.ts";
import { blockEntries, blockSlots, globalEntries, globalSlots, type Slot } from "./layout.ts";
import { writeSafetensors } from "./safetensors.ts";
import type { StorageDtype } from "./types.ts";

export interface WriteOptions {
  readonly dtype?: StorageDtype;
  /** tokenizer.json content to write, or a file to copy. */
  readonly tokenizerJson?: object;
  readonly tokenizerFile?: string;
  /** Extra files (name -> content) written into the folder, e.g. a training log. */
  readonly extraFiles?: Readonly<Record<string, string>>;
}

/**
 * Writes a Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
 * The folder is assembled under a temporary name beside the target and renamed into
 * place at the end, so an interrupted write never leaves a folder that looks complete.
 */
export const writeHuggingFace = (
  dir: string,
  spec: ModelSpec,
  globals: HostGlobals,
  blocks: readonly HostBlock[],
  options: WriteOptions = {},
): void => {
  const arch = architectureFor(spec.family);
  if (!arch) throw new Error(`cannot write family ${spec.family} as a Hugging Face checkpoint`);
  const dtype = options.dtype ?? "F32";
  const prefix = arch.writePrefix;
  const entries: Array<[Slot, HostTensor]> = [...globalEntries(globalSlots(arch, spec, prefix), globals)];
  blocks.forEach((b, i) => entries.push(...blockEntries(blockSlots(arch, spec, prefix, i), b)));

  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const staging = join(parent, `.tmp-${basename(dir)}-${process.pid}-${Date.now()}`);
  mkdirSync(staging);
  try {
    const config = { ...arch.configFromSpec(spec), torch_dtype: { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype] };
    writeFileSync(join(staging, "config.json"), JSON.stringify(config, null, 2) + "\n");
    writeSafetensors(
      join(staging, "model.safetensors"),
      entries.map(([slot, t]) => {
        const stored = slot.transposed ? transpose2d(t) : t;
        return { name: slot.name, dtype, shape: stored.shape, data: stored.data };
      }),
      { format: "pt" },
    );
    if (options.tokenizerJson) writeFileSync(join(staging, "tokenizer.json"), JSON.stringify(options.tokenizerJson));
    else if (options.tokenizerFile) copyFileSync(options.tokenizerFile, join(staging, "tokenizer.json"));
    for (const [name, content] of Object.entries(options.extraFiles ?? {})) writeFileSync(join(staging, name), content);
    replaceDir(staging, dir);
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    throw e;
  }
};

/** Moves a finished staging folder into place, replacing an older folder of that name. */
export const replaceDir = (staging: string, dir: string): void => {
  if (existsSync(dir)) {
    const old = `${dir}.old-${process.pid}-${Date.now()}`;
    renameSync(dir, old);
    renameSync(staging, dir);
    rmSync(old, { recursive: true, force: true });
  } else {
    renameSync(staging, dir);
  }
};
