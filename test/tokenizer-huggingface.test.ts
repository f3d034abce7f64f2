import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Tokenizer as LibraryTokenizer } from "@huggingface/tokenizers";
import { TokenizerError } from "../src/errors.ts";
import { huggingFaceTokenizer, loadHuggingFaceTokenizer } from "../src/tokenizer/huggingface.ts";
import { loadLlama2cTokenizer } from "../src/tokenizer/llama2c.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { asset, haveAssets } from "./helpers/assets.ts";
import { expectTaggedError } from "./helpers/errors.ts";
import { specialAddedToken } from "../src/tokenizer/byte-level.ts";
import { llamaJsonFromLlama2c } from "../src/tokenizer/llama2c-json.ts";

/** Compares long id lists so that a failure shows the first difference, not a diff of the whole list. */
function expectSameIds(actual: readonly number[], expected: readonly number[]): void {
  let first = 0;
  while (first < actual.length && first < expected.length && actual[first] === expected[first]) first++;
  const window = (ids: readonly number[]) => ({ at: first, length: ids.length, ids: ids.slice(first, first + 20) });
  expect(window(actual)).toEqual(window(expected));
}

function writeFolder(files: Record<string, string>): string {
  const folder = mkdtempSync(join(tmpdir(), "hftok-"));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(folder, name), content);
  return folder;
}

const expectTokenizerError = (run: () => unknown, pattern: RegExp, file?: string): void =>
  expectTaggedError(TokenizerError, run, pattern, file);

const addedToken = specialAddedToken;

/** A small whitespace-split BPE, with the given special tokens after a letter vocabulary. */
function wordBpeJson(specials: readonly string[]): Record<string, unknown> {
  const letters = "abcdefghijklmnopqrstuvwxyz".split("");
  const vocab: Record<string, number> = { "[UNK]": 0 };
  letters.forEach((letter, i) => (vocab[letter] = i + 1));
  vocab.he = 27;
  vocab.hel = 28;
  return {
    version: "1.0",
    added_tokens: [addedToken(0, "[UNK]"), ...specials.map((content, i) => addedToken(29 + i, content))],
    normalizer: null,
    pre_tokenizer: { type: "WhitespaceSplit" },
    post_processor: null,
    decoder: null,
    model: { type: "BPE", unk_token: "[UNK]", vocab, merges: [["h", "e"], ["he", "l"]] },
  };
}


describe("Hugging Face tokenizer.json", () => {
  it("finds BOS and EOS among the added tokens by their usual names", () => {
    const llamaStyle = huggingFaceTokenizer(wordBpeJson(["<s>", "</s>"]), undefined, "t.json");
    expect([llamaStyle.bosId, llamaStyle.eosId]).toEqual([29, 30]);
    const llama3Style = huggingFaceTokenizer(wordBpeJson(["<|begin_of_text|>", "<|end_of_text|>"]), undefined, "t.json");
    expect([llama3Style.bosId, llama3Style.eosId]).toEqual([29, 30]);
    const gpt2Style = huggingFaceTokenizer(wordBpeJson(["<|endoftext|>"]), undefined, "t.json");
    expect([gpt2Style.bosId, gpt2Style.eosId]).toEqual([29, 29]);
    const none = huggingFaceTokenizer(wordBpeJson([]), undefined, "t.json");
    expect([none.bosId, none.eosId]).toEqual([undefined, undefined]);
  });

  it("lets tokenizer_config.json beside the file choose BOS and EOS", () => {
    const folder = writeFolder({
      "tokenizer.json": JSON.stringify(wordBpeJson(["<s>", "</s>", "<|im_end|>"])),
      "tokenizer_config.json": JSON.stringify({ bos_token: null, eos_token: { content: "<|im_end|>" } }),
    });
    const tokenizer = loadTokenizer(join(folder, "tokenizer.json"));
    expect(tokenizer.bosId).toBeUndefined();
    expect(tokenizer.eosId).toBe(31);
  });

  it("encodes with the model and without special tokens", () => {
    const tokenizer = huggingFaceTokenizer(wordBpeJson(["<s>", "</s>"]), undefined, "t.json");
    expect(tokenizer.vocabSize).toBe(31);
    expect(tokenizer.encode("hello  hex")).toEqual([28, 12, 15, 27, 24]);
    expect(tokenizer.encode("")).toEqual([]);
    expectTokenizerError(() => tokenizer.decode([31]), /not in the vocabulary/, "t.json");
  });

  it("names the file when it is missing, not JSON, or not a usable tokenizer", () => {
    const folder = writeFolder({
      "broken.json": "{ not json",
      "array.json": "[1, 2]",
      "nomodel.json": JSON.stringify({ added_tokens: [] }),
      "unknown.json": JSON.stringify({ ...wordBpeJson([]), model: { type: "Mystery" } }),
      "badadded.json": JSON.stringify({ ...wordBpeJson([]), added_tokens: 5 }),
    });
    const missing = join(folder, "absent.json");
    expectTokenizerError(() => loadTokenizer(missing), /no such file/, missing);
    expectTokenizerError(() => loadTokenizer(join(folder, "broken.json")), /not valid JSON/, join(folder, "broken.json"));
    expectTokenizerError(() => loadTokenizer(join(folder, "array.json")), /not a JSON object/);
    expectTokenizerError(() => loadTokenizer(join(folder, "nomodel.json")), /no "model"/);
    expectTokenizerError(() => loadTokenizer(join(folder, "unknown.json")), /cannot be loaded.*Mystery/, join(folder, "unknown.json"));
    expectTokenizerError(() => loadTokenizer(join(folder, "badadded.json")), /added_tokens/);
    expectTokenizerError(() => loadTokenizer(folder), /no such file/, join(folder, "tokenizer.json"));
  });

  it("names tokenizer_config.json when that one is broken", () => {
    const folder = writeFolder({ "tokenizer.json": JSON.stringify(wordBpeJson([])), "tokenizer_config.json": "{,}" });
    expectTokenizerError(() => loadHuggingFaceTokenizer(join(folder, "tokenizer.json")), /not valid JSON/, join(folder, "tokenizer_config.json"));
  });

  it("cuts huge words for speed without changing a single id", () => {
    const alphabet = ["a", "b", "c", "x", " ", "▁"];
    const mergePicks = fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 25 });
    const text = fc.string({ unit: fc.constantFrom(...alphabet), minLength: 257, maxLength: 700 });
    fc.assert(
      fc.property(mergePicks, text, (picks, sample) => {
        const vocab = [...alphabet];
        const merges: [string, string][] = [];
        for (const [left, right] of picks) {
          const pair: [string, string] = [vocab[left % vocab.length], vocab[right % vocab.length]];
          merges.push(pair);
          if (!vocab.includes(pair.join(""))) vocab.push(pair.join(""));
        }
        const json = {
          added_tokens: [],
          normalizer: null,
          pre_tokenizer: null,
          post_processor: null,
          decoder: null,
          model: { type: "BPE", unk_token: null, vocab: Object.fromEntries(vocab.map((token, id) => [token, id])), merges },
        };
        const expected = new LibraryTokenizer(json, {}).encode(sample, { add_special_tokens: false }).ids;
        expect(huggingFaceTokenizer(json, undefined, "cut.json").encode(sample)).toEqual(expected);
      }),
      { numRuns: 200 },
    );
  });

  it("never fails with anything but a TokenizerError on arbitrary JSON", () => {
    const modelish = fc.record({ type: fc.constantFrom("BPE", "WordPiece", "Unigram", "Other"), vocab: fc.jsonValue(), merges: fc.jsonValue() }, { requiredKeys: [] });
    const document = fc.oneof(fc.jsonValue(), fc.record({ model: fc.oneof(modelish, fc.jsonValue()), added_tokens: fc.jsonValue() }, { requiredKeys: [] }));
    fc.assert(
      fc.property(document, (json) => {
        try {
          huggingFaceTokenizer(json, undefined, "random.json");
        } catch (error) {
          expect(error).toBeInstanceOf(TokenizerError);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("a BPE model with malformed merges loads or fails as a TokenizerError (found by fuzzing)", () => {
    try {
      huggingFaceTokenizer({ model: { type: "BPE", vocab: {}, merges: [[], false] } }, undefined, "fuzz.json");
    } catch (error) {
      expect(error).toBeInstanceOf(TokenizerError);
    }
  });
});

describe.skipIf(!haveAssets)("a Llama-style tokenizer.json converted from tok512.bin", () => {
  const binFile = haveAssets ? asset("models", "stories260K", "tok512.bin") : "";
  const json = haveAssets ? llamaJsonFromLlama2c(readFileSync(binFile)) : {};
  const folder = writeFolder({ "tokenizer.json": JSON.stringify(json) });
  const tokenizer = haveAssets ? loadTokenizer(join(folder, "tokenizer.json")) : undefined!;
  const llama2c = haveAssets ? loadLlama2cTokenizer(binFile) : undefined!;

  it("takes BOS from the template and does not add it when encoding", () => {
    expect(tokenizer.vocabSize).toBe(512);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.eosId).toBe(2);
    expect(tokenizer.encode("Once upon a time")).toEqual([403, 407, 261, 378]);
    expect(tokenizer.decode([403, 407, 261, 378])).toBe("Once upon a time");
  });

  it("gives the same ids as the llama2.c encoder", () => {
    const alphabet = fc.constantFrom("a", "e", "h", "n", "o", "t", "s", "d", " ", "\n", ".", "O", "é", "中");
    fc.assert(
      fc.property(fc.string({ unit: alphabet, minLength: 1, maxLength: 60 }), (text) => {
        expect(tokenizer.encode(text)).toEqual(llama2c.encode(text));
      }),
      { numRuns: 300 },
    );
    const stories = readFileSync(asset("data", "tinystories", "valid.head46.txt"), "utf8").slice(0, 20_000);
    expectSameIds(tokenizer.encode(stories), llama2c.encode(stories));
  });

  it("encodes about 800 kB of text, one word for its BPE, as the llama2.c encoder does", () => {
    const text = readFileSync(asset("data", "tinystories", "validation.prefix.txt"), "utf8");
    expectSameIds(tokenizer.encode(text), llama2c.encode(text));
  });
});
