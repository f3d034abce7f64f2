import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { TokenizerError } from "../errors.ts";
import { splitLongWordsSafely } from "./bpe-split.ts";
import { gpt2CharToByte } from "./byte-level.ts";
import { describeCause, readTokenizerFile } from "./read-file.ts";
import type { Tokenizer } from "./tokenizer.ts";

type Json = Record<string, unknown>;

/** The library calls used here; its published types do not resolve under NodeNext module resolution. */
interface LibraryTokenizer {
  readonly model: unknown;
  encode(text: string, options: { add_special_tokens: boolean }): { ids: (number | undefined)[] };
  decode(ids: number[]): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_vocab(withAddedTokens: boolean): Map<unknown, number>;
  get_added_tokens_decoder(): Map<number, { readonly content: string; readonly special: boolean }>;
}

const BOS_NAMES = ["<s>", "<|begin_of_text|>", "<|bos|>", "<bos>", "<|startoftext|>", "<|endoftext|>"];
const EOS_NAMES = ["</s>", "<|end_of_text|>", "<|eos|>", "<eos>", "<|endoftext|>"];

/** A tokenizer.json, with the tokenizer_config.json beside it when there is one. */
export function loadHuggingFaceTokenizer(file: string): Tokenizer {
  const tokenizerJson = parseJsonFile(file);
  const configFile = join(dirname(file), "tokenizer_config.json");
  const config = existsSync(configFile) ? parseJsonFile(configFile) : undefined;
  return huggingFaceTokenizer(tokenizerJson, config, file);
}

/**
 * Wraps a parsed tokenizer.json. `file` names the source in errors. Without a config,
 * decoding does not apply transformers' "clean up tokenization spaces" rewriting (the
 * tokenizers library itself never does it), so that decoding gives back what was encoded.
 */
export function huggingFaceTokenizer(tokenizerJson: unknown, config: Json | undefined, file: string): Tokenizer {
  const fail = (problem: string): never => {
    throw new TokenizerError({ file, problem });
  };
  if (!isObject(tokenizerJson)) return fail("is not a tokenizer.json: the document is not a JSON object");
  const model = tokenizerJson.model;
  if (!isObject(model)) return fail('is not a tokenizer.json: it has no "model" object');
  const addedTokens = tokenizerJson.added_tokens ?? [];
  if (!Array.isArray(addedTokens)) return fail('has an "added_tokens" that is not a list');
  const completed: Json = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...tokenizerJson, added_tokens: addedTokens };
  const effectiveConfig: Json = { clean_up_tokenization_spaces: false, ...(config ?? {}) };

  let inner: LibraryTokenizer;
  try {
    inner = new HfTokenizer(completed, effectiveConfig) as LibraryTokenizer;
  } catch (cause) {
    return fail(`cannot be loaded as a tokenizer (model type ${JSON.stringify(model.type ?? "unspecified")}): ${describeCause(cause)}`);
  }
  try {
    splitLongWordsSafely(inner.model);
  } catch {
    // The split only speeds up long words; a model it cannot analyse is used as the library built it.
  }
  const vocabSize = countVocab(inner);
  if (vocabSize === 0) return fail("has an empty vocabulary");
  const bosId = specialId(inner, config, "bos_token", [templateBos(tokenizerJson.post_processor), ...BOS_NAMES]);
  const eosId = specialId(inner, config, "eos_token", EOS_NAMES);

  const libraryCall = <T>(what: string, run: () => T): T => {
    try {
      return run();
    } catch (cause) {
      if (cause instanceof TokenizerError) throw cause;
      return fail(`cannot ${what}: ${describeCause(cause)}`);
    }
  };
  const checkIds = (ids: readonly number[]): void => {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize || inner.id_to_token(id) === undefined) {
        fail(`token id ${id} is not in the vocabulary of ${vocabSize} tokens`);
      }
    }
  };

  const byteCounts = isByteLevel(tokenizerJson.decoder) ? byteLevelTokenBytes(inner, vocabSize) : undefined;

  return {
    vocabSize,
    bosId,
    eosId,
    ...(byteCounts && {
      tokenBytes(id: number): number {
        checkIds([id]);
        return byteCounts[id];
      },
    }),
    encode(text: string): number[] {
      const ids = libraryCall("encode the text", () => inner.encode(text, { add_special_tokens: false }).ids);
      // The library maps a token it cannot find to an undefined id when the model has no unk token.
      if (!ids.every((id): id is number => typeof id === "number")) {
        return fail("cannot encode the text: the vocabulary has no token for part of it and no unknown token");
      }
      return ids;
    },
    decode(ids: readonly number[]): string {
      if (ids.length === 0) return "";
      checkIds(ids);
      return libraryCall("decode the ids", () => inner.decode([...ids]));
    },
  };
}

function parseJsonFile(file: string): Json {
  const text = readTokenizerFile(file).toString("utf8");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new TokenizerError({ file, problem: `is not valid JSON (${describeCause(cause)})` });
  }
  if (!isObject(parsed)) throw new TokenizerError({ file, problem: "is not a JSON object" });
  return parsed;
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A ByteLevel decoder, alone or in a Sequence, means that token strings spell bytes through GPT-2's byte map. */
function isByteLevel(decoder: unknown): boolean {
  if (!isObject(decoder)) return false;
  if (decoder.type === "Sequence" && Array.isArray(decoder.decoders)) return decoder.decoders.some(isByteLevel);
  return decoder.type === "ByteLevel";
}

/**
 * Bytes per token id of a byte-level tokenizer: one per character of a model token,
 * none for a special token, and the UTF-8 length of the literal text of other added
 * tokens (they are matched in the raw text and decoded as themselves).
 */
function byteLevelTokenBytes(inner: LibraryTokenizer, vocabSize: number): Int32Array {
  const charToByte = gpt2CharToByte();
  const added = inner.get_added_tokens_decoder();
  const counts = new Int32Array(vocabSize);
  for (let id = 0; id < vocabSize; id++) {
    const addedToken = added.get(id);
    if (addedToken !== undefined) {
      counts[id] = addedToken.special ? 0 : Buffer.byteLength(addedToken.content, "utf8");
      continue;
    }
    // A character outside the byte map never comes out of the ByteLevel pre-tokenizer; it is counted as its own text.
    for (const char of inner.id_to_token(id) ?? "") counts[id] += charToByte.has(char) ? 1 : Buffer.byteLength(char, "utf8");
  }
  return counts;
}

function countVocab(inner: LibraryTokenizer): number {
  let largest = -1;
  for (const id of inner.get_vocab(true).values()) largest = Math.max(largest, id);
  return largest + 1;
}

/**
 * The id of a special token: the config's own choice wins (an explicit null there means
 * the model has none), else the first known name that the vocabulary holds.
 */
function specialId(inner: LibraryTokenizer, config: Json | undefined, key: string, candidates: readonly (string | undefined)[]): number | undefined {
  if (config !== undefined && key in config) {
    const configured = config[key];
    const content = isObject(configured) ? configured.content : configured;
    return typeof content === "string" ? inner.token_to_id(content) : undefined;
  }
  for (const name of candidates) {
    if (name === undefined) continue;
    const id = inner.token_to_id(name);
    if (id !== undefined) return id;
  }
  return undefined;
}

/** The special token that a TemplateProcessing post-processor puts before a single sequence (the BOS it adds). */
function templateBos(postProcessor: unknown): string | undefined {
  if (!isObject(postProcessor)) return undefined;
  if (postProcessor.type === "Sequence" && Array.isArray(postProcessor.processors)) {
    for (const processor of postProcessor.processors) {
      const found = templateBos(processor);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (postProcessor.type !== "TemplateProcessing" || !Array.isArray(postProcessor.single)) return undefined;
  const first: unknown = postProcessor.single[0];
  if (!isObject(first) || !isObject(first.SpecialToken)) return undefined;
  const id = first.SpecialToken.id;
  return typeof id === "string" ? id : undefined;
}
