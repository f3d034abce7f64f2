import type { HostBlock, HostGlobals, ModelSpec } from "../model/spec.ts";

/**
 * An opened checkpoint. Opening validates names, dtypes and shapes from the headers
 * alone; weights are read from disk only when a block (or the globals) is asked for,
 * so a model larger than memory can be streamed block by block.
 */
export interface Checkpoint {
  /** The file or folder the user named. */
  readonly path: string;
  readonly format: "huggingface" | "llama2c";
  readonly spec: ModelSpec;
  /** Tokenizer file found with the checkpoint (tokenizer.json or a llama2.c tokenizer.bin). */
  readonly tokenizerPath?: string;
  readGlobals(): HostGlobals;
  readBlock(index: number): HostBlock;
  close(): void;
}

/** Storage dtypes of safetensors that evosparse reads and writes. */
export type StorageDtype = "F32" | "F16" | "BF16";
