import type { Tokenizer } from "../tokenizer/tokenizer.ts";

export interface NextTokenModel {
  logitsAt(ids: Int32Array, position?: number): Promise<Float32Array>;
}

const argmax = (xs: Float32Array): number => {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
};

/**
 * Greedy decoding as llama2.c's `generate` does it: the prompt (BOS first) is forced,
 * then the most likely token, for `steps` positions in all; a BOS ends the text. Returns
 * the printed text, piece by piece, so it can be compared with llama2.c's output.
 */
export const greedyText = async (model: NextTokenModel, tokenizer: Tokenizer, promptIds: readonly number[], steps: number): Promise<string> => {
  const ids = [...promptIds];
  let text = "";
  for (let pos = 0; pos < steps; pos++) {
    const next = pos < promptIds.length - 1 ? promptIds[pos + 1]! : argmax(await model.logitsAt(Int32Array.from(ids), pos));
    if (next === tokenizer.bosId) break;
    text += tokenizer.piece ? tokenizer.piece(ids[pos]!, next) : tokenizer.decode([next]);
    if (pos >= promptIds.length - 1) ids.push(next);
  }
  return text;
};
