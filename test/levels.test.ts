/**
 * SparseGPT's levels (src/prune/levels.ts): a dense-mode SparseGPT candidate read from the
 * levels, each pruned from its stored factor when first asked for, is the candidate the
 * run's Hessians make, weight for weight and in perplexity; only the levels asked for are
 * made; an allocation off the levels is pruned from the dense Hessians, to the same
 * weights; the factoring says what it costs, is refused before it starts when the disk is
 * too small for the factors, warns when it may be for the levels, and a stopped factoring
 * resumes where it stopped.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
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
import { LevelDatabase, packLevel, readFactorFile, unpackLevel, writeFactorFile } from "../src/prune/levels.ts";
import { Pruner } from "../src/prune/pruner.ts";
import { sizeContext } from "../src/search/fitness.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { plugin as evopress } from "../plugins/evopress/index.ts";
import { embeddedModel } from "./helpers/embedded.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-levels-"));

/** The level files a levels folder holds, as `block-B/LINEAR-INDEX.level`, sorted. */
const levelFiles = (dir: string): string[] =>
  readdirSync(dir)
    .filter((f) => /^block-\d+$/.test(f))
    .flatMap((b) => readdirSync(join(dir, b)).map((f) => `${b}/${f}`))
    .sort();
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("SparseGPT's levels", () => {
  let ckpt: Checkpoint;
  beforeAll(async () => {
    await initBackend("wasm");
    ckpt = openCheckpointSync(embeddedModel);
  });
  afterAll(() => ckpt?.close());

  it("give the candidates the Hessians give, are made only when asked for, and resume a stopped factoring", async () => {
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
      expect(lines[0]).toMatch(
        /^SparseGPT levels: each linear pruned at a level when a candidate first asks for it, from its Hessian's factor; factors [\d.]+ (MiB|GiB) now \(8 of 8 blocks to factor\), levels up to [\d.]+ (MiB|GiB) as the search reaches them, in .*levels$/,
      );
      // Factored, and not one level made yet: a factor an input (q, k and v read one, as do
      // gate and up), taking what the estimate printed said.
      expect(levelFiles(dir)).toEqual([]);
      expect(JSON.parse(readFileSync(join(dir, "block-0.json"), "utf8")).map((f: { linears: string[] }) => f.linears)).toEqual([["q", "k", "v"], ["o"], ["gate", "up"], ["down"]]);
      const factorFiles = readdirSync(dir).filter((f) => f.endsWith(".factor"));
      expect(factorFiles).toHaveLength(8 * 4);
      const estimate = new LevelDatabase(ckpt, fromLevels.layout, ckpt.storageDtype, { dir, sparsities, keyOf: (_b, _l, s) => String(s) }).factorBytes();
      expect(factorFiles.reduce((sum, f) => sum + statSync(join(dir, f)).size, 0)).toBe(estimate);
      const asked = new Set<string>();
      // Three allocations on the levels, then two off them (a baseline's ramp, a grid's
      // candidate): those are pruned from the dense Hessians instead, to the same weights.
      const offLevels = [Array.from({ length: n }, () => 0.45), Array.from({ length: n }, (_, k) => (k % 2 === 0 ? 0.3 : 0.62))];
      for (const choice of [...[[0, 1, 2], [2, 0, 1], [1, 1, 0]].map((pick) => Array.from({ length: n }, (_, k) => levelsOf[pick[k % 3]!]!)), ...offLevels]) {
        const allocation = toAllocation(choice, fromLevels.layout, { kind: "unstructured" });
        for (const e of allocation) if (levelsOf.includes(e.sparsity)) asked.add(`block-${e.block}/${e.linear}-${levelsOf.indexOf(e.sparsity)}.level`);
        await fromLevels.apply(allocation);
        await fromHessians.apply(allocation);
        const a = fromLevels.prunedBlocks();
        const b = fromHessians.prunedBlocks();
        a.forEach((block, i) => {
          for (const [name, l] of Object.entries(block.linears)) expect(Buffer.from(l.weight.data.buffer).equals(Buffer.from(b[i]!.linears[name]!.weight.data.buffer)), `${i}.${name}`).toBe(true);
        });
        expect((await fromLevels.perplexity(windows)).ppl).toBe((await fromHessians.perplexity(windows)).ppl);
        // Only the levels candidates on the levels asked for are on disk.
        expect(levelFiles(dir)).toEqual([...asked].sort());
      }
      expect(asked.size).toBeLessThan(n * levelsOf.length);
      // Asked for again (stored now), by a pruner of its own: the same weights.
      const again = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
      try {
        await again.prepareLevels();
        const allocation = toAllocation(Array.from({ length: n }, (_, k) => levelsOf[k % 3]!), again.layout, { kind: "unstructured" });
        await again.apply(allocation);
        await fromHessians.apply(allocation);
        const a = again.prunedBlocks();
        fromHessians.prunedBlocks().forEach((block, i) => {
          for (const [name, l] of Object.entries(block.linears)) expect(Buffer.from(a[i]!.linears[name]!.weight.data.buffer).equals(Buffer.from(l.weight.data.buffer)), `${i}.${name}`).toBe(true);
        });
      } finally {
        again.dispose();
      }
      // A level that cannot be stored (here block 3's folder cannot be made; a full disk
      // alike) is the candidate's all the same, and nothing of it is left behind.
      rmSync(join(dir, "block-3"), { recursive: true, force: true });
      writeFileSync(join(dir, "block-3"), "not a folder");
      const unstored = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
      try {
        await unstored.prepareLevels();
        const allocation = toAllocation(Array.from({ length: n }, (_, k) => levelsOf[(k + 1) % 3]!), unstored.layout, { kind: "unstructured" });
        await unstored.apply(allocation);
        await fromHessians.apply(allocation);
        expect((await unstored.perplexity(windows)).ppl).toBe((await fromHessians.perplexity(windows)).ppl);
        const a = unstored.prunedBlocks();
        fromHessians.prunedBlocks().forEach((block, i) => {
          for (const [name, l] of Object.entries(block.linears)) expect(Buffer.from(a[i]!.linears[name]!.weight.data.buffer).equals(Buffer.from(l.weight.data.buffer)), `${i}.${name}`).toBe(true);
        });
        expect(readdirSync(dir).filter((f) => f.includes("partial"))).toEqual([]);
      } finally {
        unstored.dispose();
        rmSync(join(dir, "block-3"), { force: true });
      }
    } finally {
      fromLevels.dispose();
      fromHessians.dispose();
    }
    // A damaged factor is refused in one line when a level is made from it, never solved with.
    const cut = join(dir, "block-7-down.factor");
    const whole = readFileSync(cut);
    truncateSync(cut, whole.length - 8);
    rmSync(join(dir, "block-7"), { recursive: true, force: true });
    const damaged = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    try {
      await damaged.prepareLevels();
      await expect(damaged.apply(toAllocation(Array.from({ length: n }, () => 0.5), damaged.layout, { kind: "unstructured" })).then(() => damaged.perplexity(windows))).rejects.toThrow(
        /block-7-down\.factor: a damaged factor \(\d+ bytes where \d+ inputs take \d+\); delete the levels folder to make them again/,
      );
    } finally {
      damaged.dispose();
    }
    writeFileSync(cut, whole);
    // A damaged index: refused in one line too, never read as factors.
    const index = join(dir, "block-7.json");
    const indexBytes = readFileSync(index);
    for (const bad of ["", "{", "[1]", JSON.stringify([{ linears: ["q"], file: "../../etc/passwd", inFeatures: 8, damping: 0, dead: [] }])]) {
      writeFileSync(index, bad);
      const reader = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
      try {
        await reader.prepareLevels();
        await expect(reader.apply(toAllocation(Array.from({ length: n }, () => 0.5), reader.layout, { kind: "unstructured" })).then(() => reader.perplexity(windows))).rejects.toThrow(
          /block-7\.json: not a factor index of the levels; delete the levels folder to make them again/,
        );
      } finally {
        reader.dispose();
      }
    }
    writeFileSync(index, indexBytes);
    // A factoring stopped after some blocks: only the others are factored again.
    rmSync(join(dir, "block-5.json"));
    rmSync(join(dir, "block-6.json"));
    const again: string[] = [];
    const resumed = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    try {
      await resumed.prepareLevels((line) => again.push(line));
      expect(again[0]).toMatch(/\(2 of 8 blocks to factor\)/);
      expect(again.slice(1)).toEqual(["  block 5 factored", "  block 6 factored"]);
    } finally {
      resumed.dispose();
    }
    // Followed linear by linear instead: every linear of the blocks to factor, once, in
    // order, and no line a block.
    rmSync(join(dir, "block-2.json"));
    const followed: [number, number][] = [];
    const quiet: string[] = [];
    const watched = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir, sparsities } });
    try {
      await watched.prepareLevels((line) => quiet.push(line), (done, total) => followed.push([done, total]));
      const linearsOfBlock2 = watched.layout.filter((slot) => slot.block === 2).length;
      expect(followed).toEqual(Array.from({ length: linearsOfBlock2 + 1 }, (_, i) => [i, linearsOfBlock2]));
      expect(quiet).toHaveLength(1);
      expect(quiet[0]).toMatch(/\(1 of 8 blocks to factor\)/);
    } finally {
      watched.dispose();
    }
  }, 120_000);

  it("are refused before any factor is made when the disk has less room than the factors; a disk that may not hold every level is named with how to ask for fewer", async () => {
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
        /short-disk: the SparseGPT factors need [\d.]+ GiB on disk and 0\.0 GiB is free; use --mode sequential or another disk/,
      );
    } finally {
      short.dispose();
    }
    expect(lines).toHaveLength(1);
    expect(readdirSync(dir).filter((f) => f.startsWith("block-"))).toEqual([]);
    // Room for the factors, not for every level: factored all the same, with a word of it.
    const roomy = join(root, "roomy-disk");
    const said: string[] = [];
    const probeLevels = new LevelDatabase(ckpt, layoutOf(ckpt.spec), ckpt.storageDtype, { dir: roomy, sparsities, keyOf: (_b, _l, s) => String(s) });
    const room = probeLevels.factorBytes() + probeLevels.bytes() / 2;
    const part = Pruner.create(ckpt, { metric: "sparsegpt", mode: "dense", calibration, levels: { dir: roomy, sparsities, fewer: "a space with maxLevels 2", freeBytes: () => room } });
    try {
      await part.prepareLevels((line) => said.push(line));
    } finally {
      part.dispose();
    }
    expect(said[1]).toMatch(/^  [\d.]+ GiB is free: if the search reaches more levels than fit, those that do not are pruned again each time a candidate asks for them \(the same weights, slower\); a space with maxLevels 2 asks for fewer$/);
    expect(readdirSync(roomy).filter((f) => f.endsWith(".json") && f.startsWith("block-"))).toHaveLength(8);
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
      expect((await build())[0]).toMatch(/\(8 of 8 blocks to factor\)/);
      expect(await build()).toEqual([]);
      // As an earlier version's manifest would read (every level built ahead): every block again.
      writeFileSync(join(dir, "manifest.json"), "0".repeat(64));
      expect((await build())[0]).toMatch(/\(8 of 8 blocks to factor\)/);
    } finally {
      ckpt.close();
    }
  }, 120_000);
});

describe("a factor as stored", () => {
  it("property: its file holds the upper triangle, n(n+1)/2 values, and reads back to the factor bit for bit (zero below the diagonal); a cut or grown file is refused in one line", () => {
    const file = join(root, "property.factor");
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 24 }), fc.infiniteStream(fc.double()), fc.integer({ min: -16, max: 16 }).filter((d) => d !== 0), (n, values, change) => {
        const upper = new Float64Array(n * n);
        for (let i = 0; i < n; i++) for (let j = i; j < n; j++) upper[i * n + j] = values.next().value;
        writeFactorFile(file, upper, n);
        expect(statSync(file).size).toBe(((n * (n + 1)) / 2) * 8);
        expect(Buffer.from(readFactorFile(file, n).buffer).equals(Buffer.from(upper.buffer))).toBe(true);
        const bytes = readFileSync(file);
        writeFileSync(file, change < 0 ? bytes.subarray(0, Math.max(0, bytes.length + change)) : Buffer.concat([bytes, Buffer.alloc(change)]));
        expect(() => readFactorFile(file, n)).toThrow(/property\.factor: a damaged factor \(\d+ bytes where \d+ inputs take \d+\); delete the levels folder to make them again/);
      }),
      { numRuns: 200 },
    );
  });
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
  it("would take about a fifth of the disk with evopress-linear.json that they would with the default space, as the run says when they may not fit", () => {
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
