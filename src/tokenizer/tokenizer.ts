import { statSync } from "node:fs";
import { join } from "node:path";
import { loadHuggingFaceTokenizer } from "./huggingface.ts";
import { loadLlama2cTokenizer } from "./llama2c.ts";
import { readTokenizerHead } from "./read-file.ts";

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  /** Token ids of plain text, with no special tokens added. */
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
  /** The text of one token as a generator would print it after previous token `prev` (for llama2.c: strip leading space after BOS, map <0xXX> byte tokens to bytes). */
  piece?(prev: number, id: number): string;
  /**
   * How many UTF-8 bytes of the text token `id` stands for (0 for special tokens), so that
   * losses of models with different tokenizers compare per byte. Summed over encode(s)
   * it gives the byte length of s, plus the dummy-prefix space for llama2.c.
   */
  tokenBytes?(id: number): number;
}

export interface LoadTokenizerOptions {
  /** Token count of a llama2.c tokenizer.bin, known from the model header; without it the file is read to its end. */
  readonly vocabSize?: number;
}

/**
 * Loads a Hugging Face tokenizer.json or a llama2.c tokenizer.bin, told apart by content
 * (a JSON document starts with "{", a llama2.c file with a small binary int32).
 * A folder is taken to hold a tokenizer.json.
 */
export function loadTokenizer(path: string, options: LoadTokenizerOptions = {}): Tokenizer {
  const file = isDirectory(path) ? join(path, "tokenizer.json") : path;
  return looksLikeJson(file) ? loadHuggingFaceTokenizer(file) : loadLlama2cTokenizer(file, options.vocabSize);
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function looksLikeJson(file: string): boolean {
  if (file.toLowerCase().endsWith(".json")) return true;
  const head = readTokenizerHead(file, 64);
  const text = head.toString("latin1").replace(/^\xEF\xBB\xBF/, "").trimStart();
  return text.startsWith("{");
}
