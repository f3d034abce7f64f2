import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { TokenizerError } from "../src/errors.ts";
import { Llama2cTokenizer, loadLlama2cTokenizer, parseLlama2cTokenizer } from "../src/tokenizer/llama2c.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { asset, haveAssets } from "./helpers/assets.ts";
import { expectTaggedError } from "./helpers/errors.ts";

/** Compares long id lists so that a failure shows the first difference, not a diff of the whole list. */
function expectSameIds(actual: readonly number[], expected: readonly number[]): void {
  let first = 0;
  while (first < actual.length && first < expected.length && actual[first] === expected[first]) first++;
  const window = (ids: readonly number[]) => ({ at: first, length: ids.length, ids: ids.slice(first, first + 20) });
  expect(window(actual)).toEqual(window(expected));
}

interface RawToken {
  readonly text: Uint8Array;
  readonly score: number;
}

/** Writes the llama2.c layout directly: int32 max length, then float32 score, int32 length, bytes per token. */
function llama2cFileBytes(tokens: readonly RawToken[]): Buffer {
  const maxLength = Math.max(0, ...tokens.map((t) => t.text.length));
  const parts: Buffer[] = [int32(maxLength)];
  for (const token of tokens) {
    const head = Buffer.alloc(8);
    head.writeFloatLE(token.score, 0);
    head.writeInt32LE(token.text.length, 4);
    parts.push(head, Buffer.from(token.text));
  }
  return Buffer.concat(parts);
}

function int32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32LE(value, 0);
  return buffer;
}

const latin1 = (text: string): Uint8Array => Buffer.from(text, "latin1");

/** The layout llama2.c's own tokenizer.bin files have: <unk>, <s>, </s>, the 256 byte tokens, then merges. */
function llama2cVocab(extra: readonly [string, number][]): RawToken[] {
  const tokens: RawToken[] = [
    { text: latin1("<unk>"), score: 0 },
    { text: latin1("\n<s>\n"), score: 0 },
    { text: latin1("\n</s>\n"), score: 0 },
  ];
  for (let byte = 0; byte < 256; byte++) {
    tokens.push({ text: latin1(`<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`), score: 0 });
  }
  for (const [text, score] of extra) tokens.push({ text: Buffer.from(text, "utf8"), score });
  return tokens;
}

function tempFile(name: string, bytes: Uint8Array): string {
  const file = join(mkdtempSync(join(tmpdir(), "tok-")), name);
  writeFileSync(file, bytes);
  return file;
}

const expectTokenizerError = (run: () => unknown, pattern: RegExp, file?: string): void =>
  expectTaggedError(TokenizerError, run, pattern, file);

/**
 * run.c's encode(), transcribed loop for loop: it rescans the whole sequence for the
 * best pair after every merge. Parses the file itself so that it shares nothing with
 * the code under test.
 */
function naiveReference(fileBytes: Buffer): (text: string) => number[] {
  const texts: string[] = [];
  const scores: number[] = [];
  for (let offset = 4; offset < fileBytes.length; ) {
    scores.push(fileBytes.readFloatLE(offset));
    const length = fileBytes.readInt32LE(offset + 4);
    texts.push(fileBytes.subarray(offset + 8, offset + 8 + length).toString("latin1"));
    offset += 8 + length;
  }
  const lookup = new Map<string, number>();
  texts.forEach((text, id) => {
    if (!lookup.has(text)) lookup.set(text, id);
  });
  const strLookup = (text: string): number => lookup.get(text) ?? -1;
  return (text: string): number[] => {
    const tokens: number[] = [];
    if (text.length > 0) tokens.push(strLookup(" "));
    const bytes = Buffer.from(text, "utf8");
    let buffer: number[] = [];
    for (let c = 0; c < bytes.length; c++) {
      if ((bytes[c] & 0xc0) !== 0x80) buffer = [];
      buffer.push(bytes[c]);
      const next = c + 1 < bytes.length ? bytes[c + 1] : 0;
      if ((next & 0xc0) === 0x80 && buffer.length < 4) continue;
      const id = strLookup(Buffer.from(buffer).toString("latin1"));
      if (id !== -1) tokens.push(id);
      else for (const byte of buffer) tokens.push(byte + 3);
      buffer = [];
    }
    for (;;) {
      let bestScore = Math.fround(-1e10);
      let bestId = -1;
      let bestIdx = -1;
      for (let i = 0; i < tokens.length - 1; i++) {
        const id = strLookup(texts[tokens[i]] + texts[tokens[i + 1]]);
        if (id !== -1 && scores[id] > bestScore) {
          bestScore = scores[id];
          bestId = id;
          bestIdx = i;
        }
      }
      if (bestIdx === -1) break;
      tokens.splice(bestIdx, 2, bestId);
    }
    return tokens;
  };
}

describe("llama2.c tokenizer on synthetic files", () => {
  const small = llama2cVocab([
    [" ", -1],
    ["a", -1],
    ["b", -1],
    ["c", -1],
    ["é", -1],
    ["x", -1],
    ["y", -1],
    ["z", -1],
    ["xy", -5],
    ["yz", -5],
    ["ab", -5],
    ["bc", -5],
    ["abc", -2],
    [" a", -9],
    ["ca", -3],
    ["cc", -1e11],
  ]);
  const file = tempFile("small.bin", llama2cFileBytes(small));
  const tokenizer = loadLlama2cTokenizer(file);
  const id = (text: string): number => small.findIndex((t) => Buffer.from(t.text).equals(Buffer.from(text, "utf8")));

  it("reads the vocabulary to the end of the file when no size is given", () => {
    expect(tokenizer.vocabSize).toBe(small.length);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.eosId).toBe(2);
  });

  it("merges the leftmost pair when two pairs tie, as run.c's strict comparison does", () => {
    // "xy" and "yz" both score -5 and "xyz" is no token: the left pair wins and blocks the right one.
    expect(tokenizer.encode("xyz")).toEqual([id(" "), id("xy"), id("z")]);
    // " abc": "ab" and "bc" tie at -5, " a" scores -9; "ab" merges, then "ab"+"c" forms "abc".
    expect(tokenizer.encode("abc")).toEqual([id(" "), id("abc")]);
  });

  it("prefers the higher score over position", () => {
    // " cab": "ca" (-3) beats "ab" (-5); " c" is no token.
    expect(tokenizer.encode("cab")).toEqual([id(" "), id("ca"), id("b")]);
  });

  it("never merges a pair scored at or below run.c's starting best score of -1e10", () => {
    expect(tokenizer.encode("cc")).toEqual([id(" "), id("c"), id("c")]);
  });

  it("falls back to byte ids (byte + 3) for code points the vocabulary lacks", () => {
    expect(tokenizer.encode("中é")).toEqual([id(" "), 0xe4 + 3, 0xb8 + 3, 0xad + 3, id("é")]);
    expect(tokenizer.encode("")).toEqual([]);
  });

  it("decodes byte tokens to raw bytes and strips the leading space after BOS", () => {
    expect(tokenizer.decode([1, ...tokenizer.encode("中abc")])).toBe("中abc");
    expect(tokenizer.decode(tokenizer.encode("ab"))).toBe(" ab");
    expect(tokenizer.piece(1, id(" a"))).toBe("a");
    expect(tokenizer.piece(5, id(" a"))).toBe(" a");
    expect(Array.from(tokenizer.pieceBytes(0, 0xe4 + 3))).toEqual([0xe4]);
    expect(tokenizer.decode([1, 2])).toBe("");
  });

  it("matches the rescanning reference on random text over its alphabet", () => {
    const reference = naiveReference(readFileSync(file));
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom("a", "b", "c", " ", "é", "x", "y", "z", "q"), maxLength: 60 }), (text) => {
        expect(tokenizer.encode(text)).toEqual(reference(text));
      }),
      { numRuns: 300 },
    );
  });

  it("rejects a token id outside the vocabulary", () => {
    expectTokenizerError(() => tokenizer.decode([small.length]), /outside the vocabulary/, file);
    expectTokenizerError(() => tokenizer.piece(1, -1), /outside the vocabulary/, file);
  });
});

describe("llama2.c tokenizer file errors", () => {
  const valid = llama2cFileBytes(llama2cVocab([[" ", -1]]));

  it("names a missing file", () => {
    const file = join(tmpdir(), "no-such-dir-evosparse", "tokenizer.bin");
    expectTokenizerError(() => loadLlama2cTokenizer(file), /no such file/, file);
    expectTokenizerError(() => loadTokenizer(file), /no such file/, file);
  });

  it("rejects a file cut short", () => {
    for (const cut of [0, 3, 4, 9, 200, valid.length - 1]) {
      const file = tempFile("cut.bin", valid.subarray(0, cut));
      expectTokenizerError(() => loadLlama2cTokenizer(file), /too short|truncated|holds \d+ tokens/, file);
    }
  });

  it("rejects a file with more or fewer tokens than the model header says, as a vocabulary mismatch", () => {
    const file = tempFile("few.bin", valid);
    expectTokenizerError(() => loadLlama2cTokenizer(file, 300), /^holds 260 tokens but the model has a vocabulary of 300$/, file);
    expectTokenizerError(() => loadLlama2cTokenizer(file, 259), /^holds 260 tokens but the model has a vocabulary of 259$/, file);
    expect(loadLlama2cTokenizer(file, 260).vocabSize).toBe(260);
  });

  it("rejects negative lengths", () => {
    const negativeMax = Buffer.concat([int32(-5), valid.subarray(4)]);
    expectTokenizerError(() => parseLlama2cTokenizer(negativeMax, "neg.bin"), /negative max_token_length/, "neg.bin");
    const negativeToken = Buffer.from(valid);
    negativeToken.writeInt32LE(-1, 4 + 4);
    expectTokenizerError(() => parseLlama2cTokenizer(negativeToken, "neg.bin"), /token 0 has a negative length/);
  });

  it("rejects a vocabulary too small for byte fallback", () => {
    const tiny = llama2cFileBytes(llama2cVocab([]).slice(0, 100));
    expectTokenizerError(() => parseLlama2cTokenizer(tiny, "tiny.bin"), /holds 100 tokens/);
  });

  it("rejects a vocabulary size that is not a positive integer", () => {
    expectTokenizerError(() => parseLlama2cTokenizer(valid, "v.bin", 0), /not a positive integer/);
    expectTokenizerError(() => parseLlama2cTokenizer(valid, "v.bin", 2.5), /not a positive integer/);
  });

  it("never fails with anything but a TokenizerError on arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.option(fc.integer({ min: -3, max: 600 })), (bytes, vocabSize) => {
        try {
          const tokenizer = parseLlama2cTokenizer(bytes, "garbage.bin", vocabSize ?? undefined);
          tokenizer.decode(tokenizer.encode("garbage in"));
        } catch (error) {
          expect(error).toBeInstanceOf(TokenizerError);
        }
      }),
    );
  });

  it("never fails with anything but a TokenizerError on a corrupted valid file", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.nat(valid.length),
        (edits, cut) => {
          const bytes = Buffer.from(valid.subarray(0, cut));
          for (const [at, value] of edits) if (at < bytes.length) bytes[at] = value;
          try {
            const tokenizer = parseLlama2cTokenizer(bytes, "corrupt.bin");
            expect(tokenizer.decode([1, ...tokenizer.encode("some text é")])).toEqual(expect.any(String));
          } catch (error) {
            expect(error).toBeInstanceOf(TokenizerError);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe.skipIf(!haveAssets)("llama2.c tokenizer on stories260K's tok512.bin", () => {
  const file = haveAssets ? asset("models", "stories260K", "tok512.bin") : "";
  const tokenizer = haveAssets ? loadLlama2cTokenizer(file) : (undefined as unknown as Llama2cTokenizer);
  const reference = haveAssets ? naiveReference(readFileSync(file)) : () => [];

  it("encodes the prompt of the published golden", () => {
    expect(tokenizer.vocabSize).toBe(512);
    expect([tokenizer.bosId, ...tokenizer.encode("Once upon a time")]).toEqual([1, 403, 407, 261, 378]);
    expect(loadLlama2cTokenizer(file, 512).encode("Once upon a time")).toEqual([403, 407, 261, 378]);
  });

  it("is found by loadTokenizer from the file content", () => {
    const loaded = loadTokenizer(file);
    expect(loaded).toBeInstanceOf(Llama2cTokenizer);
    expect(loaded.encode("Once upon a time")).toEqual([403, 407, 261, 378]);
  });

  it("prints pieces as run.c does", () => {
    expect(tokenizer.piece(1, 403)).toBe("Once");
    expect(tokenizer.piece(403, 407)).toBe(" upon");
    expect(tokenizer.decode([1, 403, 407, 261, 378])).toBe("Once upon a time");
  });

  it("round-trips any text, with the dummy prefix stripped after BOS", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 40 }), (text) => {
        const ids = tokenizer.encode(text);
        expect(tokenizer.decode([1, ...ids])).toBe(text);
        expect(tokenizer.decode(ids)).toBe(text.length > 0 ? ` ${text}` : "");
      }),
      { numRuns: 300 },
    );
  });

  it("is deterministic", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (text) => {
        expect(tokenizer.encode(text)).toEqual(tokenizer.encode(text));
        expect(loadLlama2cTokenizer(file).encode(text)).toEqual(tokenizer.encode(text));
      }),
      { numRuns: 30 },
    );
  });

  it("matches the rescanning reference on random text over a small alphabet", () => {
    const alphabet = fc.constantFrom("a", "e", "h", "n", "o", "t", "s", "d", " ", " ", "\n", ".", ",", "O", "T", "é", "中");
    fc.assert(
      fc.property(fc.string({ unit: alphabet, maxLength: 80 }), (text) => {
        expect(tokenizer.encode(text)).toEqual(reference(text));
      }),
      { numRuns: 400 },
    );
  });

  it("matches the rescanning reference on arbitrary text and on real text", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 30 }), (text) => {
        expect(tokenizer.encode(text)).toEqual(reference(text));
      }),
      { numRuns: 200 },
    );
    const story = readFileSync(asset("data", "tinystories", "valid.head46.txt"), "utf8").slice(0, 2500);
    expectSameIds(tokenizer.encode(story), reference(story));
  });

  it("encodes the 1.3 MB WikiText-2 test split reversibly", () => {
    const text = readFileSync(asset("data", "wikitext-2-raw", "test.txt"), "utf8");
    const ids = tokenizer.encode(text);
    expect(ids.length).toBeGreaterThan(text.length / 4);
    expect(tokenizer.decode([1, ...ids])).toBe(text);
  });
});
