/**
 * `npm start`'s numbers: the README quotes the test perplexities the main job prints on
 * the native backend; a run in an empty folder must print exactly those, to the two
 * decimals quoted. A change that moves them must update the README with it.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { nativeBlasMissing } from "../src/backend/native-blas.ts";
import { bin, tempRoot } from "./helpers/embedded.ts";

const readme = readFileSync(resolve(import.meta.dirname, "..", "README.md"), "utf8").replace(/\s+/g, " ");
const missing = nativeBlasMissing();
const cwd = tempRoot("start");
if (missing) console.warn(`skipping the npm start golden test: ${missing}`);

describe.skipIf(missing !== undefined)("npm start", () => {
  it("prints the test perplexities the README quotes, and leaves its run folder in ./results", () => {
    const quoted = /on native, DSA (\d+\.\d+) against uniform (\d+\.\d+) and OWL (\d+\.\d+)/.exec(readme);
    expect(quoted, "the README quotes npm start's numbers").not.toBeNull();
    const r = spawnSync(process.execPath, [bin, "start", "--backend", "native"], { cwd, encoding: "utf8", env: { ...process.env, CI: "true" } });
    expect(r.status, r.stderr).toBe(0);
    const row = (method: string): string => {
      // The winner's row is marked beside its name.
      const match = new RegExp(`^\\| [^|]*\\b${method}\\b[^|]*\\| [\\d.]+ \\| ([\\d.]+) \\|`, "m").exec(r.stdout);
      expect(match, `${method} row in\n${r.stdout}`).not.toBeNull();
      return Number(match![1]).toFixed(2);
    };
    expect([row("dsa"), row("uniform"), row("owl")]).toEqual([quoted![1], quoted![2], quoted![3]]);
    const runs = readdirSync(join(cwd, "results"));
    expect(runs).toEqual([expect.stringMatching(/^dsa-\d{8}-\d{6}$/)]);
    expect(existsSync(join(cwd, "results", runs[0]!, "summary.json"))).toBe(true);
    // The whole main job: 1-3 minutes on two cores alone, over 5 when other work shares them.
  }, 900_000);
});
