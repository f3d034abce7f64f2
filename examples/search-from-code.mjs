// A search through the API instead of the command line: the same settings, the same run
// folder (results/ of the working directory), and the summary as a typed object.
//
//   node search-from-code.mjs [method] [generations]
import { search } from "evosparse";

const method = process.argv[2] ?? new URL("./quadratic-method.mjs", import.meta.url).pathname;
const generations = Number(process.argv[3] ?? 3);

const summary = await search({
  method,
  sparsity: 0.5,
  // Small enough to finish in a minute on a laptop's CPU with the embedded model.
  nsamples: 4,
  seqlen: 128,
  fitnessWindows: 2,
  evalWindows: 4,
  population: 6,
  generations,
  finalMode: "dense",
  backend: "wasm",
  onGeneration: (record, total) => console.error(`generation ${record.generation + 1}/${total}: best ${record.best?.toFixed(3)}`),
});

const best = summary.final.results[0];
console.log(`best ${summary.settings.method === method ? best.method : summary.settings.method}: ${summary.best.genome}`);
console.log(`test perplexity ${best.test.toFixed(3)} (dense ${summary.final.dense.toFixed(3)}) after ${summary.generations} generations, ${summary.evaluations} evaluations`);
console.log(`block sparsities: ${best.sparsities.map((s) => s.toFixed(3)).join(" ")}`);
console.log(`run folder: ${summary.out}`);
