import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

/**
 * The software Vulkan driver that `bash .ci/vulkan.sh` puts in .vulkan/ for the WebGPU tests
 * on machines without a GPU. Its variables go into this process's environment, which the
 * forked test workers inherit: LD_LIBRARY_PATH is only read when a process starts, so it
 * cannot be set from inside a test. A driver chosen already (VK_ICD_FILENAMES) is left alone.
 */
const useVulkanEnv = (): void => {
  const file = resolve(dirname(fileURLToPath(import.meta.url)), ".vulkan", "env");
  if (process.env.VK_ICD_FILENAMES || !existsSync(file)) return;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (!match) continue;
    const [, name, raw] = match;
    const value = raw.replace(/^'(.*)'$|^"(.*)"$/, "$1$2");
    const before = process.env[name];
    process.env[name] = name === "LD_LIBRARY_PATH" && before ? `${value}:${before}` : value;
  }
};
useVulkanEnv();

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Model tests run real forwards on the wasm/cpu backends of a 2-core machine.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: "forks",
    maxWorkers: 2,
  },
});
