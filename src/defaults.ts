import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

/**
 * The package's root (the repository, or the installed package's folder), found from this
 * file so commands work from any directory: the nearest folder above holding package.json
 * (src/ from source, dist/src/ compiled).
 */
const findRoot = (): string => {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) return resolve(dirname(fileURLToPath(import.meta.url)), "..");
  }
};
export const projectRoot = findRoot();

/** The small LLaMA-architecture model that ships with evosparse, trained on the Brown corpus. */
export const defaultModel = (): string => resolve(projectRoot, "models", "brown-llama");

/** Built-in text parts are named `brown:<part>`; they are read from the installed corpus package. */
export const defaultData = (part: "train" | "validation" | "calibration" | "test"): string => `brown:${part}`;

/**
 * Where run folders go by default: results/ of the working directory, so an installed
 * evosparse writes beside the user's work and never inside its own package.
 */
export const resultsDir = (): string => resolve(process.cwd(), "results");

/**
 * Training-free allocations a search scores beside itself (`--baselines`), re-prunes at
 * the end and may start from: the ones a user would otherwise pick instead of a search.
 */
export const defaultBaselines: readonly string[] = ["uniform", "owl", "atp", "dlp", "alphapruning"];
