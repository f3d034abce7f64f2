/**
 * Writes a (pruned) model as a Hugging Face folder, whatever format it was read from.
 * llama2.c models become LLaMA checkpoints: their linears take the LLaMA names, and their
 * q/k rows are already in the Hugging Face rotary layout because the llama2.c reader
 * permutes them on load. Their tokenizer.bin becomes a tokenizer.json that encodes the
 * same ids.
 */
import { readTokenizerFile } from "../tokenizer/read-file.ts";
import { Effect } from "effect";
import { DataError, isEvosparseError } from "../errors.ts";
import type { HostBlock, ModelSpec } from "../model/spec.ts";
import { llamaJsonFromLlama2c } from "../tokenizer/llama2c-json.ts";
import type { Checkpoint, StorageDtype } from "./types.ts";
import { writeHuggingFace, type BlocksToWrite } from "./write-huggingface.ts";

const LLAMA_NAMES: Readonly<Record<string, string>> = { wq: "q", wk: "k", wv: "v", wo: "o", w1: "gate", w3: "up", w2: "down" };

/** The LLaMA name of a linear of this spec (the name itself for Hugging Face models). */
export const exportedLinearName = (spec: ModelSpec, linear: string): string =>
  spec.family === "llama2c" ? (LLAMA_NAMES[linear] ?? linear) : linear;

const llamaSpec = (spec: ModelSpec): ModelSpec => ({
  ...spec,
  family: "llama",
  linears: spec.linears.map((l) => exportedLinearName(spec, l)),
  roles: { q: "q", k: "k", v: "v", o: "o", gate: "gate", up: "up", down: "down" },
});

const renameLinears = (spec: ModelSpec, block: HostBlock): HostBlock => ({
  ...block,
  linears: Object.fromEntries(Object.entries(block.linears).map(([name, l]) => [exportedLinearName(spec, name), l])),
});

export const exportHuggingFace = (
  dir: string,
  checkpoint: Checkpoint,
  blocks: BlocksToWrite,
  extraFiles: Readonly<Record<string, string | (() => string)>> = {},
  policy: {
    readonly overwrite?: boolean;
    readonly command?: string;
    /** The spec of `blocks` when they are not the checkpoint's sizes (structured pruning). */
    readonly spec?: ModelSpec;
    /** The dtype of model.safetensors (default F32). */
    readonly dtype?: StorageDtype;
  } = {},
): void => {
  const spec = policy.spec ?? checkpoint.spec;
  const tokenizer = checkpoint.tokenizerPath;
  const tokenizerOptions = !tokenizer
    ? {}
    : tokenizer.endsWith(".json")
      ? { tokenizerFile: tokenizer }
      : { tokenizerJson: llamaJsonFromLlama2c(readTokenizerFile(tokenizer)) };
  const writePolicy = {
    ...(policy.overwrite !== undefined ? { overwrite: policy.overwrite } : {}),
    ...(policy.command ? { command: policy.command } : {}),
    ...(policy.dtype ? { dtype: policy.dtype } : {}),
  };
  if (spec.family === "llama2c") {
    const renamed: BlocksToWrite =
      "count" in blocks ? { count: blocks.count, read: (i) => renameLinears(spec, blocks.read(i)) } : blocks.map((b) => renameLinears(spec, b));
    writeHuggingFace(dir, llamaSpec(spec), checkpoint.readGlobals(), renamed, { ...tokenizerOptions, extraFiles, ...writePolicy });
  } else {
    writeHuggingFace(dir, spec, checkpoint.readGlobals(), blocks, { ...tokenizerOptions, extraFiles, ...writePolicy });
  }
};

/** exportHuggingFace as an Effect for the jobs: a failure that is not already one of ours names the folder. */
export const exportHuggingFaceEffect = (...args: Parameters<typeof exportHuggingFace>) =>
  Effect.try({
    try: () => exportHuggingFace(...args),
    catch: (e) => (isEvosparseError(e) ? e : new DataError({ file: args[0], problem: `cannot be written: ${(e as Error).message}` })),
  });
