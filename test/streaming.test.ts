/**
 * Streaming changes nothing. Every command run with `--streamed` (the leanest plan: one
 * block on the backend, the head uploaded per pass, one window a pass, calibration states
 * on the host, pruned blocks and ranks on disk) gives what the resident plan gives, to the
 * bit: perplexities, the written weights, statistics and search histories, on the embedded
 * model and on stories260K (when the shared assets are there), for every metric and mode.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { asset, haveAssets } from "./helpers/assets.ts";
import { embeddedModel, evosparse, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("streaming");

interface ModelCase {
  readonly name: string;
  readonly model: string;
  readonly calib: string;
  readonly text: string;
  readonly seqlen: string;
}

const MODELS: readonly ModelCase[] = [
  { name: "the embedded model", model: embeddedModel, calib: "brown:calibration", text: "brown:validation", seqlen: "128" },
  ...(haveAssets
    ? [
        {
          name: "stories260K",
          model: asset("models", "stories260K", "stories260K.bin"),
          calib: asset("data", "tinystories", "validation.prefix.txt"),
          text: asset("data", "tinystories", "validation.prefix.txt"),
          seqlen: "128",
        },
      ]
    : []),
];

/** The plan a run printed (JSON reports carry it). */
const planOf = (report: { memory: { plan: string } }): string => report.memory.plan;

describe.each(MODELS)("--streamed on $name", (m) => {
  it("eval: the same perplexity", () => {
    const args = ["eval", "--model", m.model, "--data", m.text, "--seqlen", m.seqlen, "--max-windows", "3", "--batch", "2", "--json"];
    const resident = jsonOf(evosparse(...args));
    const streamed = jsonOf(evosparse(...args, "--streamed"));
    expect(planOf(resident)).toMatch(/^memory: resident/);
    expect(planOf(streamed)).toMatch(/^memory: streamed/);
    expect(streamed.ppl).toBe(resident.ppl);
    expect(streamed.tokens).toBe(resident.tokens);
  });

  for (const metric of ["magnitude", "wanda", "sparsegpt"] as const) {
    for (const mode of ["sequential", "dense"] as const) {
      it(`prune ${metric} (${mode}): the same perplexities and the same bytes written`, () => {
        const out = (kind: string) => join(root, `${m.name.replace(/\W/g, "")}-${metric}-${mode}-${kind}`);
        const args = [
          "prune", "--model", m.model, "--metric", metric, "--mode", mode, "--allocation", "owl", "--sparsity", "0.6",
          "--calib", m.calib, "--nsamples", "4", "--seqlen", m.seqlen, "--batch", "2", "--eval", m.text, "--eval-windows", "3", "--json",
        ];
        const resident = jsonOf(evosparse(...args, "--out", out("resident")));
        const streamed = jsonOf(evosparse(...args, "--out", out("streamed"), "--streamed"));
        expect(planOf(resident)).not.toMatch(/on disk/);
        expect(planOf(streamed)).toMatch(/^memory: streamed.*pruned blocks and ranks on disk/);
        expect(streamed.evaluation).toEqual(resident.evaluation);
        expect(streamed.linears).toEqual(resident.linears);
        expect(readFileSync(join(out("streamed"), "model.safetensors")).equals(readFileSync(join(out("resident"), "model.safetensors")))).toBe(true);
      });
    }
  }

  for (const [importance, extra] of [["element", []], ["hywia", ["--fusion-steps", "2", "--recover-steps", "2", "--recover-batch", "1"]]] as const) {
    it(`prune --structured ${importance}: the same perplexities and the same bytes written`, () => {
      const out = (kind: string) => join(root, `${m.name.replace(/\W/g, "")}-structured-${importance}-${kind}`);
      const args = [
        "prune", "--structured", importance, "--model", m.model, "--sparsity", "0.4", "--calib", m.calib, "--nsamples", "2", "--seqlen", m.seqlen,
        "--valid", m.text, "--valid-windows", "1", "--eval", m.text, "--eval-windows", "2", ...extra, "--json",
      ];
      const resident = jsonOf(evosparse(...args, "--out", out("resident")));
      const streamed = jsonOf(evosparse(...args, "--out", out("streamed"), "--streamed"));
      expect(streamed.evaluation).toEqual(resident.evaluation);
      expect(streamed.blocks).toEqual(resident.blocks);
      expect(readFileSync(join(out("streamed"), "model.safetensors")).equals(readFileSync(join(out("resident"), "model.safetensors")))).toBe(true);
    });
  }

  it("stats: the same table", () => {
    const args = ["stats", "--model", m.model, "--calib", m.calib, "--nsamples", "2", "--seqlen", m.seqlen];
    const resident = evosparse(...args, "--out", join(root, `${m.name.replace(/\W/g, "")}-stats-resident.csv`));
    const streamed = evosparse(...args, "--out", join(root, `${m.name.replace(/\W/g, "")}-stats-streamed.csv`), "--streamed");
    expect(resident.code, resident.stderr).toBe(0);
    expect(streamed.code, streamed.stderr).toBe(0);
    expect(readFileSync(join(root, `${m.name.replace(/\W/g, "")}-stats-streamed.csv`), "utf8")).toBe(readFileSync(join(root, `${m.name.replace(/\W/g, "")}-stats-resident.csv`), "utf8"));
  });

  for (const [method, fitness, extra] of [["evopress", "kl", []], ["dsa", "ppl", []], ["dsa", "ppl", ["--workers", "2"]], ["dsa", "ppl", ["--structured", "element"]]] as const) {
    it(`search ${method} (${fitness} fitness${extra.length ? `, ${extra.join(" ")}` : ""}): the same history and results`, () => {
      const dir = (kind: string) => join(root, `${m.name.replace(/\W/g, "")}-search-${method}${extra.join("").replace(/\W/g, "")}-${kind}`);
      const args = [
        "search", "--method", method, "--fitness", fitness, "--sparsity", "0.6", "--model", m.model, "--calib", m.calib, "--nsamples", "2",
        "--seqlen", m.seqlen, "--fitness-data", m.text, "--fitness-windows", "2", "--eval", m.text, "--eval-windows", "2",
        "--generations", "2", "--population", "4", ...extra, "--json",
        ...(method === "evopress" ? ["--space", join(import.meta.dirname, "fixtures", "evopress-tiny.json")] : []),
      ];
      // Worker threads: each plans its own copy the leanest way; the main thread's copy too.
      const resident = jsonOf(evosparse(...args.filter((a, i) => a !== "--workers" && args[i - 1] !== "--workers"), "--out", dir("resident")));
      const streamed = jsonOf(evosparse(...args, "--out", dir("streamed"), "--streamed"));
      // The seconds column aside, the history is the same run.
      const history = (d: string) => readFileSync(join(d, "history.csv"), "utf8").split("\n").map((line) => line.split(",").slice(0, -1).join(","));
      expect(history(dir("streamed"))).toEqual(history(dir("resident")));
      expect(streamed.best).toEqual(resident.best);
      expect(streamed.final.results).toEqual(resident.final.results);
      expect(streamed.final.dense).toBe(resident.final.dense);
    });
  }
});
