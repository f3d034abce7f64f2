/**
 * `evosparse prune --structured` on the embedded model: a genuinely smaller Hugging Face
 * folder (plain config.json when every block has the same shape) whose `eval` repeats the
 * reported perplexity; settings it cannot honour are refused before any work.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { embeddedModel, errorLines, evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("structured");
const common = ["--model", embeddedModel, "--nsamples", "2", "--seqlen", "128", "--eval", "brown:test", "--eval-windows", "2"];

describe("evosparse prune --structured", () => {
  it("element importance at 50%: half the heads and channels of every block go, and eval of the folder gives the reported perplexity", () => {
    const out = join(root, "element");
    const report = jsonOf(evosparse("prune", ...common, "--structured", "element", "--sparsity", "0.5", "--out", out, "--json"));
    expect(readdirSync(out).sort()).toEqual([".evosparse-output.json", "config.json", "model.safetensors", "report.json", "tokenizer.json"]);
    const before = JSON.parse(readFileSync(join(embeddedModel, "config.json"), "utf8"));
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.intermediate_size).toBe(before.intermediate_size / 2);
    expect(config.num_key_value_heads).toBe(before.num_key_value_heads / 2);
    expect(config.num_attention_heads).toBe(before.num_attention_heads / 2);
    expect(config.evosparse_block_shapes).toBeUndefined();
    expect(report.parameters.removed).toBeCloseTo(0.5, 9);
    // The tensors themselves have the new sizes.
    const written = openCheckpointSync(out);
    try {
      for (let b = 0; b < written.spec.numLayers; b++) {
        const linears = written.readBlock(b).linears;
        expect(linears.up!.weight.shape).toEqual([before.hidden_size, before.intermediate_size / 2]);
        expect(linears.down!.weight.shape).toEqual([before.intermediate_size / 2, before.hidden_size]);
        expect(linears.k!.weight.shape).toEqual([before.hidden_size, (before.num_key_value_heads / 2) * (before.hidden_size / before.num_attention_heads)]);
      }
    } finally {
      written.close();
    }
    expect(report.evaluation.pruned).toBeGreaterThan(report.evaluation.dense);
    const back = jsonOf(evosparse("eval", "--model", out, "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json"));
    expect(back.ppl).toBe(report.evaluation.pruned);
  });

  it("refuses an N:M pattern, a non-uniform allocation and a missing --sparsity, writing nothing", () => {
    for (const [extra, message] of [
      [["--sparsity", "0.5", "--pattern", "2:4"], /takes no --pattern/],
      [["--sparsity", "0.5", "--allocation", "owl"], /takes --allocation uniform, not owl/],
      [[], /needs --sparsity/],
    ] as const) {
      const out = join(root, "refused");
      const r = evosparse("prune", ...common, "--structured", "l2", ...extra, "--out", out);
      expect(r.code).toBe(2);
      expect(errorLines(r.stderr)).toEqual([expect.stringMatching(message)]);
      expect(() => readdirSync(out)).toThrow();
    }
  });
});
