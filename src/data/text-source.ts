import { readFileSync } from "node:fs";
import { DataError } from "../errors.ts";
import { brownText, isBrownSource, parseBrownSource } from "./brown.ts";

export type TextFormat = "text" | "jsonl" | "stories";
export const TEXT_FORMATS: readonly TextFormat[] = ["text", "jsonl", "stories"];

/** TinyStories' document separator. */
export const STORY_SEPARATOR = "<|endoftext|>";

/** A text file, or a built-in part of the Brown corpus named `brown:<part>`. */
export const readTextFile = (file: string): string => {
  if (isBrownSource(file)) return brownText(parseBrownSource(file));
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DataError({ file, problem: code === "ENOENT" ? "no such file" : `cannot read (${code ?? (e as Error).message})` });
  }
};

/** Documents of a JSON-lines file, taken from one string field. */
export const readJsonlDocuments = (file: string, field: string): string[] => {
  const docs: string[] = [];
  readTextFile(file)
    .split("\n")
    .forEach((line, i) => {
      if (line.trim() === "") return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        throw new DataError({ file, problem: `line ${i + 1} is not valid JSON` });
      }
      const value = typeof row === "object" && row !== null ? (row as Record<string, unknown>)[field] : undefined;
      if (typeof value !== "string") throw new DataError({ file, problem: `line ${i + 1} has no string field "${field}"` });
      docs.push(value);
    });
  if (docs.length === 0) throw new DataError({ file, problem: "no documents" });
  return docs;
};

/** Stories split on <|endoftext|>, stripped, empty ones dropped. */
export const splitStories = (text: string): string[] =>
  text
    .split(STORY_SEPARATOR)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);

/**
 * The evaluation text as documents. `text` is one document (the whole file); `jsonl`
 * joins its documents with "\n\n" into one, as the standard protocol does for C4-style
 * data; `stories` keeps each story apart, to be scored on its own.
 */
export const readEvaluationDocuments = (file: string, format: TextFormat, field = "text"): string[] => {
  switch (format) {
    case "text":
      return [readTextFile(file)];
    case "jsonl":
      return [readJsonlDocuments(file, field).join("\n\n")];
    case "stories": {
      const stories = splitStories(readTextFile(file));
      if (stories.length === 0) throw new DataError({ file, problem: `no stories (expected text separated by ${STORY_SEPARATOR})` });
      return stories;
    }
  }
};
