/**
 * A tokenizer whose vocabulary does not match the model's is reported as a vocabulary
 * mismatch naming the tokenizer file, not as a truncated file or a bad token id later.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { defaultModel } from "../src/defaults.ts";
import { TokenizerError } from "../src/errors.ts";
import { tokenizerFor } from "../src/eval/inputs.ts";
import { parseLlama2cTokenizer } from "../src/tokenizer/llama2c.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { expectTaggedError } from "./helpers/errors.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-vocab-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A llama2.c tokenizer.bin of `count` tokens: <unk>, <s>, </s>, the 256 byte tokens, then "t<i>" merges. */
const tokenizerBin = (count: number): Buffer => {
  const texts = ["<unk>", "\n<s>\n", "\n</s>\n", ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)];
  for (let i = texts.length; i < count; i++) texts.push(`t${i}`);
  const parts = [Buffer.alloc(4)];
  parts[0]!.writeInt32LE(8, 0);
  for (const text of texts.slice(0, count)) {
    const head = Buffer.alloc(8);
    head.writeFloatLE(-1, 0);
    head.writeInt32LE(Buffer.byteLength(text, "latin1"), 4);
    parts.push(head, Buffer.from(text, "latin1"));
  }
  return Buffer.concat(parts);
};

/** A llama2.c checkpoint (legacy export, shared classifier) with the given vocabulary size. */
const llama2cModel = (vocab: number): string => {
  const [dim, hidden, layers, heads, kvHeads, seqLen] = [8, 16, 1, 2, 2, 4];
  const floats = vocab * dim + layers * dim * 2 + 4 * layers * dim * dim + 3 * layers * hidden * dim + dim + seqLen * (dim / heads);
  const header = Buffer.alloc(28);
  [dim, hidden, layers, heads, kvHeads, vocab, seqLen].forEach((v, i) => header.writeInt32LE(v, 4 * i));
  const file = join(mkdtempSync(join(root, "m-")), "model.bin");
  writeFileSync(file, Buffer.concat([header, Buffer.alloc(4 * floats)]));
  return file;
};

describe("a llama2.c tokenizer.bin of another vocabulary", () => {
  it("says how many tokens the file holds and how many the model has, both ways", () => {
    expectTaggedError(TokenizerError, () => parseLlama2cTokenizer(tokenizerBin(512), "tok.bin", 32000), /^holds 512 tokens but the model has a vocabulary of 32000$/, "tok.bin");
    expect(() => parseLlama2cTokenizer(tokenizerBin(512), "tok.bin", 32000)).toThrow("tok.bin: holds 512 tokens but the model has a vocabulary of 32000");
    expectTaggedError(TokenizerError, () => parseLlama2cTokenizer(tokenizerBin(600), "tok.bin", 512), /^holds 600 tokens but the model has a vocabulary of 512$/, "tok.bin");
    expect(parseLlama2cTokenizer(tokenizerBin(512), "tok.bin", 512).vocabSize).toBe(512);
  });

  it("still calls a file cut inside the model's vocabulary truncated", () => {
    const bytes = tokenizerBin(512);
    expectTaggedError(TokenizerError, () => parseLlama2cTokenizer(bytes.subarray(0, bytes.length - 3), "tok.bin", 512), /^is truncated: token 511 .*vocabulary of 512 tokens/);
  });

  it("names bytes after the model's vocabulary that are not whole tokens", () => {
    const bytes = Buffer.concat([tokenizerBin(300), Buffer.from([1, 2, 3])]);
    expectTaggedError(TokenizerError, () => parseLlama2cTokenizer(bytes, "tok.bin", 300), /^has 3 bytes after the model's vocabulary of 300 tokens/, "tok.bin");
  });

  it("--tokenizer with a model of another vocabulary fails when the tokenizer is loaded for the model", () => {
    const tok = join(root, "tok512.bin");
    writeFileSync(tok, tokenizerBin(512));
    const model = llama2cModel(1000);
    const ckpt = openCheckpointSync(model, { tokenizer: tok });
    try {
      expectTaggedError(TokenizerError, () => tokenizerFor(ckpt), /^holds 512 tokens but the model has a vocabulary of 1000$/, tok);
    } finally {
      ckpt.close();
    }
  });
});

describe("a Hugging Face tokenizer.json of another vocabulary", () => {
  const file = join(defaultModel(), "tokenizer.json");
  const text = "The Fulton County Grand Jury said Friday an investigation of recent primary elections produced no evidence.";

  it("a tokenizer no larger than the model's vocabulary is used as it is", () => {
    const own = loadTokenizer(file, { vocabSize: 1024 });
    expect(own.vocabSize).toBe(1024);
    expect(own.encode(text)).toEqual(loadTokenizer(file).encode(text));
    // Models often pad their embeddings past the tokenizer's size.
    expect(loadTokenizer(file, { vocabSize: 1088 }).encode(text)).toEqual(own.encode(text));
  });

  it("a larger tokenizer fails when the text encodes to an id the model lacks, naming both sizes", () => {
    const small = loadTokenizer(file, { vocabSize: 300 });
    expect(small.vocabSize).toBe(1024);
    expect(small.bosId).toBe(loadTokenizer(file).bosId);
    expectTaggedError(TokenizerError, () => small.encode(text), /^holds 1024 tokens but the model has a vocabulary of 300: the text encodes to token id \d+, which the model lacks$/, file);
    // Text that stays within the model's ids is fine.
    expect(small.encode("")).toEqual([]);
  });
});
