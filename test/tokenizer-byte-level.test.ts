import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { byteLevelTokenizer, byteLevelTokenizerJson, gpt2ByteToChar } from "../src/tokenizer/byte-level.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { asset, haveAssets } from "./helpers/assets.ts";

/** Compares long id lists so that a failure shows the first difference, not a diff of the whole list. */
function expectSameIds(actual: readonly number[], expected: readonly number[]): void {
  let first = 0;
  while (first < actual.length && first < expected.length && actual[first] === expected[first]) first++;
  const window = (ids: readonly number[]) => ({ at: first, length: ids.length, ids: ids.slice(first, first + 20) });
  expect(window(actual)).toEqual(window(expected));
}

const utf8Bytes = (text: string): number[] => Array.from(Buffer.from(text, "utf8"));
const withoutSpecialText = (text: string): boolean => !text.includes("<|bos|>") && !text.includes("<|eos|>");

describe("byte-level tokenizer.json", () => {
  const tokenizer = byteLevelTokenizer();

  it("has 256 byte tokens plus BOS 256 and EOS 257", () => {
    expect(tokenizer.vocabSize).toBe(258);
    expect(tokenizer.bosId).toBe(256);
    expect(tokenizer.eosId).toBe(257);
  });

  it("uses a one-to-one byte-to-character map", () => {
    const chars = gpt2ByteToChar();
    expect(new Set(chars).size).toBe(256);
    expect(chars[0x41]).toBe("A");
    expect(chars[0x20]).toBe("\u0120");
  });

  it("encodes any text to exactly its UTF-8 bytes and decodes it back", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: "binary", maxLength: 200 }), fc.string({ unit: "grapheme", maxLength: 200 })), (text) => {
        fc.pre(withoutSpecialText(text));
        const ids = tokenizer.encode(text);
        expectSameIds(ids, utf8Bytes(text));
        expect(tokenizer.decode(ids)).toBe(text);
      }),
      { numRuns: 500 },
    );
  });

  it("keeps whitespace and punctuation exactly", () => {
    const text = "  a ,b . don't  \n\n\t x !? 'll \r\n";
    expect(tokenizer.encode(text)).toEqual(utf8Bytes(text));
    expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
  });

  it("adds no special tokens and decodes them as their text", () => {
    expect(tokenizer.encode("hi")).toEqual([104, 105]);
    expect(tokenizer.decode([256, 104, 105, 257])).toBe("<|bos|>hi<|eos|>");
    expect(tokenizer.decode([])).toBe("");
    // Added tokens are matched in the text, as in every Hugging Face tokenizer.
    expect(tokenizer.encode("a<|eos|>")).toEqual([97, 257]);
  });

  it("loads the same from a tokenizer.json file and from its folder", () => {
    const folder = mkdtempSync(join(tmpdir(), "bytetok-"));
    const file = join(folder, "tokenizer.json");
    writeFileSync(file, JSON.stringify(byteLevelTokenizerJson(), null, 2));
    for (const loaded of [loadTokenizer(file), loadTokenizer(folder)]) {
      expect(loaded.vocabSize).toBe(258);
      expect(loaded.bosId).toBe(256);
      expect(loaded.eosId).toBe(257);
      const text = "Ünïcödé ✓ 𝄞 text\n";
      expect(loaded.encode(text)).toEqual(utf8Bytes(text));
      expect(loaded.decode(loaded.encode(text))).toBe(text);
    }
  });

  it("encodes about 1 MB of text to its exact bytes", () => {
    const text = haveAssets
      ? readFileSync(asset("data", "wikitext-2-raw", "test.txt"), "utf8")
      : Array.from({ length: 40_000 }, (_, i) => `line ${i}: naïve café ${"word ".repeat(i % 7)}\n`).join("");
    expect(text.length).toBeGreaterThan(1_000_000);
    expectSameIds(tokenizer.encode(text), utf8Bytes(text));
  });
});
