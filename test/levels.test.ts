/**
 * SparseGPT's levels (src/prune/levels.ts): a dense-mode SparseGPT candidate read from the
 * levels built ahead is the candidate the run's Hessians make, weight for weight and in
 * perplexity; an allocation off the levels is pruned from the dense Hessians, to the same
 * weights; the build says what it costs, is refused before it starts when the disk is too
 * small, and a stopped build resumes where it stopped.
 */
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { layoutOf } from "../src/allocation/allocation.ts";
import { toAllocation } from "../src/allocation/pattern.ts";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { sizeContext } from "../src/search/fitness.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { plugin as evopress } from "../plugins/evopress/index.ts";
import { embeddedModel } from "./helpers/embedded.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-levels-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("SparseGPT's levels", () => {
  let ckpt: Checkpoint;
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(embeddedModel);
  });
  afterAll(() => ckpt?.close());

  it("give the candidates the Hessians give, and resume a stopped build", async () => {
    const tokenizer = tokenizerFor(ckpt);
    const calibration = calibrationWindows({ source: defaultData("calibration"), samples: 2, seqlen: 64 }, tokenizer);
    const windows = evaluationWindows({ data: defaultData("validation"), format: "text", maxWindows: 2 }, tokenizer, 64);
    const levelsOf = [0.3, 0.5, 0.7];
    const dir = join(root, "levels");
    const lines: string[] = [];
    const layoutSize = (p: Pruner) => p.layout.length;
    const fresh = () => {
      const probe = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration });
      const n = layoutSize(probe);
      probe.dispose();
      return n;
    };
    const n = fresh();
    const sparsities = Array.from({ length: n }, () => levelsOf);
    const fromLevels = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    const fromHessians = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration });
    try {
      await fromLevels.prepareLevels((line) => lines.push(line));
      expect(lines[0]).toMatch(/^SparseGPT levels: every linear pruned once at each level the search can reach, [\d.]+ GiB on disk in .* \(8 of 8 blocks to build\)$/);
      // Three allocations on the levels, then two off them (a baseline's ramp, a grid's
      // candidate): those are pruned from the dense Hessians instead, to the same weights.
      const offLevels = [Array.from({ length: n }, () => 0.45), Array.from({ length: n }, (_, k) => (k % 2 === 0 ? 0.3 : 0.62))];
      for (const choice of [...[[0, 1, 2], [2, 0, 1], [1, 1, 0]].map((pick) => Array.from({ length: n }, (_, k) => levelsOf[pick[k % 3]!]!)), ...offLevels]) {
        const allocation = toAllocation(choice, fromLevels.layout, { kind: "unstructured" });
        await fromLevels.apply(allocation);
        await fromHessians.apply(allocation);
        const a = fromLevels.prunedBlocks();
        const b = fromHessians.prunedBlocks();
        a.forEach((block, i) => {
          for (const [name, l] of Object.entries(block.linears)) expect(Buffer.from(l.weight.data.buffer).equals(Buffer.from(b[i]!.linears[name]!.weight.data.buffer)), `${i}.${name}`).toBe(true);
        });
        expect((await fromLevels.perplexity(windows)).ppl).toBe((await fromHessians.perplexity(windows)).ppl);
      }
    } finally {
      fromLevels.dispose();
      fromHessians.dispose();
    }
    // A build stopped after some blocks: only the others are built again.
    rmSync(join(dir, "block-5.json"));
    rmSync(join(dir, "block-6.json"));
    const again: string[] = [];
    const resumed = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    try {
      await resumed.prepareLevels((line) => again.push(line));
      expect(again[0]).toMatch(/\(2 of 8 blocks to build\)$/);
      expect(again.slice(1)).toEqual(["  levels of block 5 built", "  levels of block 6 built"]);
    } finally {
      resumed.dispose();
    }
  }, 120_000);

  it("are refused before any is built when the disk has less room than they take, naming how to ask for fewer", async () => {
    const tokenizer = tokenizerFor(ckpt);
    const calibration = calibrationWindows({ source: defaultData("calibration"), samples: 2, seqlen: 64 }, tokenizer);
    const probe = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration });
    const n = probe.layout.length;
    probe.dispose();
    const dir = join(root, "short-disk");
    const sparsities = Array.from({ length: n }, () => [0.5, 0.7]);
    const lines: string[] = [];
    const short = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities, fewer: "a space with maxLevels 2", freeBytes: () => 4096 } });
    try {
      await expect(short.prepareLevels((line) => lines.push(line))).rejects.toThrow(
        /short-disk: the SparseGPT levels need [\d.]+ GiB on disk and 0\.0 GiB is free; use --mode sequential, a space with maxLevels 2 or another disk/,
      );
    } finally {
      short.dispose();
    }
    expect(lines).toHaveLength(1);
    expect(readdirSync(dir).filter((f) => f.startsWith("block-"))).toEqual([]);
  }, 120_000);
});

describe("evopress's levels", () => {
  it("are about three times EvoPress's per linear under the default space, as the refusal says", () => {
    const ckpt = openCheckpointSync(embeddedModel);
    try {
      const layout = layoutOf(ckpt.spec);
      const context = sizeContext(layout, ckpt.spec.numLayers, 0.7, { kind: "unstructured" });
      const copies = (file: string): number => {
        const levels = evopress.levels!(context, loadSearchSpace(evopress, file));
        return levels.reduce((total, l, j) => total + l.length * context.linears[j]!.params, 0) / context.linears.reduce((total, l) => total + l.params, 0);
      };
      const perBlock = copies("evopress.json");
      const published = copies("evopress-linear.json");
      expect(published).toBeLessThanOrEqual(17);
      expect(published / perBlock).toBeGreaterThan(0.25);
      expect(published / perBlock).toBeLessThan(0.45);
      expect(evopress.fewerLevels).toMatch(/--space evopress-linear\.json \(EvoPress's levels, about a third of the disk\)/);
    } finally {
      ckpt.close();
    }
  });
});
