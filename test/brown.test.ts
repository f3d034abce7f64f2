import { describe, expect, it } from "vitest";
import { BROWN_PARTS, brownFiles, brownPartOf, brownText, untagSentence } from "../src/data/brown.ts";
import { readTextFile } from "../src/data/text-source.ts";

describe("Brown corpus split", () => {
  const files = brownFiles();

  it("covers all 500 source files, each in exactly one part", () => {
    expect(files).toHaveLength(500);
    const counts = Object.fromEntries(BROWN_PARTS.map((p) => [p, files.filter((_, i) => brownPartOf(i) === p).length]));
    expect(counts).toEqual({ train: 425, validation: 25, calibration: 25, test: 25 });
  });

  it("every held-out part spans many genres", () => {
    for (const part of ["validation", "calibration", "test"] as const) {
      const genres = new Set(files.filter((_, i) => brownPartOf(i) === part).map((f) => f.slice(0, 2)));
      expect(genres.size).toBeGreaterThanOrEqual(12);
    }
  });

  it("is deterministic and the parts share no paragraph", () => {
    const paragraphs = (part: (typeof BROWN_PARTS)[number]) =>
      new Set(brownText(part).split("\n").filter((p) => p.length > 80));
    const test = paragraphs("test");
    expect(brownText("test")).toBe(brownText("test"));
    for (const part of ["train", "validation", "calibration"] as const) {
      const other = paragraphs(part);
      const shared = [...test].filter((p) => other.has(p));
      expect(shared).toEqual([]);
    }
  });

  it("strips the part-of-speech tags back to running text", () => {
    const text = brownText("validation");
    expect(text.length).toBeGreaterThan(250_000);
    expect(text).not.toMatch(/\/(at|nn|vbd|in)\b/);
    expect(text).not.toMatch(/``|''/);
    expect(readTextFile("brown:validation")).toBe(text);
  });

  it("spaces punctuation and quotes as ordinary prose", () => {
    expect(untagSentence("``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ./.")).toBe('"Only a handful", the jury said.');
    expect(untagSentence("Atlanta's/np$ recent/jj primary/nn (/( 1960/cd )/) ./.")).toBe("Atlanta's recent primary (1960).");
  });

  it("rejects an unknown part with a clear error", () => {
    expect(() => readTextFile("brown:dev")).toThrow(/brown:dev: unknown Brown part "dev"/);
  });
});
