import type { Rng } from "../rng.ts";

/**
 * Training batches: `batch` windows of seqlen + 1 tokens at uniformly random offsets of
 * the token stream; inputs are the first seqlen tokens, targets the next token at each
 * position. The offsets come from the trainer's seeded stream, so a seed fixes every batch.
 */
export const sampleBatch = (
  tokens: Int32Array | Uint8Array,
  batch: number,
  seqlen: number,
  rng: Rng,
): { ids: Int32Array; targets: Int32Array } => {
  if (tokens.length < seqlen + 1) throw new RangeError(`need at least ${seqlen + 1} tokens, have ${tokens.length}`);
  const ids = new Int32Array(batch * seqlen);
  const targets = new Int32Array(batch * seqlen);
  for (let b = 0; b < batch; b++) {
    const start = rng.int(tokens.length - seqlen);
    for (let t = 0; t < seqlen; t++) {
      ids[b * seqlen + t] = tokens[start + t]!;
      targets[b * seqlen + t] = tokens[start + t + 1]!;
    }
  }
  return { ids, targets };
};
