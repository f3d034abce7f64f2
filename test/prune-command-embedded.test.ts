/**
 * test/prune-command.test.ts on the embedded default model (a Hugging Face input) and the
 * Brown texts, so a clone without ../shared/assets still checks `evosparse prune` end to end.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { embeddedLayout, embeddedModel, ended, errorLines, evosparse, jsonOf, nmViolations, spawnEvosparse, tempRoot, zerosOf } from "./helpers/embedded.ts";

const root = tempRoot("prune-embedded");

interface Linear {
  block: number;
  linear: string;
  params: number;
  requested: number;
  expected: number;
  achieved: number;
}

/** Zero weights of every linear as written in the folder's model.safetensors. */
const zerosWritten = (folder: string): Map<string, number> => {
  const ckpt = openCheckpointSync(folder);
  try {
    const zeros = new Map<string, number>();
    for (let b = 0; b < ckpt.spec.numLayers; b++) {
      for (const [name, l] of Object.entries(ckpt.readBlock(b).linears)) zeros.set(`${b}/${name}`, zerosOf(l.weight.data));
    }
    return zeros;
  } finally {
    ckpt.close();
  }
};

describe("evosparse prune on the embedded model (Hugging Face input)", () => {
  const common = [
    "--model", embeddedModel, "--calib", "brown:calibration", "--nsamples", "2", "--seqlen", "128",
    "--valid", "brown:validation", "--valid-windows", "1", "--eval", "brown:test", "--eval-windows", "2",
  ];

  it("writes a LLaMA Hugging Face folder whose reloaded perplexity is the reported one, with exact per-linear sparsity; its allocation.csv re-applied gives the same bytes", () => {
    const out = join(root, "atp");
    const r = evosparse("prune", ...common, "--metric", "wanda", "--sparsity", "0.6", "--allocation", "atp", "--out", out, "--json");
    expect(r.stderr).toBe("");
    const report = jsonOf(r);
    expect(readdirSync(out).sort()).toEqual([".evosparse-output.json", "allocation.csv", "config.json", "model.safetensors", "report.json", "tokenizer.json"]);
    expect(JSON.parse(readFileSync(join(out, "report.json"), "utf8"))).toEqual(report);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.model_type).toBe("llama");
    expect(config.num_hidden_layers).toBe(8);
    expect(report.trials.length).toBeGreaterThan(2);
    expect(report.trials.map((t: { label: string }) => t.label)).toContain(report.chosen);
    expect(report.linears).toHaveLength(embeddedLayout().length);
    // Achieved equals expected per linear, and both are what the written file holds.
    const zeros = zerosWritten(out);
    for (const l of report.linears as Linear[]) {
      expect(l.achieved).toBe(l.expected);
      expect(l.achieved * l.params).toBe(zeros.get(`${l.block}/${l.linear}`));
      // Wanda: floor(C_in * requested) zeros per output neuron, so never more than requested.
      expect(l.achieved).toBeLessThanOrEqual(l.requested);
    }
    expect(Math.abs(report.requestedSparsity - 0.6)).toBeLessThan(1e-9);
    expect(report.evaluation.windows).toBe(2);
    expect(report.evaluation.pruned).toBeGreaterThan(report.evaluation.dense);
    for (const stage of ["forward", "statistics", "scoring", "masking", "evaluation"]) expect(report.timings[stage]).toBeGreaterThan(0);

    const back = jsonOf(evosparse("eval", "--model", out, "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json"));
    expect(back.ppl).toBe(report.evaluation.pruned);
    const dense = jsonOf(evosparse("eval", "--model", embeddedModel, "--eval", "brown:test", "--seqlen", "128", "--eval-windows", "2", "--json"));
    expect(dense.ppl).toBe(report.evaluation.dense);

    // The allocation file it wrote, applied again (its own sparsity the target: no --sparsity), gives the same model.
    const again = join(root, "again");
    const r2 = jsonOf(evosparse("prune", ...common, "--metric", "wanda", "--allocation", join(out, "allocation.csv"), "--out", again, "--json"));
    expect(r2.target).toBeCloseTo(0.6, 9);
    expect(r2.evaluation.pruned).toBe(report.evaluation.pruned);
    expect(r2.linears).toEqual(report.linears);
    expect(readFileSync(join(again, "model.safetensors")).equals(readFileSync(join(out, "model.safetensors")))).toBe(true);
  });

  it("prunes 2:4 with SparseGPT, every group of four inputs holding two zeros", () => {
    const out = join(root, "nm");
    const report = jsonOf(evosparse("prune", ...common, "--metric", "sparsegpt", "--pattern", "2:4", "--allocation", "uniform", "--mode", "dense", "--out", out, "--json"));
    expect(report.pattern).toBe("2:4");
    for (const l of report.linears as Linear[]) expect(l.achieved).toBeGreaterThanOrEqual(0.5);
    const ckpt = openCheckpointSync(out);
    try {
      let wrongGroups = 0;
      for (let b = 0; b < ckpt.spec.numLayers; b++) {
        for (const l of Object.values(ckpt.readBlock(b).linears)) wrongGroups += nmViolations(l.weight, 2, 4, true);
      }
      expect(wrongGroups).toBe(0);
    } finally {
      ckpt.close();
    }
  });

  it("shows each long step's progress as a user runs it (no --json): OWL's two passes, blocks pruned, windows scored, blocks written", () => {
    const out = join(root, "progress");
    const r = evosparse("prune", ...common, "--metric", "sparsegpt", "--sparsity", "0.6", "--allocation", "owl", "--out", out);
    expect(r.code).toBe(0);
    const blocks = 8;
    const lines = r.stderr.split("\n");
    // Off a terminal, plain lines: every step's first and last count, in the pipeline's order.
    const at = (line: string): number => {
      const i = lines.findIndex((l) => l.startsWith(line));
      expect(i, `stderr has a line starting "${line}":\n${r.stderr}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    const order = [
      // OWL's passes over the dense model: the calibration statistics, then the weights' scores.
      at(`statistics (blocks): 0/${blocks} `),
      at(`statistics (blocks): ${blocks}/${blocks} `),
      at(`scores (blocks): 0/${blocks} `),
      at(`scores (blocks): ${blocks}/${blocks} `),
      at(`prune (blocks): 0/${blocks} `),
      at(`prune (blocks): ${blocks}/${blocks} `),
      at("eval pruned (windows): 0/2 "),
      at("eval pruned (windows): 2/2 "),
      at("eval dense (windows): 0/2 "),
      at("eval dense (windows): 2/2 "),
      at(`export (blocks): 0/${blocks} `),
      at(`export (blocks): ${blocks}/${blocks} `),
    ];
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(lines.findIndex((l) => l.startsWith("pruning 8 blocks"))).toBeLessThan(order[4]!);
    // --json prints the report and nothing on stderr.
    const quiet = evosparse("prune", ...common, "--metric", "sparsegpt", "--sparsity", "0.6", "--allocation", "owl", "--out", join(root, "progress-json"), "--json");
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe("");
  });

  it("rejects a bad allocation file with one line naming it, and writes nothing", () => {
    const file = join(root, "bad.csv");
    // One row of the model's 56: the rest are missing.
    const first = embeddedLayout()[0]!;
    writeFileSync(file, `block,linear,params,sparsity,n,m\n${first.block},${first.linear},${first.params},0.5,,\n`);
    const out = join(root, "never");
    const r = evosparse("prune", ...common, "--sparsity", "0.5", "--allocation", file, "--out", out);
    expect(r.code).toBe(1);
    const errors = errorLines(r.stderr);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain(file);
    expect(existsSync(out)).toBe(false);
    const usage = evosparse("prune", ...common, "--sparsity", "0.5", "--pattern", "5:4", "--out", out);
    expect(usage.code).toBe(2);
    const unknown = evosparse("prune", ...common, "--sparsity", "0.5", "--allocation", "nonsense", "--out", out);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown method "nonsense"; built-in: .*owl/);
    expect(existsSync(out)).toBe(false);
  });

  it("a run killed before it finishes leaves no folder under the output name", async () => {
    const out = join(root, "killed");
    // Every window of the test text: the evaluation is long enough to be killed in.
    const args = common.filter((_, i) => i < common.indexOf("--eval-windows"));
    const child = spawnEvosparse("prune", ...args, "--sparsity", "0.5", "--allocation", "uniform", "--out", out);
    child.stderr!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("evaluating on")) child.kill("SIGKILL");
    });
    expect(await ended(child)).toBe("SIGKILL");
    expect(existsSync(out)).toBe(false);
  });
});
