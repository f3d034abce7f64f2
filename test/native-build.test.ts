/**
 * The native kernel is optional: `npm ci` runs native/build.mjs, which must succeed where a
 * compiler or the library is missing and say in one line what would enable the kernel.
 * Run here on a copy of native/ with no compiler, make or python on the PATH.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { tempRoot } from "./helpers/embedded.ts";

const source = resolve(import.meta.dirname, "..", "native");
const root = tempRoot("native-build");

describe("building the native kernel", () => {
  it("exits 0 and explains in one line when the build tools are missing, keeping the details in build.log", () => {
    const copy = join(root, "native");
    mkdirSync(copy);
    for (const file of ["binding.gyp", "blas.c", "build.mjs"]) copyFileSync(join(source, file), join(copy, file));
    const r = spawnSync(process.execPath, [join(copy, "build.mjs")], {
      encoding: "utf8",
      env: { PATH: join(root, "empty"), HOME: root },
    });
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^evosparse: native kernel not built \(.+\); wasm will be used/);
    expect(existsSync(join(copy, "build", "Release", "evosparse_blas.node"))).toBe(false);
    expect(readFileSync(join(copy, "build.log"), "utf8").length).toBeGreaterThan(0);
  });

  it("is skipped on request, with the same one line", () => {
    const r = spawnSync(process.execPath, [join(source, "build.mjs")], { encoding: "utf8", env: { ...process.env, EVOSPARSE_SKIP_NATIVE: "1" } });
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe("evosparse: native kernel not built (EVOSPARSE_SKIP_NATIVE=1); wasm will be used");
  });
});
