/**
 * A checkpoint's config is checked where it is wrong: an epsilon, RoPE base, scaling factor
 * or window that no model can run with is named in config.json, not blamed on the text; a
 * sharded index may not reach outside the model's folder; a config claiming far more
 * blocks than the file holds, and settings whose memory cannot fit (--nsamples,
 * --population), are refused before any work, in one line.
 */
import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defaultModel } from "../src/defaults.ts";
import { oneLine, runCli, scratchFolder } from "./helpers/cli.ts";

const { fresh } = scratchFolder("evosparse-config-");
const run = (...args: string[]) => runCli(args, { timeout: 60_000 });
const config = JSON.parse(readFileSync(join(defaultModel(), "config.json"), "utf8")) as Record<string, unknown>;
const modelWith = (changes: Record<string, unknown>): string => {
  const dir = fresh("model");
  cpSync(defaultModel(), dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, ...changes }));
  return dir;
};

describe("config.json values", () => {
  it.each([
    [{ rms_norm_eps: -1e-5 }, /\["rms_norm_eps"\]/],
    [{ rope_theta: 0 }, /\["rope_theta"\]/],
    [{ rope_theta: -10000 }, /\["rope_theta"\]/],
    [{ rope_scaling: { rope_type: "llama3", factor: 0 } }, /\["rope_scaling"\]\["factor"\]/],
    [{ model_type: "mistral", sliding_window: 0 }, /\["sliding_window"\]/],
  ])("%j is named in config.json, before any text is read", (changes, field) => {
    const model = modelWith(changes);
    const r = run("eval", "--model", model, "--max-windows", "1", "--backend", "wasm");
    expect(r.code).toBe(1);
    const line = oneLine(r.stderr);
    expect(line).toMatch(new RegExp(`^evosparse: ${model}/config\\.json: invalid config: Expected a value greater than 0 at`));
    expect(line).toMatch(field);
    expect(line).not.toMatch(/overflows|text/);
  });

  it("a config giving far more blocks than the weights hold is refused at once, naming config.json", () => {
    const model = modelWith({ num_hidden_layers: 1_000_000 });
    const start = performance.now();
    const r = run("eval", "--model", model, "--max-windows", "1", "--backend", "wasm");
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/config\.json: gives 1000000 blocks, which need at least 9000000 tensors, but .*model\.safetensors holds 74/);
    expect(performance.now() - start).toBeLessThan(30_000);
  });

  it("a sharded index naming a shard outside the model folder is refused", () => {
    for (const shard of ["../model.safetensors", "/etc/hostname", "sub/../../x.safetensors"]) {
      const model = fresh("sharded");
      cpSync(defaultModel(), model, { recursive: true });
      rmSync(join(model, "model.safetensors"));
      writeFileSync(join(model, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: { "model.embed_tokens.weight": shard } }));
      const r = run("eval", "--model", model, "--max-windows", "1", "--backend", "wasm");
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toContain(`model.safetensors.index.json: weight_map entry model.embed_tokens.weight names the shard ${JSON.stringify(shard)} outside the model's folder`);
    }
  });
});

describe("absurd sizes are refused by the memory plan before any work", () => {
  it("stats --nsamples 1000000: refused before a calibration window is drawn", () => {
    const r = run("stats", "--nsamples", "1000000", "--backend", "wasm");
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/this run needs about .* GiB .*calibration hidden states.*; try fewer --nsamples/);
    expect(r.stderr).not.toMatch(/calibration windows of/);
  });

  it("prune --nsamples 1000000: refused before any window is drawn, and no staging folder is left", () => {
    const out = fresh("pruned");
    const r = run("prune", "--nsamples", "1000000", "--sparsity", "0.5", "--out", out, "--backend", "wasm");
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/this run needs about .* GiB (of scratch space on disk|even streamed)/);
    expect(r.stderr).not.toMatch(/calibration windows of/);
    expect(existsSync(out)).toBe(false);
  });

  it("search --population 1000000 within --memory 2048: refused, no run folder", () => {
    const out = fresh("search");
    const r = run("search", "--population", "1000000", "--sparsity", "0.7", "--memory", "2048", "--out", out, "--backend", "wasm");
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/^evosparse: --population 1000000: the search would hold about .* GiB of individuals/);
    expect(existsSync(out)).toBe(false);
  });
});
