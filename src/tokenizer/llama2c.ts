import { TokenizerError } from "../errors.ts";
import { greedyMerge } from "./greedy-merge.ts";
import { readTokenizerFile } from "./read-file.ts";
import type { Tokenizer } from "./tokenizer.ts";

const BOS_ID = 1;
const EOS_ID = 2;
/** llama2.c maps a byte b that no token spells to id b + 3 (after <unk>, <s>, </s>). */
const BYTE_FALLBACK_OFFSET = 3;
const MIN_VOCAB = BYTE_FALLBACK_OFFSET + 256;
/** run.c starts its best score at -1e10 in a float, so no pair scoring at or below it ever merges. */
const MERGE_SCORE_FLOOR = Math.fround(-1e10);
/** run.c reads byte tokens with sscanf("<0x%02hhX>"), which needs one or two hex digits and nothing after. */
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{1,2})/;
const utf8Decoder = new TextDecoder();

/**
 * A llama2.c tokenizer.bin. Token texts are kept as byte strings (one char per byte,
 * i.e. latin1) because run.c compares and concatenates raw bytes, and merged byte
 * tokens need not be valid UTF-8.
 */
export class Llama2cTokenizer implements Tokenizer {
  readonly bosId = BOS_ID;
  readonly eosId = EOS_ID;
  readonly vocabSize: number;
  private readonly idOfText = new Map<string, number>();
  private readonly byteIds = new Int32Array(256);
  private readonly pieces: Uint8Array[];
  private readonly piecesAfterBos: Uint8Array[];
  private readonly mergeCache = new Map<number, number>();

  constructor(
    readonly file: string,
    readonly maxTokenLength: number,
    /** Token texts, one char per byte. */
    readonly texts: readonly string[],
    readonly scores: Float32Array,
  ) {
    this.vocabSize = texts.length;
    // Later duplicates lose: run.c's bsearch over a sorted copy returns one of them unpredictably.
    texts.forEach((text, id) => {
      if (!this.idOfText.has(text)) this.idOfText.set(text, id);
    });
    for (let byte = 0; byte < 256; byte++) this.byteIds[byte] = this.idOfText.get(String.fromCharCode(byte)) ?? -1;
    this.pieces = texts.map((text) => pieceBytes(text));
    this.piecesAfterBos = texts.map((text) => pieceBytes(text.startsWith(" ") ? text.slice(1) : text));
  }

  /**
   * run.c's encode() without BOS/EOS: dummy prefix " ", code points or byte fallback, then
   * greedy merges. A NUL character, where run.c's C string would end, is encoded as a byte.
   */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    const bytes = Buffer.from(text, "utf8");
    const initial: number[] = [this.lookupOrBytes(" ", [0x20])[0]];
    // run.c's loop: a code point is a lead byte plus the continuation bytes after it, at most 4 bytes.
    let length = 0;
    for (let at = 0; at < bytes.length; at++) {
      if ((bytes[at] & 0xc0) !== 0x80) length = 0;
      length++;
      const following = at + 1 < bytes.length ? bytes[at + 1] : 0;
      if ((following & 0xc0) === 0x80 && length < 4) continue;
      if (length === 1) {
        const id = this.byteIds[bytes[at]];
        initial.push(id >= 0 ? id : bytes[at] + BYTE_FALLBACK_OFFSET);
      } else {
        const group = bytes.subarray(at + 1 - length, at + 1);
        for (const id of this.lookupOrBytes(group.toString("latin1"), group)) initial.push(id);
      }
      length = 0;
    }
    return greedyMerge(initial, (left, right) => this.mergeOf(left, right), this.scores);
  }

  /** The bytes run.c prints for `id` after `prev`: no leading space after BOS, <0xXX> as the raw byte. */
  pieceBytes(prev: number, id: number): Uint8Array {
    this.checkId(id);
    return prev === BOS_ID ? this.piecesAfterBos[id] : this.pieces[id];
  }

  /** A lone byte token that is part of a multi-byte character comes out as U+FFFD here; pieceBytes keeps it exact. */
  piece(prev: number, id: number): string {
    return utf8Decoder.decode(this.pieceBytes(prev, id));
  }

  /**
   * The bytes of text behind token `id`: its piece as printed mid-text, so a leading
   * space (the dummy prefix, or the space before a word) counts, and a <0xXX> token is
   * one byte. <unk>, BOS and EOS stand for no text.
   */
  tokenBytes(id: number): number {
    this.checkId(id);
    return id < BYTE_FALLBACK_OFFSET ? 0 : this.pieces[id].length;
  }

  /**
   * The text of the pieces run.c would print for these ids, with BOS and EOS themselves
   * left out (run.c never prints them). A leading BOS therefore gives back the text as
   * encoded: decode([bosId, ...encode(s)]) === s, the dummy prefix being stripped after BOS.
   */
  decode(ids: readonly number[]): string {
    const chunks: Uint8Array[] = [];
    let prev = -1;
    for (const id of ids) {
      this.checkId(id);
      if (id !== BOS_ID && id !== EOS_ID) chunks.push(this.pieceBytes(prev, id));
      prev = id;
    }
    return Buffer.concat(chunks).toString("utf8");
  }

  private lookupOrBytes(text: string, bytes: ArrayLike<number>): number[] {
    const id = this.idOfText.get(text);
    return id !== undefined ? [id] : Array.from(bytes, (byte) => byte + BYTE_FALLBACK_OFFSET);
  }

  private mergeOf(left: number, right: number): number {
    const key = left * this.vocabSize + right;
    let merged = this.mergeCache.get(key);
    if (merged === undefined) {
      const id = this.idOfText.get(this.texts[left] + this.texts[right]);
      // A score of NaN fails run.c's `>` just as one at or below the floor does.
      merged = id !== undefined && this.scores[id] > MERGE_SCORE_FLOOR ? id : -1;
      this.mergeCache.set(key, merged);
    }
    return merged;
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError({ file: this.file, problem: `token id ${id} is outside the vocabulary of ${this.vocabSize} tokens` });
    }
  }
}

function pieceBytes(text: string): Uint8Array {
  const byteToken = BYTE_TOKEN.exec(text);
  return byteToken ? Uint8Array.of(parseInt(byteToken[1], 16)) : Buffer.from(text, "latin1");
}

/** Reads a llama2.c tokenizer.bin; `vocabSize` comes from the model header, without it the file is read to its end. */
export function loadLlama2cTokenizer(file: string, vocabSize?: number): Llama2cTokenizer {
  return parseLlama2cTokenizer(readTokenizerFile(file), file, vocabSize);
}

/**
 * Layout: int32 max_token_length, then per token float32 score, int32 byte length and
 * the bytes, all little-endian.
 */
export function parseLlama2cTokenizer(bytes: Uint8Array, file: string, vocabSize?: number): Llama2cTokenizer {
  const fail = (problem: string): never => {
    throw new TokenizerError({ file, problem });
  };
  if (vocabSize !== undefined && !(Number.isInteger(vocabSize) && vocabSize > 0)) {
    fail(`the vocabulary size ${vocabSize} given by the model is not a positive integer`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4) fail(`is ${bytes.byteLength} bytes long, too short for a llama2.c tokenizer header`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength < 0) fail(`has a negative max_token_length (${maxTokenLength}); not a llama2.c tokenizer`);

  // The whole file is read, whatever the model says: a file holding another number of
  // tokens than the model's vocabulary is a mismatch to report as such, not a truncation.
  const texts: string[] = [];
  const scores: number[] = [];
  let offset = 4;
  while (offset < bytes.byteLength) {
    const token = texts.length;
    // Bytes that do not form whole tokens after the model's vocabulary are left over, not a cut.
    const broken = (problem: string): never =>
      vocabSize !== undefined && token >= vocabSize
        ? fail(`has ${bytes.byteLength - offset} bytes after the model's vocabulary of ${vocabSize} tokens (from byte ${offset}) that do not form whole tokens: not this model's tokenizer`)
        : fail(problem);
    if (offset + 8 > bytes.byteLength) {
      broken(`is truncated: token ${token} starts at byte ${offset} but the file ends at byte ${bytes.byteLength}` + expected(vocabSize));
    }
    const score = view.getFloat32(offset, true);
    const length = view.getInt32(offset + 4, true);
    if (length < 0) broken(`token ${token} has a negative length (${length}); not a llama2.c tokenizer`);
    const start = offset + 8;
    if (start + length > bytes.byteLength) {
      broken(`is truncated: token ${token} needs ${length} bytes from byte ${start} but the file ends at byte ${bytes.byteLength}` + expected(vocabSize));
    }
    texts.push(Buffer.from(bytes.buffer, bytes.byteOffset + start, length).toString("latin1"));
    scores.push(score);
    offset = start + length;
  }
  if (vocabSize !== undefined && texts.length !== vocabSize) {
    fail(`holds ${texts.length} tokens but the model has a vocabulary of ${vocabSize}`);
  }
  if (texts.length < MIN_VOCAB) {
    fail(`holds ${texts.length} tokens; a llama2.c tokenizer needs at least ${MIN_VOCAB} (3 special tokens and 256 byte tokens)`);
  }
  return new Llama2cTokenizer(file, maxTokenLength, texts, Float32Array.from(scores));
}

function expected(vocabSize: number | undefined): string {
  return vocabSize === undefined ? "" : ` (the model has a vocabulary of ${vocabSize} tokens)`;
}
