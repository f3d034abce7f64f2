import { statSync } from "node:fs";
import { join } from "node:path";
import { TokenizerError } from "../errors.ts";
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
  /**
   * The model's vocabulary size. A llama2.c tokenizer.bin must hold exactly this many
   * tokens; a tokenizer.json may hold fewer (models pad their embeddings), and one that
   * holds more may not encode text to an id the model lacks.
   */
  readonly vocabSize?: number;
}

/**
 * Loads a Hugging Face tokenizer.json or a llama2.c tokenizer.bin, told apart by content
 * (a JSON document starts with "{", a llama2.c file with a small binary int32).
 * A folder is taken to hold a tokenizer.json.
 */
export function loadTokenizer(path: string, options: LoadTokenizerOptions = {}): Tokenizer {
  const file = isDirectory(path) ? join(path, "tokenizer.json") : path;
  if (!looksLikeJson(file)) return loadLlama2cTokenizer(file, options.vocabSize);
  const tokenizer = loadHuggingFaceTokenizer(file);
  const modelVocab = options.vocabSize;
  return modelVocab === undefined || tokenizer.vocabSize <= modelVocab ? tokenizer : withinVocabulary(tokenizer, modelVocab, file);
}

/**
 * A tokenizer larger than the model's vocabulary (often only by added special tokens)
 * is usable as long as the text never encodes to an id the model lacks; the first one
 * that does is a TokenizerError saying the vocabularies differ. One pass over the ids.
 */
function withinVocabulary(tokenizer: Tokenizer, modelVocab: number, file: string): Tokenizer {
  // The Hugging Face tokenizer is a plain object of closures: a copy with its own encode.
  const encode = tokenizer.encode.bind(tokenizer);
  return {
    ...tokenizer,
    encode(text: string): number[] {
      const ids = encode(text);
      for (const id of ids) {
        if (id >= modelVocab) {
          throw new TokenizerError({
            file,
            problem: `holds ${tokenizer.vocabSize} tokens but the model has a vocabulary of ${modelVocab}: the text encodes to token id ${id}, which the model lacks`,
          });
        }
      }
      return ids;
    },
  };
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
