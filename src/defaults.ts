import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";

/** The repository root, found from this file so commands work from any directory. */
export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The small LLaMA-architecture model that ships with evosparse, trained on the Brown corpus. */
export const defaultModel = (): string => resolve(projectRoot, "models", "brown-llama");

/** Built-in text parts are named `brown:<part>`; they are read from the installed corpus package. */
export const defaultData = (part: "train" | "validation" | "calibration" | "test"): string => `brown:${part}`;

export const resultsDir = (): string => resolve(projectRoot, "results");
