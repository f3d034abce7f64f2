/**
 * `npm run bench -- scale`: real model sizes on this machine. The benchmark writes
 * LLaMA-shaped checkpoints with random F16 weights itself (nothing is downloaded):
 * TinyLlama-1.1B's shapes and LLaMA-2-7B's (6.7B parameters), under results/bench/models/
 * (kept for the next run: 2.2 and 13.4 GB). For each size, each command is one process,
 * timed as a whole, with its own peak resident memory (what the report says the process
 * reached) beside the plan's estimate:
 *  - eval: 2 windows of 512 tokens of brown:test, tokens per second of the scoring (ours
 *    and the peer's interleaved, best of three each);
 *  - prune with Wanda and with SparseGPT at 50%, 4 calibration windows of 512, evaluated
 *    dense and pruned on the same 2 windows, the folder written;
 *  - a search: evopress, KL fitness, a 16384-token budget with a stage plan that fits it
 *    (bench/scale-evopress.json), final re-pruning of the best, uniform and OWL;
 *  - the same search with SparseGPT (`search-sparsegpt`, not in the default parts: on 2
 *    cores it is most of an hour at 1.1B): its levels' factors made before the search, the
 *    levels it reaches pruned from them; uniform and OWL as its baselines.
 * Beside ours, the PyTorch CPU peer (bench/peer/llama_cpu.py, Debian's python3-torch) on
 * the same checkpoint and the same token windows: its forward and its block-by-block Wanda
 * and SparseGPT, as locuslab/wanda prunes. Measured one after the other in one run.
 *
 * `--sizes=1.1b,6.7b` (default both), `--parts=eval,wanda,sparsegpt,search,search-sparsegpt` (default all but the last),
 * `--peer=off` to skip PyTorch, `--rounds=1` for one eval each. CSV in results/bench/scale.csv.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parse } from "csv-parse/sync";
import { stringify } from "csv-stringify/sync";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { defaultData, projectRoot } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import { LLAMA2_7B, parameterCount, TINYLLAMA_1B, writeRandomLlama, type LlamaShape } from "./scale-models.ts";

const SEQLEN = 512;
const EVAL_WINDOWS = 2;
const CALIBRATION = 4;
const BUDGET_TOKENS = 16384;
/** Eval rounds, interleaved with the peer's (`--rounds=N`). */
const EVAL_ROUNDS = 3;

interface Row {
  readonly size: string;
  readonly what: string;
  readonly who: "evosparse" | "PyTorch";
  readonly seconds: number;
  readonly tokensPerSecond?: number;
  readonly peakBytes: number;
  readonly estimatedBytes?: number;
  readonly ppl?: number;
  readonly note?: string;
}

const GB = 1e9;

/** What a SparseGPT search left in its levels folder: the levels it made, and the factors. */
const levelsMade = (dir: string): { made: number; levelBytes: number; factorBytes: number } => {
  let made = 0;
  let levelBytes = 0;
  let factorBytes = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      for (const level of readdirSync(join(dir, entry.name))) {
        made++;
        levelBytes += statSync(join(dir, entry.name, level)).size;
      }
    } else if (entry.name.endsWith(".factor")) {
      factorBytes += statSync(join(dir, entry.name)).size;
    }
  }
  return { made, levelBytes, factorBytes };
};
const fmt = (x: number | undefined, digits = 1) => (x === undefined ? "" : x.toFixed(digits));

/** Python with torch: Debian's (python3-torch) where it is installed. */
const peerPython = (): string | undefined => {
  for (const python of ["/usr/bin/python3", "python3"]) {
    const r = spawnSync(python, ["-c", "import torch, numpy"], { encoding: "utf8" });
    if (r.status === 0) return python;
  }
  return undefined;
};

/** Runs a command to its end: wall seconds and its JSON output (the last line of stdout). */
const run = (command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): { seconds: number; json: any; stderr: string } => {
  const start = performance.now();
  const r = spawnSync(command, args, { encoding: "utf8", env, maxBuffer: 64 * 2 ** 20 });
  const seconds = (performance.now() - start) / 1000;
  if (r.status !== 0) throw new Error(`${[command, ...args].join(" ")} failed (${r.status}):\n${r.stderr.slice(-2000)}`);
  const last = r.stdout.trim().split("\n").at(-1) ?? "{}";
  return { seconds, json: JSON.parse(last), stderr: r.stderr };
};

/** The token windows both sides score and calibrate on, as the peer reads them (int32 rows). */
const writeWindows = (model: string, dir: string): { evalFile: string; calibFile: string } => {
  const checkpoint = openCheckpointSync(model);
  try {
    const tokenizer = tokenizerFor(checkpoint);
    const evaluation = evaluationWindows({ data: defaultData("test"), format: "text", maxWindows: EVAL_WINDOWS }, tokenizer, SEQLEN);
    const calibration = calibrationWindows({ source: defaultData("calibration"), samples: CALIBRATION, seqlen: SEQLEN, seed: 0 }, tokenizer);
    const rows = (ws: readonly Int32Array[]) => {
      const out = new Int32Array(ws.length * SEQLEN);
      ws.forEach((w, k) => out.set(w, k * SEQLEN));
      return new Uint8Array(out.buffer);
    };
    const evalFile = join(dir, "eval.i32");
    const calibFile = join(dir, "calib.i32");
    writeFileSync(evalFile, rows(evaluation.map((w) => w.ids)));
    writeFileSync(calibFile, rows(calibration));
    return { evalFile, calibFile };
  } finally {
    checkpoint.close();
  }
};

export const scaleSection = async (args: readonly string[]): Promise<void> => {
  const option = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
  const rounds = Math.max(1, Number(option("rounds") ?? EVAL_ROUNDS) || EVAL_ROUNDS);
  const sizes = (option("sizes") ?? "1.1b,6.7b").split(",");
  const parts = (option("parts") ?? "eval,wanda,sparsegpt,search").split(",");
  const unknown = parts.filter((p) => !["eval", "wanda", "sparsegpt", "search", "search-sparsegpt"].includes(p));
  if (unknown.length > 0) throw new Error(`--parts: unknown ${unknown.join(", ")} (eval, wanda, sparsegpt, search, search-sparsegpt)`);
  const backend = option("backend") ?? "native";
  const python = option("peer") === "off" ? undefined : peerPython();
  const shapes: Record<string, LlamaShape> = { "1.1b": TINYLLAMA_1B, "6.7b": LLAMA2_7B };
  const bin = join(projectRoot, "bin", "evosparse.mjs");
  const peer = join(projectRoot, "bench", "peer", "llama_cpu.py");
  const modelsDir = join(projectRoot, "results", "bench", "models");
  const rows: Row[] = [];
  console.log(`## Model sizes: LLaMA-shaped checkpoints with random F16 weights, backend ${backend}${python ? "; the PyTorch CPU peer beside" : option("peer") === "off" ? "; PyTorch peer: off" : "; PyTorch peer: not installed (Debian package python3-torch), skipped"}\n`);
  for (const size of sizes) {
    const shape = shapes[size];
    if (!shape) throw new Error(`--sizes: unknown size ${size} (1.1b, 6.7b)`);
    console.error(`scale ${size}: writing the checkpoint (once)`);
    const model = writeRandomLlama(join(modelsDir, shape.name), shape);
    const work = mkdtempSync(join(modelsDir, `.run-${size}-`));
    try {
      const { evalFile, calibFile } = writeWindows(model, work);
      const ours = (what: string, ...cli: string[]) => {
        console.error(`scale ${size}: evosparse ${what}`);
        return run(process.execPath, [bin, ...cli, "--backend", backend, "--json"]);
      };
      const theirs = (what: string, ...cli: string[]) => {
        console.error(`scale ${size}: PyTorch ${what}`);
        return run(python!, [peer, ...cli]);
      };
      const common = ["--model", model, "--seqlen", String(SEQLEN)];
      if (parts.includes("eval")) {
        // Interleaved, best of three each: the machine is shared and its speed drifts.
        let best: ReturnType<typeof run> | undefined;
        let bestPeer: ReturnType<typeof run> | undefined;
        for (let round = 0; round < rounds; round++) {
          const r = ours("eval", "eval", ...common, "--data", defaultData("test"), "--max-windows", String(EVAL_WINDOWS));
          if (!best || r.json.tokensPerSecond > best.json.tokensPerSecond) best = r;
          if (python) {
            const p = theirs("eval", "eval", model, evalFile, String(SEQLEN));
            if (!bestPeer || p.json.tokensPerSecond > bestPeer.json.tokensPerSecond) bestPeer = p;
          }
        }
        const r = best!;
        rows.push({ size, what: "eval", who: "evosparse", seconds: r.seconds, tokensPerSecond: r.json.tokensPerSecond, peakBytes: r.json.memory.peakRssBytes, estimatedBytes: r.json.memory.estimatedPeakBytes, ppl: r.json.ppl, note: rounds > 1 ? `best of ${rounds}` : undefined });
        if (bestPeer) {
          const p = bestPeer;
          rows.push({ size, what: "eval", who: "PyTorch", seconds: p.seconds, tokensPerSecond: p.json.tokensPerSecond, peakBytes: p.json.peakRssBytes, ppl: p.json.ppl, note: `${p.json.streamed ? "blocks streamed" : "resident"}${rounds > 1 ? `, best of ${rounds}` : ""}` });
        }
      }
      for (const metric of ["wanda", "sparsegpt"]) {
        if (!parts.includes(metric)) continue;
        const out = join(work, `pruned-${metric}`);
        const r = ours(`prune ${metric}`, "prune", ...common, "--metric", metric, "--sparsity", "0.5", "--nsamples", String(CALIBRATION), "--eval", defaultData("test"), "--eval-windows", String(EVAL_WINDOWS), "--out", out);
        rows.push({ size, what: `prune ${metric}`, who: "evosparse", seconds: r.seconds, peakBytes: r.json.memory.peakRssBytes, estimatedBytes: r.json.memory.estimatedPeakBytes, ppl: r.json.evaluation.pruned });
        rmSync(out, { recursive: true, force: true });
        if (python) {
          const p = theirs(`prune ${metric}`, "prune", model, calibFile, evalFile, String(SEQLEN), metric, "0.5");
          rows.push({ size, what: `prune ${metric}`, who: "PyTorch", seconds: p.seconds, peakBytes: p.json.peakRssBytes, ppl: p.json.ppl, note: p.json.streamed ? "blocks streamed" : "resident" });
        }
      }
      for (const metric of ["wanda", "sparsegpt"]) {
        const part = metric === "wanda" ? "search" : "search-sparsegpt";
        if (!parts.includes(part)) continue;
        const out = join(work, part);
        const r = ours(
          part,
          "search", ...common, "--method", "evopress", "--metric", metric, "--fitness", "kl", "--sparsity", "0.5", "--budget-tokens", String(BUDGET_TOKENS),
          "--space", join(projectRoot, "bench", "scale-evopress.json"), "--nsamples", String(CALIBRATION), "--fitness-windows", String(EVAL_WINDOWS),
          "--eval-windows", String(EVAL_WINDOWS), "--out", out,
          // Each baseline's final re-pruning is a SparseGPT prune of the model (minutes at 1.1B): two.
          ...(metric === "sparsegpt" ? ["--baselines", "uniform,owl"] : []),
        );
        const levels = metric === "sparsegpt" ? levelsMade(join(out, "levels")) : undefined;
        rows.push({
          size,
          what: `search (evopress${metric === "sparsegpt" ? ", SparseGPT" : ""}, KL, 16k tokens)`,
          who: "evosparse",
          seconds: r.seconds,
          peakBytes: r.json.memory.peakRssBytes,
          estimatedBytes: r.json.memory.estimatedPeakBytes,
          ppl: r.json.final.results[0].test,
          note: `${r.json.evaluations} evaluations${levels ? `; ${levels.made} levels made (${(levels.levelBytes / GB).toFixed(2)} GB), factors ${(levels.factorBytes / GB).toFixed(2)} GB` : ""}`,
        });
        rmSync(out, { recursive: true, force: true });
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
    console.error(`scale ${size}: ${(parameterCount(shape) / 1e9).toFixed(2)}B parameters done`);
  }
  console.log("| size | run | who | seconds | tokens/s | peak RSS GB | estimated GB | ppl | note |");
  console.log("|---|---|---|---:|---:|---:|---:|---:|---|");
  for (const r of rows) {
    console.log(`| ${r.size} | ${r.what} | ${r.who} | ${fmt(r.seconds, 0)} | ${fmt(r.tokensPerSecond)} | ${fmt(r.peakBytes / GB, 2)} | ${r.estimatedBytes ? fmt(r.estimatedBytes / GB, 2) : ""} | ${fmt(r.ppl, 0)} | ${r.note ?? ""} |`);
  }
  // Rows of sizes and runs not measured this time are kept, so `--parts=eval` refreshes the
  // eval rows without erasing the rest.
  const csvPath = join(projectRoot, "results", "bench", "scale.csv");
  const header = ["size", "run", "who", "seconds", "tokens_per_second", "peak_rss_bytes", "estimated_bytes", "ppl", "note"];
  const measured = new Set(rows.map((r) => `${r.size}\t${r.what}`));
  const kept = existsSync(csvPath)
    ? (parse(readFileSync(csvPath, "utf8"), { columns: true, relax_column_count: true }) as Record<string, string>[])
        .filter((r) => !measured.has(`${r.size}\t${r.run}`))
        .map((r) => header.map((h) => r[h] ?? ""))
    : [];
  const fresh = rows.map((r) => [r.size, r.what, r.who, r.seconds, r.tokensPerSecond ?? "", r.peakBytes, r.estimatedBytes ?? "", r.ppl ?? "", r.note ?? ""]);
  mkdirSync(dirname(csvPath), { recursive: true });
  writeFileSync(csvPath, stringify([header, ...kept, ...fresh]));
  if (!existsSync(peer)) console.log("\n(the PyTorch peer script bench/peer/llama_cpu.py is missing)");
};
