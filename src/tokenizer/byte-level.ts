import { huggingFaceTokenizer } from "./huggingface.ts";
import type { Tokenizer } from "./tokenizer.ts";

export const BYTE_LEVEL_BOS = "<|bos|>";
export const BYTE_LEVEL_EOS = "<|eos|>";
export const BYTE_LEVEL_BOS_ID = 256;
export const BYTE_LEVEL_EOS_ID = 257;
export const BYTE_LEVEL_VOCAB_SIZE = 258;

/**
 * GPT-2's reversible byte-to-character map: printable Latin-1 bytes stand for
 * themselves, the others are shifted to U+0100 and up, so that every byte is one
 * visible character that no normalizer or whitespace rule touches.
 */
export function gpt2ByteToChar(): string[] {
  const printable = (byte: number): boolean =>
    (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
  const chars: string[] = [];
  let shifted = 0;
  for (let byte = 0; byte < 256; byte++) chars.push(String.fromCharCode(printable(byte) ? byte : 256 + shifted++));
  return chars;
}

/** The inverse of gpt2ByteToChar: a byte-level character back to the byte it stands for. */
export function gpt2CharToByte(): Map<string, number> {
  return new Map(gpt2ByteToChar().map((char, byte) => [char, byte]));
}

/** A BPE merge: the two token strings (byte-level characters) joined into a new token. */
export type BpeMerge = readonly [string, string];

/**
 * Token ids of a byte-level BPE: bytes 0..255, BOS 256 and EOS 257 (added tokens, so not
 * listed here), then each merge result in merge order from 258. A merge whose result was
 * already made by an earlier merge (possible: "ab"+"c" and "a"+"bc") adds no new id.
 */
export function byteLevelBpeVocab(merges: readonly BpeMerge[] = []): Map<string, number> {
  const vocab = gpt2CharToByte();
  let nextId = BYTE_LEVEL_VOCAB_SIZE;
  for (const [left, right] of merges) {
    const merged = left + right;
    if (!vocab.has(merged)) vocab.set(merged, nextId++);
  }
  return vocab;
}

/**
 * A tokenizer.json whose token ids are the UTF-8 bytes of the text (id == byte value),
 * plus BOS 256 and EOS 257, and with `merges` the tokens they build from 258 on.
 * It is a GPT-2 style byte-level BPE: the ByteLevel pre-tokenizer splits the text with
 * GPT-2's regex into words of byte characters, and BPE joins characters of a word only
 * as the merges allow; with no merges each byte stays its own token.
 * The two special tokens are added tokens, so their literal text "<|bos|>" / "<|eos|>"
 * in an input is read as the special token, as in any Hugging Face tokenizer.
 * Merges are written as [left, right] pairs, the format of current tokenizer.json files.
 */
/** A tokenizer.json `added_tokens` entry for a special token, matched verbatim. */
export const specialAddedToken = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

export function byteLevelTokenizerJson(merges: readonly BpeMerge[] = []): object {
  const vocab = Object.fromEntries(byteLevelBpeVocab(merges));
  const special = specialAddedToken;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(BYTE_LEVEL_BOS_ID, BYTE_LEVEL_BOS), special(BYTE_LEVEL_EOS_ID, BYTE_LEVEL_EOS)],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([left, right]) => [left, right]),
    },
  };
}

/** The byte-level tokenizer, ready to use without a file. */
export function byteLevelTokenizer(): Tokenizer {
  return huggingFaceTokenizer(byteLevelTokenizerJson(), undefined, "byte-level tokenizer.json");
}
