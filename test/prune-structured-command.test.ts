/**
 * `evosparse prune --structured` on the embedded model: a genuinely smaller Hugging Face
 * folder (plain config.json when every block has the same shape) whose `eval` repeats the
 * reported perplexity; settings it cannot honour are refused before any work.
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { embeddedModel, errorLines, evosparse, evosparseWithEnv, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("structured");
const common = ["--model", embeddedModel, "--nsamples", "2", "--seqlen", "128", "--eval", "brown:test", "--eval-windows", "2"];

describe("evosparse prune --structured", () => {
  it("element importance at 50%: half the heads and channels of every block go, and eval of the folder gives the reported perplexity", () => {
    const out = join(root, "element");
    const run = evosparse("prune", ...common, "--structured", "element", "--sparsity", "0.5", "--out", out, "--json");
    // --json prints the report and nothing on stderr: no log lines, no progress.
    expect(run.stderr).toBe("");
    const report = jsonOf(run);
    expect(readdirSync(out).sort()).toEqual([".evosparse-output.json", "allocation.csv", "config.json", "model.safetensors", "report.json", "tokenizer.json"]);
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

  it("hywia with an OWL allocation over blocks 1-6 and LoRA recovery: learned fusion reported, per-block shapes, eval repeats the recovered perplexity, each long step's progress shown", () => {
    const out = join(root, "hywia");
    // As a user runs it (no --json): the report is the folder's report.json.
    const run = evosparse(
      "prune", ...common, "--structured", "hywia", "--sparsity", "0.3", "--allocation", "owl", "--structured-blocks", "1-6",
      "--fusion-steps", "3", "--valid-windows", "2", "--recover-steps", "3", "--recover-lr", "0.001", "--recover-batch", "1", "--out", out,
    );
    expect(run.code).toBe(0);
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    // Off a terminal, plain lines: every long step's first and last count, in the pipeline's order.
    const lines = run.stderr.split("\n");
    const at = (line: string): number => {
      const i = lines.findIndex((l) => l.startsWith(line));
      expect(i, `stderr has a line starting "${line}":\n${run.stderr}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    const steps: Array<[string, number]> = [["statistics (blocks)", 8], ["scores (blocks)", 8], ["gradients (blocks)", 8], ["fusion (steps)", 3], ["fusion trials", 26], ["eval pruned (windows)", 2], ["recovery (steps)", 3], ["eval recovered (windows)", 2], ["eval dense (windows)", 2], ["export (blocks)", 8]];
    const order = steps.flatMap(([label, total]) => [at(`${label}: 0/${total} `), at(`${label}: ${total}/${total} `)]);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(report.prunedBlocks).toEqual([1, 2, 3, 4, 5, 6]);
    expect(report.ratios[0]).toBe(0);
    expect(report.ratios[7]).toBe(0);
    expect(report.blocks[0].intermediateSize).toBe(320);
    // OWL's ratios differ from block to block, so do the shapes: config.json lists them.
    expect(new Set(report.ratios.slice(1, 7)).size).toBeGreaterThan(1);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.evosparse_block_shapes).toHaveLength(8);
    expect(config.evosparse_block_shapes.map((b: { intermediate_size: number }) => b.intermediate_size)).toEqual(report.blocks.map((b: { intermediateSize: number }) => b.intermediateSize));
    // Whole groups: within a channel per block of the target, never above it.
    expect(report.parameters.removed).toBeLessThanOrEqual(0.3);
    expect(report.parameters.removed).toBeGreaterThan(0.3 - (8 * 3 * 128) / report.parameters.before);
    // The fusion: one pair of softmax weights per block and kind, and the grid it was checked against.
    expect(report.fusion.weights).toHaveLength(8);
    for (const w of report.fusion.learned) expect(w.channels.fine + w.channels.coarse).toBeCloseTo(1, 12);
    const grid = [1, 0.75, 0.5, 0.25, 0];
    expect(report.fusion.trials.map((t: { label: string }) => t.label)).toEqual(["learned", ...grid.flatMap((h) => grid.map((c) => `heads ${h}, channels ${c}`))]);
    // The fusion kept is the one with the lowest validation perplexity.
    const best = Math.min(...report.fusion.trials.map((t: { ppl: number }) => t.ppl));
    expect(report.fusion.trials.find((t: { label: string }) => t.label === report.fusion.chosen).ppl).toBe(best);
    expect(report.recovery.steps).toBe(3);
    expect(report.recovery.before).toBeGreaterThan(0);
    expect(report.evaluation.pruned).toBe(report.recovery.after);
    const back = jsonOf(evosparse("eval", "--model", out, "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json"));
    expect(back.ppl).toBe(report.evaluation.pruned);
    // The written allocation repeats the cut: the same ratios, the same shapes.
    const again = jsonOf(
      evosparse("prune", ...common, "--structured", "hywia", "--sparsity", "0.3", "--allocation", join(out, "allocation.csv"), "--fusion-steps", "3", "--valid-windows", "2", "--out", join(root, "again"), "--json"),
    );
    again.ratios.forEach((r: number, i: number) => expect(r).toBeCloseTo(report.ratios[i], 12));
  });

  it("a LoRA recovery killed after a checkpoint is refused without --resume and, resumed, ends exactly as an uninterrupted one", async () => {
    const args = [...common, "--structured", "l2", "--sparsity", "0.4", "--recover-steps", "24", "--recover-checkpoint-every", "4", "--recover-batch", "1", "--recover-lr", "0.001"];
    const whole = jsonOf(evosparse("prune", ...args, "--out", join(root, "whole"), "--json"));
    const out = join(root, "killed");
    // Killed right after the checkpoint at step 8 is on disk.
    const crash = evosparseWithEnv({ EVOSPARSE_CRASH_AFTER: "lora-step:8" }, "prune", ...args, "--out", out);
    expect(crash.signal).toBe("SIGKILL");
    expect(JSON.parse(readFileSync(join(`${out}.recovery`, "state.json"), "utf8")).step).toBe(8);
    expect(existsSync(out)).toBe(false);
    const refused = evosparse("prune", ...args, "--out", out);
    expect(refused.code).toBe(2);
    expect(errorLines(refused.stderr)).toEqual([expect.stringMatching(/holds a stopped LoRA recovery: continue it with --resume/)]);
    const resuming = evosparse("prune", ...args, "--out", out, "--resume");
    expect(resuming.code).toBe(0);
    // The recovery's progress starts where the run stopped, and ends at its last step.
    const recovery = resuming.stderr.split("\n").filter((l) => l.startsWith("recovery (steps): "));
    expect(recovery[0]).toMatch(/^recovery \(steps\): 8\/24 /);
    expect(recovery.at(-1)).toMatch(/^recovery \(steps\): 24\/24 /);
    const resumed = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(resumed.recovery).toEqual(whole.recovery);
    expect(resumed.evaluation).toEqual(whole.evaluation);
    expect(readFileSync(join(out, "model.safetensors")).equals(readFileSync(join(root, "whole", "model.safetensors")))).toBe(true);
    expect(existsSync(`${out}.recovery`)).toBe(false);
  });

  it("refuses an N:M pattern, an evolutionary allocation, a missing --sparsity, bad blocks and structured flags without --structured, writing nothing", () => {
    for (const [extra, message] of [
      [["--structured", "l2", "--sparsity", "0.5", "--pattern", "2:4"], /takes no --pattern/],
      [["--structured", "l2", "--sparsity", "0.5", "--allocation", "dsa"], /dsa is evolutionary: run evosparse search --structured l2 --method dsa/],
      [["--structured", "l2"], /needs --sparsity/],
      [["--structured", "l2", "--sparsity", "0.5", "--structured-blocks", "3-9"], /--structured-blocks 3-9: block 9 does not exist: the model has blocks 0-7/],
      [["--structured", "l2", "--sparsity", "0.5", "--structured-blocks", "x"], /--structured-blocks x: "x" is not a block number/],
      [["--structured", "l2", "--sparsity", "0.9", "--structured-blocks", "0"], /cannot lose 0.9000 of all prunable weights/],
      [["--sparsity", "0.5", "--recover-steps", "3"], /--recover-steps applies to structured pruning/],
      [["--structured", "l2", "--sparsity", "0.5", "--recover-steps", "-1"], /--recover-steps -1 is not a whole number >= 0/],
    ] as const) {
      const out = join(root, "refused");
      const r = evosparse("prune", ...common, ...extra, "--out", out);
      expect(r.code).toBe(2);
      expect(errorLines(r.stderr)).toEqual([expect.stringMatching(message)]);
      expect(() => readdirSync(out)).toThrow();
    }
  });
});
