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

/**
 * A tokenizer.json whose token ids are the UTF-8 bytes of the text (id == byte value),
 * plus BOS 256 and EOS 257. It is a GPT-2 style byte-level BPE with no merges: the
 * ByteLevel pre-tokenizer without its splitting regex turns the whole text into one
 * word of byte characters, and with no merges each character stays its own token.
 * The two special tokens are added tokens, so their literal text "<|bos|>" / "<|eos|>"
 * in an input is read as the special token, as in any Hugging Face tokenizer.
 */
export function byteLevelTokenizerJson(): object {
  const vocab: Record<string, number> = {};
  gpt2ByteToChar().forEach((char, byte) => {
    vocab[char] = byte;
  });
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
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
      merges: [],
    },
  };
}

/** The byte-level tokenizer, ready to use without a file. */
export function byteLevelTokenizer(): Tokenizer {
  return huggingFaceTokenizer(byteLevelTokenizerJson(), undefined, "byte-level tokenizer.json");
}
