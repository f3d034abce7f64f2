/**
 * Child process of the memory benchmark: evaluates a checkpoint resident or streamed and
 * prints its own peak resident set size, so each mode is measured in a fresh process.
 */
import { Effect } from "effect";
import { evaluate } from "../src/jobs/eval.ts";

const [model, data, mode, seqlen] = process.argv.slice(2);
const report = await Effect.runPromise(
  evaluate({ model: model!, data: data!, format: "text", seqlen: Number(seqlen), maxWindows: 1, backend: "wasm", streamed: mode === "streamed" }),
);
process.stdout.write(JSON.stringify({ mode, ppl: report.ppl, seconds: report.seconds, maxRssBytes: process.resourceUsage().maxRSS * 1024 }) + "\n");
