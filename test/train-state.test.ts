import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DataError } from "../src/errors.ts";
import { decodeTrainingState } from "../src/train/state.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-train-state-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("a training checkpoint's state.json", () => {
  it("decodes a valid state, and refuses anything else with a DataError naming the file (property)", () => {
    const valid = { step: 3, optimizerStep: 3, names: ["embed"], log: [{ step: 1, lr: 0.1, trainLoss: 5, gradNorm: 1, seconds: 0.5 }] };
    expect(decodeTrainingState(JSON.stringify(valid), "state.json")).toEqual(valid);
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify(v))), (text) => {
        try {
          decodeTrainingState(text, "ckpt/state.json");
        } catch (error) {
          expect(error).toBeInstanceOf(DataError);
          expect((error as DataError).file).toBe("ckpt/state.json");
        }
      }),
    );
  });

  it("a damaged one stops `train --resume` with one line naming it", () => {
    const out = join(root, "model");
    mkdirSync(`${out}.checkpoint`);
    writeFileSync(join(`${out}.checkpoint`, "state.json"), '{"step": "three"}');
    const r = spawnSync(process.execPath, [resolve(import.meta.dirname, "..", "bin", "evosparse.mjs"), "train", "--out", out, "--resume", "--steps", "1", "--vocab", "258", "--workers", "1"], {
      encoding: "utf8",
      env: { ...process.env, CI: "true" },
    });
    expect(r.status).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^evosparse: ${join(`${out}.checkpoint`, "state.json")}: invalid training state: `));
  });
});
