import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const root = mkdtempSync(join(tmpdir(), "evosparse-report-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("prune's report.json", () => {
  it("is the report printed, with the export's seconds measured", () => {
    const out = join(root, "pruned");
    const r = spawnSync(process.execPath, [bin, "prune", "--sparsity", "0.5", "--nsamples", "2", "--backend", "wasm", "--out", out, "--json"], {
      encoding: "utf8",
      env: { ...process.env, CI: "true" },
    });
    expect(r.status).toBe(0);
    const printed = JSON.parse(r.stdout);
    const written = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(written).toEqual(printed);
    expect(written.timings.export).toBeGreaterThan(0);
    for (const stage of ["forward", "statistics", "scoring", "masking", "allocation", "calibrationSampling"]) {
      expect(written.timings[stage], stage).toBeGreaterThanOrEqual(0);
    }
  });
});
