import type { GlobalSource, HostBlock, HostGlobals, ModelSpec, SourceBlock } from "../model/spec.ts";

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
  /** Every weight outside the blocks, as float32 host arrays (the whole embedding and head). */
  readGlobals(): HostGlobals;
  /** Block i as float32 host arrays in the model's layout. */
  readBlock(index: number): HostBlock;
  /**
   * Block i with its weights still in the file: each is read and converted when the decoder
   * uploads it (straight into the backend's memory where it can).
   */
  readBlockSource(index: number): SourceBlock;
  /** Starts reading block i's bytes so that readBlockSource finds them; resolves when it has. */
  prefetchBlock?(index: number): Promise<void>;
  /** The globals read piecewise: embedding rows, head chunks. */
  globalSource(): GlobalSource;
  /** The dtype the file stores the blocks' weights in: what a pruned copy is written in by default. */
  readonly storageDtype: StorageDtype;
  /** Bytes the file stores per weight (2 for F16 and BF16, 4 for F32). */
  readonly bytesPerWeight: number;
  close(): void;
}

/** Storage dtypes of safetensors that evosparse reads and writes. */
export type StorageDtype = "F32" | "F16" | "BF16";
