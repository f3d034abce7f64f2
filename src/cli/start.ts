import type { BackendChoice } from "../backend/backend.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import { comparisonTable, runSearch, type SearchArgs } from "./search.ts";

/**
 * The first-run job: a short DSA search on the embedded model at 70% (Wanda), then its
 * best allocation and the default baselines re-pruned with the standard protocol and compared on
 * the held-out test text. Sized to take a few minutes on two cores.
 */
export const startArgs = (backend: BackendChoice): SearchArgs => ({
  method: "dsa",
  sparsity: 0.7,
  metric: "wanda",
  pattern: "unstructured",
  model: defaultModel(),
  calib: defaultData("calibration"),
  field: "text",
  nsamples: 32,
  calibSeed: 0,
  fitnessData: defaultData("validation"),
  fitnessWindows: 8,
  eval: defaultData("test"),
  evalFormat: "text",
  evalWindows: 128,
  population: 8,
  generations: 6,
  seed: 0,
  workers: 1,
  mode: "dense",
  finalMode: "sequential",
  batch: 4,
  json: false,
  backend,
});

export const startCommand = {
  command: "start",
  describe: "Run the main job: a short DSA search on the embedded model, compared with the training-free baselines",
  builder: {},
  handler: async (argv: { backend: BackendChoice }) => {
    process.stderr.write("a short DSA search on the embedded model (70% sparsity, Wanda); evosparse search --help shows every setting\n");
    const summary = await runSearch(startArgs(argv.backend));
    if (summary) process.stdout.write(comparisonTable(summary));
  },
};
