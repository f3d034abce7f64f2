import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readEvaluationDocuments, splitStories } from "../src/data/text-source.ts";
import { DataError } from "../src/errors.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-text-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const file = (name: string, content: string) => {
  const p = join(root, name);
  writeFileSync(p, content);
  return p;
};

describe("evaluation text formats", () => {
  it("jsonl joins the chosen field of every document with blank lines", () => {
    const p = file("a.jsonl", ['{"text":"first doc","id":1}', "", '{"text":"second\\ndoc"}', '{"body":"x","text":"third"}'].join("\n"));
    expect(readEvaluationDocuments(p, "jsonl")).toEqual(["first doc\n\nsecond\ndoc\n\nthird"]);
    const q = file("b.jsonl", '{"body":"only here"}\n');
    expect(readEvaluationDocuments(q, "jsonl", "body")).toEqual(["only here"]);
  });

  it("jsonl errors name the file and the line", () => {
    const p = file("bad.jsonl", '{"text":"ok"}\n{not json}\n');
    expect(() => readEvaluationDocuments(p, "jsonl")).toThrow(DataError);
    expect(() => readEvaluationDocuments(p, "jsonl")).toThrow(`${p}: line 2 is not valid JSON`);
    const q = file("nofield.jsonl", '{"text":"ok"}\n{"txt":"x"}\n');
    expect(() => readEvaluationDocuments(q, "jsonl")).toThrow(`${q}: line 2 has no string field "text"`);
  });

  it("stories split on <|endoftext|>, stripped, empty ones dropped", () => {
    expect(splitStories("  One.\n<|endoftext|>\nTwo. <|endoftext|>  <|endoftext|>")).toEqual(["One.", "Two."]);
    const p = file("none.txt", "   ");
    expect(() => readEvaluationDocuments(p, "stories")).toThrow(/no stories/);
  });

  it("text is the whole file, untouched", () => {
    const p = file("t.txt", " a\n\nb ");
    expect(readEvaluationDocuments(p, "text")).toEqual([" a\n\nb "]);
    expect(() => readEvaluationDocuments(join(root, "missing.txt"), "text")).toThrow(`${join(root, "missing.txt")}: no such file`);
  });
});
