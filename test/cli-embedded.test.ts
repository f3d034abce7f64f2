/**
 * The asset-dependent cases of test/cli.test.ts on the embedded default model and the
 * Brown texts, so a clone without ../shared/assets still checks `evosparse eval`'s output.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, evosparse, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("cli-embedded");

describe("the evosparse command on the embedded model", () => {
  it("eval --json prints one object with the protocol's fields and names the backend", () => {
    const r = evosparse("eval", "--model", embeddedModel, "--data", "brown:test", "--seqlen", "128", "--max-windows", "2", "--json");
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!);
    for (const k of ["ppl", "nll", "tokens", "windows", "seqlen", "backend", "seconds", "tokensPerSecond"]) expect(out).toHaveProperty(k);
    expect(out.backend).toBe("wasm");
    expect(out.windows).toBe(2);
    expect(out.seqlen).toBe(128);
    // Every position but the first of each window is scored.
    expect(out.tokens).toBe(2 * 127);
    expect(out.ppl).toBeCloseTo(Math.exp(out.nll), 6);
    expect(Number.isFinite(out.ppl)).toBe(true);
  });

  it("a missing data file is a clear error", () => {
    const r = evosparse("eval", "--model", embeddedModel, "--data", join(root, "none.txt"));
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`evosparse: ${join(root, "none.txt")}: no such file`);
  });
});
