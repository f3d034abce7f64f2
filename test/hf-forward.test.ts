import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { writeSafetensors } from "../src/checkpoint/safetensors.ts";
import { Decoder } from "../src/model/decoder.ts";
import { byteLevelTokenizerJson } from "../src/tokenizer/byte-level.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { hfConfigs, hfTensors, referenceFromHf, type HfCase } from "./helpers/hf-files.ts";
import { randomIds } from "./helpers/random-model.ts";
import { referenceLogits } from "./helpers/reference.ts";

/**
 * The whole path a user's checkpoint takes: a transformers-layout folder (config.json,
 * model.safetensors in F32/F16/BF16, tokenizer.json) -> loader -> tfjs decoder, against the
 * float64 reference fed directly from the same tensors.
 */
const root = mkdtempSync(join(tmpdir(), "evosparse-hf-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend("wasm");
});

const writeFolder = (c: HfCase, dtype: "F32" | "F16" | "BF16") => {
  const dir = join(root, `${c}-${dtype}`);
  const tensors = hfTensors(c, 11);
  // Store what the file can hold, so the reference sees exactly the stored values.
  const stored = new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, data: roundTo(dtype, t.data) }]));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(hfConfigs[c]));
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(byteLevelTokenizerJson()));
  writeSafetensors(join(dir, "model.safetensors"), [...tensors].map(([name, t]) => ({ name, dtype, shape: t.shape, data: t.data })));
  return { dir, stored };
};

const roundTo = (dtype: "F32" | "F16" | "BF16", data: Float32Array): Float32Array => {
  if (dtype === "F32") return data;
  const out = new Float32Array(data.length);
  const u = new Uint32Array(out.buffer);
  const src = new Uint32Array(Float32Array.from(data).buffer);
  for (let i = 0; i < data.length; i++) {
    if (dtype === "BF16") {
      const bits = src[i]!;
      u[i] = ((bits + 0x7fff + ((bits >>> 16) & 1)) & 0xffff0000) >>> 0;
    } else {
      out[i] = Math.fround(toHalf(data[i]!));
    }
  }
  return out;
};

/** Nearest half-precision value (ties to even), for the small normal values these tests use. */
const toHalf = (x: number): number => {
  if (x === 0) return 0;
  const e = Math.floor(Math.log2(Math.abs(x)));
  const ulp = Math.pow(2, Math.max(e, -14) - 10);
  const q = x / ulp;
  const r = Math.round(q);
  const even = Math.abs(q - Math.trunc(q)) === 0.5 ? 2 * Math.round(q / 2) : r;
  return even * ulp;
};

describe("Hugging Face checkpoints through the decoder", () => {
  for (const c of Object.keys(hfConfigs) as HfCase[]) {
    for (const dtype of ["F32", "BF16"] as const) {
      it(`${c} (${dtype}): tfjs logits match the float64 reference`, () => {
        const { dir, stored } = writeFolder(c, dtype);
        const ckpt = openCheckpointSync(dir);
        const spec = ckpt.spec;
        const decoder = Decoder.create(spec, ckpt.readGlobals(), { numBlocks: spec.numLayers, load: (i) => ckpt.readBlock(i) });
        try {
          const ids = randomIds(12, spec.vocabSize, 5);
          const reference = referenceLogits(spec, referenceFromHf(c, stored, {}), ids);
          const x0 = decoder.embed(ids, 1, ids.length);
          let x = x0;
          for (let i = 0; i < spec.numLayers; i++) {
            const next = decoder.runBlock(i, x, 1, ids.length);
            x.dispose();
            x = next;
          }
          const logits = decoder.headLogits(x);
          const got = logits.arraySync() as number[][];
          tf.dispose([x, logits]);
          let maxDiff = 0;
          let scale = 0;
          reference.forEach((row, t) =>
            row.forEach((v, k) => {
              maxDiff = Math.max(maxDiff, Math.abs(v - got[t]![k]!));
              scale = Math.max(scale, Math.abs(v));
            }),
          );
          expect(scale).toBeGreaterThan(0.1);
          expect(maxDiff).toBeLessThan(2e-4 * Math.max(1, scale));
          expect(loadTokenizer(ckpt.tokenizerPath!).encode("Hi")).toEqual([72, 105]);
        } finally {
          decoder.dispose();
          ckpt.close();
        }
      });
    }
  }
});
