import { readFileSync } from "node:fs";
import { Effect } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { evaluate } from "../src/jobs/eval.ts";
import { tokenizerFor } from "../src/eval/inputs.ts";
import { greedyText } from "../src/eval/generate.ts";
import { Decoder } from "../src/model/decoder.ts";
import { asset, haveAssets } from "./helpers/assets.ts";
import { nativeCase, skipNotice, webgpuCase, type BackendCase } from "./helpers/backends.ts";

/** The fenced code block that follows a heading of GOLDEN.md. */
const goldenBlock = (markdown: string, heading: string): string => {
  const at = markdown.indexOf(heading);
  if (at < 0) throw new Error(`GOLDEN.md has no heading ${heading}`);
  const open = markdown.indexOf("```\n", at) + 4;
  return markdown.slice(open, markdown.indexOf("```", open));
};

const CASES: readonly BackendCase[] = [{ name: "wasm" }, nativeCase, webgpuCase];

describe.skipIf(!haveAssets).each(CASES)("stories260K, a real pretrained llama2.c model, on $name", ({ name: backend, missing }) => {
  if (skipNotice(`the ${backend} backend`, missing)) {
    it.skip(`needs the ${backend} backend: ${missing}`, () => {});
    return;
  }
  let ckpt: Checkpoint;
  let decoder: Decoder;
  beforeAll(async () => {
    await initBackend(backend);
    ckpt = openCheckpointSync(asset("models", "stories260K", "stories260K.bin"));
    decoder = Decoder.create(ckpt.spec, ckpt.readGlobals(), { numBlocks: ckpt.spec.numLayers, load: (i) => ckpt.readBlock(i) });
  });
  afterAll(async () => {
    decoder?.dispose();
    ckpt?.close();
    await initBackend("wasm");
  });

  const golden = haveAssets ? readFileSync(asset("models", "stories260K", "GOLDEN.md"), "utf8") : "";

  it("greedy decoding from BOS reproduces llama2.c's 200-step output exactly", async () => {
    const tokenizer = tokenizerFor(ckpt);
    const text = await greedyText(decoder, tokenizer, [1], 200);
    expect(text).toBe(goldenBlock(golden, "## Greedy (temperature 0), no prompt, 200 steps").replace(/\n$/, ""));
  });

  it('greedy decoding of "Once upon a time" reproduces the 64-step golden', async () => {
    const tokenizer = tokenizerFor(ckpt);
    const prompt = [1, ...tokenizer.encode("Once upon a time")];
    expect(prompt).toEqual([1, 403, 407, 261, 378]);
    expect(await greedyText(decoder, tokenizer, prompt, 64)).toBe(goldenBlock(golden, '## Greedy, prompt "Once upon a time"').replace(/\n$/, ""));
  });

  it("--format stories on valid.head46.txt gives perplexity 3.3970", async () => {
    const report = await Effect.runPromise(
      evaluate({
        model: asset("models", "stories260K"),
        data: asset("data", "tinystories", "valid.head46.txt"),
        format: "stories",
        backend,
      }),
    );
    expect(report.windows).toBe(46);
    expect(Math.abs(report.ppl - 3.397)).toBeLessThan(0.002);
  });

  it("streamed evaluation gives the same perplexity as resident", async () => {
    const run = (streamed: boolean) =>
      Effect.runPromise(
        evaluate({
          model: asset("models", "stories260K", "stories260K.bin"),
          data: asset("data", "tinystories", "validation.prefix.txt"),
          format: "text",
          seqlen: 256,
          maxWindows: 6,
          backend,
          streamed,
        }),
      );
    const [resident, streamed] = [await run(false), await run(true)];
    expect(streamed.tokens).toBe(6 * 255);
    expect(streamed.nll).toBeCloseTo(resident.nll, 6);
  });
});
