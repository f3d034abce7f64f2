import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Effect } from "effect";
import { CheckpointError } from "../errors.ts";
import { openHuggingFace } from "./huggingface.ts";
import { openLlama2c } from "./llama2c.ts";
import type { BlockSource } from "../model/decoder.ts";
import type { Checkpoint } from "./types.ts";

export interface OpenOptions {
  /** A tokenizer file that overrides the one found beside the checkpoint. */
  readonly tokenizer?: string;
}

/**
 * `--model` accepts a Hugging Face folder, a llama2.c .bin file, or a folder holding one
 * llama2.c checkpoint (with its tokenizer beside it).
 */
export const openCheckpointSync = (path: string, options: OpenOptions = {}): Checkpoint => {
  if (!existsSync(path)) throw new CheckpointError({ file: path, problem: "no such file or folder" });
  const withTokenizer = (c: Checkpoint): Checkpoint =>
    options.tokenizer ? { ...c, tokenizerPath: options.tokenizer } : c;
  if (statSync(path).isFile()) return openLlama2c(path, options.tokenizer);
  if (existsSync(join(path, "config.json"))) return withTokenizer(openHuggingFace(path));
  const bins = readdirSync(path).filter((n) => n.endsWith(".bin") && !/^tok.*\.bin$/.test(n));
  if (bins.length === 1) return openLlama2c(join(path, bins[0]!), options.tokenizer);
  throw new CheckpointError({
    file: path,
    problem:
      bins.length === 0
        ? "neither a Hugging Face folder (config.json) nor a folder with a llama2.c checkpoint (.bin)"
        : `holds several llama2.c checkpoints (${bins.join(", ")}): name the file`,
  });
};

/** The checkpoint as a scoped resource: its file handles close when the scope ends. */
export const openCheckpoint = (path: string, options: OpenOptions = {}) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => openCheckpointSync(path, options),
      catch: (e) => (e instanceof CheckpointError ? e : new CheckpointError({ file: path, problem: String((e as Error).message ?? e) })),
    }),
    (c) => Effect.sync(() => c.close()),
  );

/** The checkpoint's blocks as the decoder streams them: read when uploaded, the next one read ahead. */
export const blockSourceOf = (c: Checkpoint): BlockSource => ({
  numBlocks: c.spec.numLayers,
  load: (i) => c.readBlockSource(i),
  ...(c.prefetchBlock ? { prefetch: (i: number) => c.prefetchBlock!(i) } : {}),
});
