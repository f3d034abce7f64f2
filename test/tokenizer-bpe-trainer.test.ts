import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { brownText } from "../src/data/brown.ts";
import { TokenizerError } from "../src/errors.ts";
import { encodeWithMerges, trainByteLevelBpe } from "../src/tokenizer/bpe-trainer.ts";
import { byteLevelTokenizer, gpt2ByteToChar } from "../src/tokenizer/byte-level.ts";
import type { BpeMerge } from "../src/tokenizer/byte-level.ts";
import { huggingFaceTokenizer } from "../src/tokenizer/huggingface.ts";
import { loadLlama2cTokenizer } from "../src/tokenizer/llama2c.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import type { Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { asset, haveAssets } from "./helpers/assets.ts";

/** Compares long id lists so that a failure shows the first difference, not a diff of the whole list. */
function expectSameIds(actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  const [a, b] = [Array.from(actual), Array.from(expected)];
  let first = 0;
  while (first < a.length && first < b.length && a[first] === b[first]) first++;
  const window = (ids: number[]) => ({ at: first, length: ids.length, ids: ids.slice(first, first + 20) });
  expect(window(a)).toEqual(window(b));
}

function expectTokenizerError(run: () => unknown, pattern: RegExp): void {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(TokenizerError);
    expect((error as TokenizerError).problem).toMatch(pattern);
    return;
  }
  throw new Error("expected a TokenizerError");
}

const utf8Length = (text: string): number => Buffer.byteLength(text, "utf8");
const sumTokenBytes = (tokenizer: Tokenizer, ids: readonly number[]): number =>
  ids.reduce((sum, id) => sum + (tokenizer.tokenBytes as (id: number) => number)(id), 0);
const withoutSpecialText = (text: string): boolean => !text.includes("<|bos|>") && !text.includes("<|eos|>");

/**
 * BPE training as the textbook states it: recount every pair of every word after each
 * merge. Shares no code with the trainer under test, so agreeing with it checks the
 * incremental pair-count bookkeeping.
 */
function rescanningTrainer(text: string, vocabSize: number): BpeMerge[] {
  const byteChar = gpt2ByteToChar();
  const pretokens = text.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu) ?? [];
  let words = pretokens.map((word) => Array.from(Buffer.from(word, "utf8"), (byte) => byteChar[byte]));
  const vocab = new Set(byteChar);
  const merges: BpeMerge[] = [];
  while (vocab.size + 2 < vocabSize) {
    const counts = new Map<string, { pair: [string, string]; count: number }>();
    for (const word of words) {
      for (let i = 0; i + 1 < word.length; i++) {
        const key = JSON.stringify([word[i], word[i + 1]]);
        const entry = counts.get(key) ?? { pair: [word[i], word[i + 1]], count: 0 };
        entry.count++;
        counts.set(key, entry);
      }
    }
    let best: { pair: [string, string]; count: number } | undefined;
    for (const entry of counts.values()) {
      const [l, r] = entry.pair;
      if (best === undefined || entry.count > best.count || (entry.count === best.count && (l < best.pair[0] || (l === best.pair[0] && r < best.pair[1])))) {
        best = entry;
      }
    }
    if (best === undefined) break;
    const [left, right] = best.pair;
    if (!merges.some(([l, r]) => l === left && r === right)) merges.push([left, right]);
    vocab.add(left + right);
    words = words.map((word) => {
      const out: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (word[i] === left && word[i + 1] === right) out.push(word[i++] + right);
        else out.push(word[i]);
      }
      return out;
    });
  }
  return merges;
}

describe("byte-level BPE training on small texts", () => {
  it("follows the textbook example by hand", () => {
    // Pairs of "aaabdaaabac": aa 4, ab 2, rest 1 -> merge a+a. Then aa+a and a+b tie at 2
    // and "a" sorts before "aa". Then aa+ab (2). Then four pairs tie at 1; a+c sorts first.
    const { merges, tokenizerJson } = trainByteLevelBpe("aaabdaaabac", 262);
    expect(merges).toEqual([
      ["a", "a"],
      ["a", "b"],
      ["aa", "ab"],
      ["a", "c"],
    ]);
    const tokenizer = huggingFaceTokenizer(tokenizerJson, undefined, "hand.json");
    const ids = [260, 100, 260, 261]; // aaab d aaab ac
    expect(tokenizer.encode("aaabdaaabac")).toEqual(ids);
    expectSameIds(encodeWithMerges("aaabdaaabac", merges), ids);
  });

  it("never merges across GPT-2's word boundaries and keeps a space with the word after it", () => {
    // Words "ab" "." "ab" "." " ab" "." " ab": the only pairs are a+b (4) and Ġ+a, then Ġ+ab (2);
    // b+. and .+a would be frequent in unsplit text.
    expect(trainByteLevelBpe("ab.ab. ab. ab", 300).merges).toEqual([
      ["a", "b"],
      ["Ġ", "ab"],
    ]);
  });

  it("stops early when the text has no pair left", () => {
    const { merges, tokenizerJson } = trainByteLevelBpe("ab", 1000);
    expect(merges).toEqual([["a", "b"]]);
    expect(huggingFaceTokenizer(tokenizerJson, undefined, "small.json").vocabSize).toBe(259);
    expect(trainByteLevelBpe("", 300).merges).toEqual([]);
  });

  it("gives the same merges as recounting every pair after each merge", () => {
    const piece = fc.constantFrom("a", "b", "ab", "ba", " ", "  ", "\n", "é", "'s", "1", "!", "aa");
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 60 }), fc.integer({ min: 258, max: 290 }), (pieces, vocabSize) => {
        const text = pieces.join("");
        expect(trainByteLevelBpe(text, vocabSize).merges).toEqual(rescanningTrainer(text, vocabSize));
      }),
      { numRuns: 300 },
    );
  });

  it("rejects a vocabulary size that cannot hold the bytes and special tokens", () => {
    for (const size of [0, 100, 257, 300.5, Number.NaN]) expectTokenizerError(() => trainByteLevelBpe("text", size), /vocabulary size/);
  });

  it("rejects merges that join tokens no earlier merge made", () => {
    expectTokenizerError(() => encodeWithMerges("abc", [["ab", "c"]]), /merge 0 .*no earlier merge/);
  });
});

describe("byte-level BPE trained on real text", () => {
  const sample = brownText("calibration").slice(0, 200_000);
  const { merges, tokenizerJson } = trainByteLevelBpe(sample, 512);
  const tokenizer = huggingFaceTokenizer(tokenizerJson, undefined, "trained tokenizer.json");
  const unicodeText = fc.oneof(fc.string({ unit: "binary", maxLength: 120 }), fc.string({ unit: "grapheme", maxLength: 120 }));
  const excerpt = fc
    .tuple(fc.nat({ max: sample.length - 1 }), fc.integer({ min: 0, max: 300 }))
    .map(([start, length]) => sample.slice(start, start + length));

  it("is deterministic", () => {
    const again = trainByteLevelBpe(sample, 512);
    expect(again.merges).toEqual(merges);
    expect(again.tokenizerJson).toEqual(tokenizerJson);
  });

  it("has contiguous ids and loads from a file as a tokenizer of the asked size", () => {
    expect(merges.length).toBe(512 - 258);
    const vocab = (tokenizerJson as { model: { vocab: Record<string, number> } }).model.vocab;
    const ids = [...Object.values(vocab), 256, 257].sort((a, b) => a - b);
    expect(ids).toEqual(Array.from({ length: 512 }, (_, id) => id));
    const folder = mkdtempSync(join(tmpdir(), "bpe-"));
    writeFileSync(join(folder, "tokenizer.json"), JSON.stringify(tokenizerJson));
    const loaded = loadTokenizer(folder);
    expect([loaded.vocabSize, loaded.bosId, loaded.eosId]).toEqual([512, 256, 257]);
    const text = sample.slice(0, 2000);
    expect(loaded.encode(text)).toEqual(tokenizer.encode(text));
  });

  it("decodes any text back from its tokens", () => {
    fc.assert(
      fc.property(fc.oneof(unicodeText, excerpt), (text) => {
        fc.pre(withoutSpecialText(text));
        expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
      }),
      { numRuns: 400 },
    );
  });

  it("needs strictly fewer tokens for real text as merges are added", () => {
    const text = brownText("validation").slice(0, 50_000);
    const counts = [0, 1, 2, 4, 8, 16, 32, 64, 128, 200, merges.length].map((k) => encodeWithMerges(text, merges.slice(0, k)).length);
    expect(counts[0]).toBe(utf8Length(text));
    for (let i = 1; i < counts.length; i++) expect(counts[i]).toBeLessThan(counts[i - 1]);
  });

  it("encodes exactly as the library does, on a held-out Brown part", () => {
    const text = brownText("validation");
    expect(text.length).toBeGreaterThan(250_000);
    expectSameIds(encodeWithMerges(text, merges), tokenizer.encode(text));
  });

  it("encodes exactly as the library does, on any text, special-token text included", () => {
    const special = fc.constantFrom("<|bos|>", "<|eos|>", "<|bos", "|>");
    const mixed = fc.array(fc.oneof(unicodeText, excerpt, special), { maxLength: 6 }).map((parts) => parts.join(""));
    fc.assert(
      fc.property(fc.oneof(mixed, fc.string({ unit: fc.constantFrom(" ", "e", "t", "\n", "é"), maxLength: 400 })), (text) => {
        expectSameIds(encodeWithMerges(text, merges), tokenizer.encode(text));
      }),
      { numRuns: 400 },
    );
  });

  it("counts the bytes behind every token", () => {
    expect(tokenizer.tokenBytes?.(256)).toBe(0);
    expect(tokenizer.tokenBytes?.(257)).toBe(0);
    expect(tokenizer.tokenBytes?.(0x41)).toBe(1);
    expectTokenizerError(() => tokenizer.tokenBytes?.(512), /not in the vocabulary/);
    for (const counted of [tokenizer, byteLevelTokenizer()]) {
      fc.assert(
        fc.property(fc.oneof(unicodeText, excerpt), (text) => {
          fc.pre(withoutSpecialText(text));
          expect(sumTokenBytes(counted, counted.encode(text))).toBe(utf8Length(text));
        }),
        { numRuns: 300 },
      );
    }
    expect(sumTokenBytes(tokenizer, tokenizer.encode("<|bos|>ab<|eos|>"))).toBe(2);
  });
});

describe("byte-level BPE at the default model's scale", () => {
  it("learns 1024 tokens from the Brown train part that compress held-out text", () => {
    const train = brownText("train");
    const { merges } = trainByteLevelBpe(train, 1024);
    const ids = encodeWithMerges(train, merges);
    const test = brownText("test");
    const bytesPerToken = utf8Length(test) / encodeWithMerges(test, merges).length;
    expect(merges.length).toBe(1024 - 258);
    expect(ids.length).toBeLessThan(utf8Length(train) / 2);
    expect(bytesPerToken).toBeGreaterThan(2);
  });
});

describe.skipIf(!haveAssets)("token bytes of the llama2.c tokenizer", () => {
  const tokenizer = haveAssets ? loadLlama2cTokenizer(asset("models", "stories260K", "tok512.bin")) : undefined;

  it("counts the dummy-prefix space, byte tokens as one byte, and nothing for <unk>, BOS and EOS", () => {
    const counted = tokenizer as Tokenizer;
    expect([0, 1, 2].map((id) => counted.tokenBytes?.(id))).toEqual([0, 0, 0]);
    expect(counted.tokenBytes?.(3 + 0xe4)).toBe(1);
    expectTokenizerError(() => counted.tokenBytes?.(512), /outside the vocabulary/);
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: "binary", maxLength: 60 }), fc.string({ unit: "grapheme", maxLength: 60 })), (text) => {
        fc.pre(text.length > 0);
        expect(sumTokenBytes(counted, counted.encode(text))).toBe(utf8Length(` ${text}`));
      }),
      { numRuns: 300 },
    );
    expect(counted.encode("")).toEqual([]);
  });
});
