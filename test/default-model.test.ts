import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Effect } from "effect";
import { describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { openSafetensors } from "../src/checkpoint/safetensors.ts";
import { defaultData, defaultModel } from "../src/defaults.ts";
import { evaluate } from "../src/jobs/eval.ts";
import { linearShapes } from "../src/model/spec.ts";

/** What `evosparse eval --json` printed for the shipped model when it was trained. */
interface RecordedEvaluation {
  readonly ppl: number;
  readonly pplPerByte: number;
  readonly seqlen: number;
  readonly tokens: number;
}

describe("the embedded default model", () => {
  const dir = defaultModel();
  const recorded = JSON.parse(readFileSync(join(dir, "evaluation.json"), "utf8")) as RecordedEvaluation;

  it("is a LLaMA checkpoint in the Hugging Face layout, deep, with grouped-query attention, small", () => {
    const ckpt = openCheckpointSync(dir);
    try {
      const s = ckpt.spec;
      expect(ckpt.format).toBe("huggingface");
      expect(s.family).toBe("llama");
      expect(s.numLayers).toBeGreaterThanOrEqual(8);
      expect(s.numKvHeads).toBeLessThan(s.numHeads);
      const perBlock = Object.values(linearShapes(s, 0)).reduce((n, [a, b]) => n + a * b, 0) + 2 * s.hiddenSize;
      const parameters = s.numLayers * perBlock + s.vocabSize * s.hiddenSize + s.hiddenSize;
      expect(parameters).toBeGreaterThan(1_000_000);
      expect(parameters).toBeLessThan(2_500_000);
    } finally {
      ckpt.close();
    }
    const st = openSafetensors(join(dir, "model.safetensors"));
    expect(new Set([...st.tensors.values()].map((t) => t.dtype))).toEqual(new Set(["F16"]));
    st.close();
    const bytes = readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    expect(bytes).toBeLessThanOrEqual(5_000_000);
    for (const f of ["tokenizer.json", "training-log.csv", "loss-curve.svg", "training.json"]) expect(statSync(join(dir, f)).size).toBeGreaterThan(0);
  });

  it("reproduces the test perplexity recorded in its folder (within 1%)", async () => {
    const report = await Effect.runPromise(
      evaluate({ model: dir, data: defaultData("test"), format: "text", backend: "wasm", batch: 4 }),
    );
    expect(report.seqlen).toBe(recorded.seqlen);
    expect(report.tokens).toBe(recorded.tokens);
    expect(Math.abs(report.ppl / recorded.ppl - 1)).toBeLessThan(0.01);
    expect(Math.abs(report.pplPerByte! / recorded.pplPerByte - 1)).toBeLessThan(0.01);
    // Unigram byte statistics give about 17 per byte; the model must be far better.
    expect(report.pplPerByte!).toBeLessThan(8);
  });
});
