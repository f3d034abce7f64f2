/**
 * SparseGPT's levels (src/prune/levels.ts): a dense-mode SparseGPT candidate read from the
 * levels built ahead is the candidate the run's Hessians make, weight for weight and in
 * perplexity; an allocation off the levels is pruned from the dense Hessians, to the same
 * weights; the build says what it costs, is refused before it starts when the disk is too
 * small, and a stopped build resumes where it stopped.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { layoutOf } from "../src/allocation/allocation.ts";
import { toAllocation } from "../src/allocation/pattern.ts";
import { initBackend } from "../src/backend/backend.ts";
import { openCheckpointSync } from "../src/checkpoint/open.ts";
import type { Checkpoint } from "../src/checkpoint/types.ts";
import { calibrationWindows } from "../src/data/calibration.ts";
import { defaultData } from "../src/defaults.ts";
import { evaluationWindows, tokenizerFor } from "../src/eval/inputs.ts";
import { LevelDatabase, packLevel, unpackLevel } from "../src/prune/levels.ts";
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
    // Followed level by level instead: every level of the blocks to build, once, in order,
    // and no line a block.
    rmSync(join(dir, "block-2.json"));
    const followed: [number, number][] = [];
    const quiet: string[] = [];
    const watched = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    try {
      await watched.prepareLevels((line) => quiet.push(line), (done, total) => followed.push([done, total]));
      const levelsOfBlock2 = watched.layout.filter((slot) => slot.block === 2).length * levelsOf.length;
      expect(followed).toEqual(Array.from({ length: levelsOfBlock2 + 1 }, (_, i) => [i, levelsOfBlock2]));
      expect(quiet).toHaveLength(1);
      expect(quiet[0]).toMatch(/\(1 of 8 blocks to build\)$/);
    } finally {
      watched.dispose();
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

describe("a build of other settings or another format", () => {
  it("is not read: the levels are built again", async () => {
    await initBackend("wasm");
    const ckpt = openCheckpointSync(embeddedModel);
    const calibration = calibrationWindows({ source: defaultData("calibration"), samples: 2, seqlen: 64 }, tokenizerFor(ckpt));
    const dir = join(root, "rebuilt");
    const build = async (): Promise<string[]> => {
      const probe = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration });
      const sparsities = probe.layout.map(() => [0.7]);
      probe.dispose();
      const lines: string[] = [];
      const pruner = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
      try {
        await pruner.prepareLevels((line) => lines.push(line));
      } finally {
        pruner.dispose();
      }
      return lines;
    };
    try {
      expect((await build())[0]).toMatch(/\(8 of 8 blocks to build\)$/);
      expect(await build()).toEqual([]);
      // As an earlier version's manifest would read (unpacked levels): every block again.
      writeFileSync(join(dir, "manifest.json"), "0".repeat(64));
      expect((await build())[0]).toMatch(/\(8 of 8 blocks to build\)$/);
    } finally {
      ckpt.close();
    }
  }, 120_000);
});

describe("a level as stored", () => {
  const weights = (width: 2 | 4) =>
    fc
      .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: width === 2 ? 0xffff : 0xffffffff })), { maxLength: 300 })
      .map((words) => new Uint8Array((width === 2 ? Uint16Array.from(words) : Uint32Array.from(words)).buffer));

  it("property: unpacks to the bytes it was packed from, every weight bit for bit (-0 included), in a bit a pruned weight", () => {
    for (const width of [2, 4] as const) {
      fc.assert(
        fc.property(weights(width), fc.nat(7), (bytes, shift) => {
          // At any offset, as a file's read buffer may be.
          const at = new Uint8Array(bytes.length + shift).subarray(shift);
          at.set(bytes);
          const packed = packLevel(at, width);
          const n = bytes.length / width;
          const kept = (width === 2 ? new Uint16Array(bytes.buffer) : new Uint32Array(bytes.buffer)).filter((w) => w !== 0).length;
          expect(packed.length).toBe(Math.ceil(n / 64) * 8 + kept * width);
          expect(Buffer.from(unpackLevel(packed, width, n, "x")).equals(Buffer.from(bytes))).toBe(true);
          const shifted = new Uint8Array(packed.length + shift).subarray(shift);
          shifted.set(packed);
          expect(Buffer.from(unpackLevel(shifted, width, n, "x")).equals(Buffer.from(bytes))).toBe(true);
        }),
        { numRuns: 300 },
      );
    }
    // A negative zero in bfloat16 is kept as itself.
    const negativeZero = new Uint8Array([0x00, 0x80, 0, 0]);
    expect(Array.from(unpackLevel(packLevel(negativeZero, 2), 2, 2, "x"))).toEqual([0x00, 0x80, 0, 0]);
  });

  it("property: a damaged level (cut, grown, a stray bit) is refused in one line, never read as weights", () => {
    fc.assert(
      fc.property(weights(2).filter((b) => b.length > 0), fc.integer({ min: 1, max: 9 }), fc.boolean(), (bytes, by, cut) => {
        const n = bytes.length / 2;
        const packed = packLevel(bytes, 2);
        const damaged = cut ? packed.subarray(0, Math.max(0, packed.length - by)) : Uint8Array.from([...packed, ...new Array<number>(by).fill(7)]);
        expect(() => unpackLevel(damaged, 2, n, "levels/block-0.bin (block 0 q level)")).toThrow(/^levels\/block-0\.bin \(block 0 q level\): a damaged level .*delete the levels folder/);
        if (n % 64 !== 0) {
          // A bit past the last weight, with the bytes of one more weight: the length agrees.
          const stray = Uint8Array.from([...packed, 1, 2]);
          stray[Math.ceil(n / 64) * 8 - 1]! |= 0x80;
          expect(() => unpackLevel(stray, 2, n, "x")).toThrow(/a damaged level/);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe("evopress's levels", () => {
  it("take about a fifth of the disk with evopress-linear.json that they take with the default space, as the refusal says", () => {
    const ckpt = openCheckpointSync(embeddedModel);
    try {
      const layout = layoutOf(ckpt.spec);
      const context = sizeContext(layout, ckpt.spec.numLayers, 0.7, { kind: "unstructured" });
      const disk = (file: string): { bytes: number; perLinear: number } => {
        const sparsities = evopress.levels!(context, loadSearchSpace(evopress, file));
        const levels = new LevelDatabase(ckpt, layout, "BF16", { dir: join(root, "unused"), sparsities, keyOf: (_b, _l, s) => String(s) });
        return { bytes: levels.bytes(), perLinear: sparsities.reduce((n, l) => n + l.length, 0) / sparsities.length };
      };
      const perBlock = disk("evopress.json");
      const published = disk("evopress-linear.json");
      expect(published.perLinear).toBeLessThanOrEqual(17);
      expect(perBlock.perLinear).toBeGreaterThan(45);
      // Packed, a level near 70% costs less than one near 0%, and the default reaches both.
      expect(published.bytes / perBlock.bytes).toBeGreaterThan(0.15);
      expect(published.bytes / perBlock.bytes).toBeLessThan(0.3);
      // bfloat16 at 70%: a level a weight is 1/8 of a byte of mask and 2 bytes for 30% of the weights.
      const weights = context.linears.reduce((n, l) => n + l.params, 0);
      const at70 = new LevelDatabase(ckpt, layout, "BF16", { dir: join(root, "unused"), sparsities: context.linears.map(() => [0.7]), keyOf: (_b, _l, s) => String(s) });
      expect(at70.bytes() / weights).toBeCloseTo(0.125 + 0.3 * 2, 2);
      expect(evopress.fewerLevels).toMatch(/--space evopress-linear\.json \(EvoPress's levels, about a fifth of the disk\)/);
    } finally {
      ckpt.close();
    }
  });
});
