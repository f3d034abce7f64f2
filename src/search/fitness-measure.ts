/**
 * Fitness measures beside the built-in ppl and kl: a user's module exporting `fitness`,
 * named with `--fitness FILE|PACKAGE`. A measure sees numbers only: for each fitness
 * window, the pruned model's summed next-token negative log-likelihood (nats) and the
 * tokens it scored, and returns one number, lower better (e.g. the worst window's
 * perplexity, to protect the hardest text). It runs wherever the candidates are scored:
 * this process and its worker threads.
 */
import { DataError, UsageError } from "../errors.ts";
import { importModuleFile, isPathSpec, resolveModuleFile, resolvePackage } from "../user-module.ts";

export interface WindowLoss {
  /** Summed next-token negative log-likelihood of the window, in nats. */
  readonly nll: number;
  /** Tokens scored in the window. */
  readonly tokens: number;
}

export interface FitnessMeasurePlugin {
  /** The measure's name in tables and plots. */
  readonly name: string;
  readonly describe: string;
  /** The fitness of one candidate from its windows' losses, in window order; lower is better. */
  score(windows: readonly WindowLoss[]): number;
}

/** The measures evosparse computes itself. */
export const BUILT_IN_FITNESS = ["ppl", "kl"] as const;

export const isBuiltInFitness = (spec: string | undefined): spec is "ppl" | "kl" | undefined =>
  spec === undefined || (BUILT_IN_FITNESS as readonly string[]).includes(spec);

/** What a run saves: a built-in's or a package's name, a file as its absolute path. */
export const fitnessSpec = (spec: string, cwd = process.cwd()): string => (isBuiltInFitness(spec) || !isPathSpec(spec) ? spec : resolveModuleFile(spec, cwd));

const cache = new Map<string, Promise<FitnessMeasurePlugin>>();

/** Loads a user's fitness measure (file or package); a module without a valid `fitness` is a DataError naming it. */
export const loadFitnessMeasure = (spec: string, cwd = process.cwd()): Promise<FitnessMeasurePlugin> => {
  const key = `${cwd}\0${spec}`;
  let loading = cache.get(key);
  if (!loading) {
    loading = (async () => {
      const file = isPathSpec(spec) ? resolveModuleFile(spec, cwd) : resolvePackage(spec, cwd);
      if (file === undefined) {
        throw new UsageError({ problem: `--fitness ${spec}: not ${BUILT_IN_FITNESS.join(" or ")}, a .ts, .mts or .mjs file exporting \`fitness\`, or an installed package` });
      }
      const module = await importModuleFile(file);
      const measure = module.fitness as Partial<FitnessMeasurePlugin> | undefined;
      if (typeof measure !== "object" || measure === null) throw new DataError({ file, problem: "does not export `fitness`" });
      if (typeof measure.name !== "string" || measure.name === "") throw new DataError({ file, problem: "its fitness has no name" });
      if (typeof measure.score !== "function") throw new DataError({ file, problem: "its fitness has no score(windows) function" });
      return measure as FitnessMeasurePlugin;
    })();
    cache.set(key, loading);
  }
  return loading;
};
