import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { resolve, dirname } from "node:path";

/** The shared real-model and real-text assets live beside the project root. */
export const assetsDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../../shared/assets");
export const haveAssets = existsSync(resolve(assetsDir, "README.md"));
export const asset = (...parts: string[]): string => resolve(assetsDir, ...parts);

if (!haveAssets) {
  console.warn(`shared assets not found at ${assetsDir}: tests that need the real model and texts are skipped`);
}
