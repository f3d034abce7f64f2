import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Bounds } from "../src/allocation/project.ts";
import { evolve, type EvolveOptions, type EvolveResult } from "../src/engine/evolve.ts";
import { fitnessOk, type Fidelity, type Fitness, type Genome } from "../src/engine/genome.ts";
import { drawChildren } from "../src/engine/staged.ts";
import type { Strategy } from "../src/engine/strategy.ts";
import { DataError, UsageError } from "../src/errors.ts";
import { Rng } from "../src/rng.ts";
import type { BlockAllocation, MethodContext } from "../src/search/plugin.ts";
import { runMethod } from "../src/search/run-method.ts";
import { loadSearchSpace, parseSearchSpace, resolveSpaceFile } from "../src/search/space.ts";
import { levelGrid, plugin, startLevels, unitContext, type EvoPressSpace, type Levels } from "../plugins/evopress/index.ts";

import { fakeClock, store, type Clocked } from "./helpers/engine.ts";

// ---------------------------------------------------------------- contexts

const noStatistics: MethodContext["statistics"] = {
  outlierShares: () => [],
  fisherTraces: () => [],
  elementScores: () => new Float32Array(0),
  nonOutlierRatio: () => 0,
};

const names = ["q", "k", "v", "o", "gate", "up", "down"];

/** Linears of `params`, `perBlock` to a block, named as a LLaMA block's. */
const contextOf = (params: readonly number[], perBlock: number, target: number, bounds: Bounds): MethodContext => {
  const linears = params.map((p, j) => ({ block: Math.floor(j / perBlock), linear: names[j % perBlock % names.length]!, params: p }));
  const blocks = Math.ceil(params.length / perBlock);
  return {
    blocks,
    blockParams: Array.from({ length: blocks }, (_, b) => linears.filter((l) => l.block === b).reduce((n, l) => n + l.params, 0)),
    linears,
    target,
    bounds,
    pattern: { kind: "unstructured" },
    statistics: noStatistics,
  };
};

const boundsArb = (target: number): fc.Arbitrary<Bounds> =>
  fc.oneof(
    fc.constant({ lo: 0, hi: 0.99 }),
    fc
      .record({ lo: fc.double({ min: 0, max: 1, noNaN: true }), hi: fc.double({ min: 0, max: 1, noNaN: true }) })
      .map(({ lo, hi }) => ({ lo: lo * target, hi: target + hi * (0.99 - target) })),
  );

const spaceArb: fc.Arbitrary<EvoPressSpace> = fc.record({
  levelSize: fc.double({ min: 1e-4, max: 0.3, noNaN: true }),
  maxLevels: fc.option(fc.integer({ min: 1, max: 12 }), { nil: undefined }),
  offspring: fc.integer({ min: 1, max: 12 }),
  stages: fc.constant([{ survivors: 1, tokens: 64 }]),
  bounds: fc.option(
    fc.record({ lo: fc.double({ min: 0, max: 0.3, noNaN: true }), hi: fc.double({ min: 0.7, max: 0.98, noNaN: true }) }),
    { nil: undefined },
  ),
}).map(({ maxLevels, bounds, ...rest }) => ({ ...rest, ...(maxLevels !== undefined ? { maxLevels } : {}), ...(bounds !== undefined ? { bounds } : {}) }));

const caseArb = fc
  .record({
    params: fc.array(fc.integer({ min: 1, max: 1_000_000 }), { minLength: 2, maxLength: 40 }),
    perBlock: fc.integer({ min: 1, max: 7 }),
    target: fc.double({ min: 0.3, max: 0.7, noNaN: true }),
    space: spaceArb,
    seed: fc.integer({ min: 0, max: 2 ** 31 }),
  })
  .chain((c) => boundsArb(c.target).map((bounds) => ({ ...c, context: contextOf(c.params, c.perBlock, c.target, bounds) })));

const method = plugin.method;
if (method.kind !== "evolve" || method.strategy === undefined) throw new Error("evopress is an evolutionary method with its own strategy");
const genomeOf = (context: MethodContext, space: EvoPressSpace) => method.genome(context, space) as Genome<Levels, BlockAllocation>;

/** The bounds the method works in: the run's, narrowed by the space's. */
const boundsOf = (context: MethodContext, space: EvoPressSpace): Bounds =>
  space.bounds === undefined ? context.bounds : { lo: Math.max(context.bounds.lo, space.bounds.lo), hi: Math.min(context.bounds.hi, space.bounds.hi) };

/** Whether some linear can go down a level and another up one, from uniform. */
const switchable = (context: MethodContext, space: EvoPressSpace): boolean => {
  const { lo, hi } = boundsOf(context, space);
  if (!(lo <= context.target && context.target <= hi)) return false;
  const params = context.linears.map((l) => l.params);
  const weights = Math.max(1, Math.round((space.levelSize * params.reduce((a, b) => a + b, 0)) / params.length));
  const down = params.map((p) => context.target - weights / p >= lo);
  const up = params.map((p) => context.target + weights / p <= hi);
  return down.some((d, j) => d && up.some((u, k) => u && k !== j));
};

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

/**
 * Every property an EvoPress genome must keep: whole levels summing to 0, the count of
 * pruned weights exact, inside the bounds. Collected, then asserted once, so that
 * thousands of candidates stay cheap to check.
 */
const expectValid = (levels: Levels, allocation: BlockAllocation, context: MethodContext, space: EvoPressSpace, grid = levelGrid(context, space)): void => {
  const params = context.linears.map((l) => l.params);
  const total = sum(params);
  const { lo, hi } = boundsOf(context, space);
  const problems: string[] = [];
  if (levels.length !== params.length || allocation.length !== params.length) problems.push(`lengths ${levels.length}, ${allocation.length}`);
  if (!levels.every(Number.isInteger)) problems.push(`levels ${levels} are not whole`);
  if (sum(levels) !== 0) problems.push(`levels sum to ${sum(levels)}`);
  const pruned = allocation.reduce((n, s, j) => n + s * params[j]!, 0);
  if (!(Math.abs(pruned - context.target * total) <= 1e-9 * total)) problems.push(`${pruned} weights pruned, not ${context.target * total}`);
  allocation.forEach((s, j) => {
    if (!(s >= lo && s <= hi)) problems.push(`linear ${j} at ${s}, outside [${lo}, ${hi}]`);
    if (space.maxLevels !== undefined && Math.abs(levels[j]!) > space.maxLevels) problems.push(`linear ${j} at level ${levels[j]}`);
    // Linear j prunes target x params + level x levelWeights weights.
    const expected = context.target * params[j]! + levels[j]! * grid.levelWeights;
    if (!(Math.abs(s * params[j]! - expected) <= 1e-9 * params[j]!)) problems.push(`linear ${j} prunes ${s * params[j]!}, not ${expected}`);
  });
  expect(problems).toEqual([]);
};

/** Up-moves from a to b: the switches that remain once opposite ones cancel. */
const movedLevels = (a: Levels, b: Levels): number => a.reduce((n, level, j) => n + Math.max(0, b[j]! - level), 0);

// ---------------------------------------------------------------- the genome

describe("evopress genome", () => {
  it("every child keeps the pruned-weight count exactly, whole levels summing to 0, inside the bounds; or the space is refused for having no switch", () => {
    fc.assert(
      fc.property(caseArb, ({ context, space, seed }) => {
        if (!switchable(context, space)) {
          expect(() => genomeOf(context, space)).toThrow(UsageError);
          return;
        }
        const genome = genomeOf(context, space);
        const rng = new Rng(seed);
        let parent = genome.create(rng.split(0), 0);
        expect(parent.every((level) => level === 0)).toBe(true);
        expect(genome.decode(parent)).toEqual(context.linears.map(() => context.target));
        for (let generation = 0; generation < 8; generation++) {
          const children = drawChildren(genome, parent, { offspring: space.offspring!, stages: space.stages! }, rng.split(generation + 1));
          // No duplicates within a generation, and none equal to the parent.
          const keys = children.map((c) => genome.key(c));
          expect(new Set([genome.key(parent), ...keys]).size).toBe(children.length + 1);
          for (const child of children) {
            expectValid(child, genome.decode(child), context, space);
            const moved = movedLevels(parent, child);
            expect(moved).toBeGreaterThanOrEqual(1);
            expect(moved).toBeLessThanOrEqual(3);
            expect(genome.restore(JSON.parse(JSON.stringify(genome.encode(child))))).toEqual(child);
          }
          const partner = children[rng.int(Math.max(1, children.length))] ?? parent;
          const cross = genome.crossover(parent, partner, rng);
          expectValid(cross, genome.decode(cross), context, space);
          parent = children.length > 0 ? children[rng.int(children.length)]! : parent;
        }
        // Other indices (only the generational GA asks them) are a mutation of uniform.
        const other = genome.create(rng.split(7), 7);
        expectValid(other, genome.decode(other), context, space);
      }),
      { numRuns: 200 },
    );
  });

  it("a mutation makes min(U{1,3}, U{1,3}) switches, each moving one level of weights from one linear to another", () => {
    const context = contextOf(Array.from({ length: 224 }, (_, j) => [4096, 1024, 1024, 4096, 11008, 11008, 11008][j % 7]! * 64), 7, 0.7, { lo: 0, hi: 0.99 });
    const space: EvoPressSpace = { levelSize: 0.01, offspring: 1, stages: [{ survivors: 1 }] };
    const genome = genomeOf(context, space);
    const grid = levelGrid(context, space);
    const mean = sum(context.linears.map((l) => l.params)) / context.linears.length;
    expect(grid.levelWeights).toBe(Math.round(0.01 * mean));
    const counts = [0, 0, 0, 0];
    const rng = new Rng(11);
    const parent = genome.create(rng, 0);
    const runs = 9000;
    for (let i = 0; i < runs; i++) {
      const child = genome.mutate(parent, rng.split(i));
      const moved = movedLevels(parent, child);
      counts[moved]! += 1;
      // The weights leaving the pruned set equal those entering it: whole levels of levelWeights.
      const allocation = genome.decode(child);
      const lowered = allocation.reduce((n, s, j) => n + Math.max(0, context.target - s) * context.linears[j]!.params, 0);
      expect(Math.abs(lowered - moved * grid.levelWeights)).toBeLessThanOrEqual(1e-6 * grid.levelWeights);
    }
    // From uniform over 224 linears opposite switches almost never cancel: 5/9, 3/9, 1/9.
    expect(counts[0]).toBe(0);
    expect(Math.abs(counts[1]! / runs - 5 / 9)).toBeLessThan(0.03);
    expect(Math.abs(counts[2]! / runs - 3 / 9)).toBeLessThan(0.03);
    expect(Math.abs(counts[3]! / runs - 1 / 9)).toBeLessThan(0.02);
  });

  it("levels stop at the bounds and at maxLevels; no switch leaves them", () => {
    // Target 0.5 in [0.45, 0.6], levels of 100 weights: a 1000-weight linear moves 0.1 a level.
    const context = contextOf([1000, 10_000, 10_000, 1_000], 4, 0.5, { lo: 0.45, hi: 0.6 });
    const levelSize = 100 / 5500;
    expect(levelGrid(context, { levelSize, offspring: 1, stages: [{ survivors: 1 }] })).toMatchObject({
      levelWeights: 100,
      lowest: [0, -5, -5, 0],
      highest: [1, 10, 10, 1],
    });
    expect(levelGrid(context, { levelSize, maxLevels: 3, offspring: 1, stages: [{ survivors: 1 }] })).toMatchObject({
      lowest: [0, -3, -3, 0],
      highest: [1, 3, 3, 1],
    });
  });

  it("keys are equal exactly when levels are; describe names the moved linears; restore refuses what no search could make", () => {
    const context = contextOf([4096, 1024, 1024, 4096, 8192, 8192], 3, 0.5, { lo: 0, hi: 0.99 });
    const space: EvoPressSpace = { levelSize: 0.01, maxLevels: 4, offspring: 4, stages: [{ survivors: 1 }] };
    const genome = genomeOf(context, space);
    expect(genome.describe([0, 0, 0, 0, 0, 0])).toBe("uniform");
    expect(genome.describe([1, 0, 0, 0, -2, 1])).toBe("0.q+1 1.k-2 1.v+1");
    expect(genome.key([1, 0, 0, 0, -2, 1])).not.toBe(genome.key([1, 0, 0, -2, 0, 1]));
    expect(genome.key([1, 0, 0, 0, -2, 1])).toBe(genome.key([1, 0, 0, 0, -2, 1]));
    expect(() => genome.restore([1, 0, 0, 0, -2, 0])).toThrow(/sum to -1, not 0/);
    expect(() => genome.restore([5, 0, 0, 0, -5, 0])).toThrow(/level 5 of linear 0/);
    expect(() => genome.restore([0.5, -0.5, 0, 0, 0, 0])).toThrow(/not a whole number/);
    expect(() => genome.restore([0, 0])).toThrow(/expected a list of 6 levels/);
  });

  it("a level too large for the bounds leaves no switch, and the method is refused before it runs", () => {
    const context = contextOf([1000, 1000], 2, 0.5, { lo: 0.45, hi: 0.55 });
    expect(() => genomeOf(context, { levelSize: 0.2, offspring: 4, stages: [{ survivors: 1 }] })).toThrow(/leaves no switch within the bounds \[0\.45, 0\.55\].*use a smaller levelSize/);
    expect(() => genomeOf(context, { levelSize: 0.01, offspring: 4, stages: [{ survivors: 1 }] })).not.toThrow();
  });
});

// ---------------------------------------------------------------- levels per block

describe("evopress with granularity block", () => {
  it("is the per-linear genome over blocks: one level a block, the block's weights its unit, every child valid per block", () => {
    fc.assert(
      fc.property(caseArb, ({ context, space: linearSpace, seed }) => {
        const space: EvoPressSpace = { ...linearSpace, granularity: "block" };
        const blocks = unitContext(context, space);
        expect(blocks.linears.map((l) => l.params)).toEqual(context.blockParams);
        if (!switchable(blocks, linearSpace)) {
          expect(() => genomeOf(context, space)).toThrow(/prunable block|blocks can go down/);
          return;
        }
        const genome = genomeOf(context, space);
        const overBlocks = genomeOf(blocks, linearSpace);
        const grid = levelGrid(context, space);
        expect(grid).toMatchObject({ lowest: levelGrid(blocks, linearSpace).lowest, highest: levelGrid(blocks, linearSpace).highest });
        // The grid carries the unit context its levels belong to, so the genome builds it once.
        expect(grid.units).toEqual(blocks);
        expect(levelGrid(context, linearSpace).units).toBe(context);
        const rng = new Rng(seed);
        let parent = genome.create(rng.split(0), 0);
        expect(genome.decode(parent)).toEqual(Array.from({ length: context.blocks }, () => context.target));
        for (let generation = 0; generation < 6; generation++) {
          const children = drawChildren(genome, parent, { offspring: space.offspring!, stages: space.stages! }, rng.split(generation + 1));
          for (const child of children) {
            const allocation = genome.decode(child);
            expect(allocation).toEqual(overBlocks.decode(child));
            // One sparsity a block, the blocks' pruned weights summing to the target's.
            expectValid(child, allocation, blocks, linearSpace);
          }
          parent = children.length > 0 ? children[rng.int(children.length)]! : parent;
        }
      }),
      { numRuns: 150 },
    );
  });

  it("SparseGPT's levels give every linear its block's levels, so each decoded block is in its linears' database", () => {
    const context = contextOf([4096, 1024, 1024, 4096, 8192, 8192, 512, 512, 2048], 3, 0.7, { lo: 0, hi: 0.99 });
    const space: EvoPressSpace = { levelSize: 0.02, granularity: "block", offspring: 4, stages: [{ survivors: 1 }] };
    const levels = plugin.levels!(context, space);
    expect(levels).toHaveLength(context.linears.length);
    context.linears.forEach((l, j) => expect(levels[j]).toEqual(levels[context.linears.findIndex((m) => m.block === l.block)]));
    const genome = genomeOf(context, space);
    const rng = new Rng(3);
    let levelsNow = genome.create(rng, 0);
    for (let i = 0; i < 200; i++) {
      levelsNow = genome.mutate(levelsNow, rng.split(i));
      genome.decode(levelsNow).forEach((s, b) => {
        const j = context.linears.findIndex((l) => l.block === b);
        expect(levels[j]!.some((level) => Math.abs(level - s) <= 1e-9)).toBe(true);
      });
    }
    // Block 2 (3072 weights) is the smallest: a level, 2% of the mean block's 9899 weights, moves it furthest.
    const block2 = levels[6]!;
    expect(block2[1]! - block2[0]!).toBeCloseTo(198 / 3072, 12);
  });

  it("a start given per linear starts the blocks at the share of their weights it prunes; describe names blocks", () => {
    const context = contextOf([1000, 3000, 2000, 2000], 2, 0.5, { lo: 0, hi: 0.99 });
    const space: EvoPressSpace = { levelSize: 0.01, granularity: "block", offspring: 4, stages: [{ survivors: 1 }] };
    const start = { label: "owl", sparsities: [0.32, 0.6, 0.45, 0.49] };
    const blocks = unitContext({ ...context, start }, space);
    // Block 0 prunes 320 + 1800 of 4000 weights, block 1 900 + 980 of 4000.
    expect(blocks.start!.sparsities[0]).toBeCloseTo(0.53, 12);
    expect(blocks.start!.sparsities[1]).toBeCloseTo(0.47, 12);
    const genome = genomeOf({ ...context, start }, space);
    const first = genome.create(new Rng(1), 0);
    expect(first).toEqual(startLevels(blocks, levelGrid(context, space), blocks.start!.sparsities));
    // A level is 40 weights (1% of the mean block): 120 weights either way are 3 levels.
    expect(first).toEqual([3, -3]);
    expect(genome.describe(first)).toBe("b0+3 b1-3");
    expect(() => unitContext({ ...context, start: { label: "x", sparsities: [0.5, 0.5, 0.5] } }, space)).toThrow(/fits neither the 2 blocks nor the 4 linears/);
  });

  it("the default space holds levels of 2% of the mean block, per block, with no ±8 stop; evopress-linear.json EvoPress's per linear", () => {
    const blocksSpace = loadSearchSpace(plugin);
    expect(blocksSpace).toEqual({ levelSize: 0.02, granularity: "block" });
    expect(plugin.stagedPlan!(blocksSpace)).toBeUndefined();
    const linear = loadSearchSpace(plugin, resolveSpaceFile(plugin, "evopress-linear.json"));
    expect(linear).toEqual({ levelSize: 0.01, maxLevels: 8 });
    const context = contextOf([4096, 1024, 1024, 4096, 8192, 8192], 3, 0.5, { lo: 0, hi: 0.99 });
    expect(genomeOf(context, linear).create(new Rng(0), 0)).toHaveLength(6);
    expect(genomeOf(context, blocksSpace).create(new Rng(0), 0)).toHaveLength(2);
    expect(() => parseSearchSpace(plugin, JSON.stringify({ levelSize: 0.02, granularity: "layer" }), "x.json")).toThrow(/granularity/);
  });
});

// ---------------------------------------------------------------- the search space

describe("evopress search space", () => {
  it("the default space holds the levels and leaves the stage plan to the run's budget", () => {
    const space = loadSearchSpace(plugin);
    expect(space).toEqual({ levelSize: 0.02, granularity: "block" });
    expect(plugin.stagedPlan!(space)).toBeUndefined();
    expect(() => method.strategy!(contextOf([10, 10], 2, 0.5, { lo: 0, hi: 0.99 }), space)).toThrow(/no stage plan/);
    const planned = plugin.withStagedPlan!(space, { offspring: 8, stages: [{ survivors: 2, tokens: 100 }, { survivors: 1, tokens: 400 }] });
    expect(plugin.stagedPlan!(planned)).toEqual({ offspring: 8, stages: [{ survivors: 2, tokens: 100 }, { survivors: 1, tokens: 400 }] });
    expect(method.strategy!(contextOf([10, 10], 2, 0.5, { lo: 0, hi: 0.99 }), planned).name).toBe("staged");
  });

  it("evopress-published.json is EvoPress's published search: 64 offspring, stages 8 / 2048 -> 2 / 16384 -> 1 / 65536", () => {
    const published = loadSearchSpace(plugin, resolveSpaceFile(plugin, "evopress-published.json"));
    expect(published).toEqual({
      levelSize: 0.01,
      maxLevels: 8,
      offspring: 64,
      stages: [
        { survivors: 8, tokens: 2048 },
        { survivors: 2, tokens: 16384 },
        { survivors: 1, tokens: 65536 },
      ],
    });
    expect(method.strategy!(contextOf([10, 10], 2, 0.5, { lo: 0, hi: 0.99 }), published).name).toBe("staged");
  });

  const base = { levelSize: 0.01, offspring: 16, stages: [{ survivors: 4, tokens: 256 }, { survivors: 1, tokens: 1024 }] };
  const cases: [string, unknown, RegExp][] = [
    ["a last stage keeping more than one", { ...base, stages: [{ survivors: 4 }, { survivors: 2 }] }, /stages\[1\]\.survivors: must be 1 in the last stage/],
    ["more survivors than candidates", { ...base, stages: [{ survivors: 20 }, { survivors: 1 }] }, /stages\[0\]\.survivors: 20 exceeds the stage's 16 candidates/],
    ["no stage", { ...base, stages: [] }, /stages: empty/],
    ["a zero level size", { ...base, levelSize: 0 }, /levelSize: 0 is outside \(0, 1\]/],
    ["no offspring", { ...base, offspring: 0 }, /offspring: 0 is below 1/],
    ["a fractional token count", { ...base, stages: [{ survivors: 4, tokens: 1.5 }, { survivors: 1 }] }, /stages\[0\]\.tokens/],
    ["a zero maxLevels", { ...base, maxLevels: 0 }, /maxLevels: 0 is below 1/],
    ["bounds reaching 1", { ...base, bounds: { lo: 0, hi: 1 } }, /bounds\.hi: 1 is outside \[0, 1\)/],
    ["a misspelt field", { ...base, offsprings: 4 }, /offsprings: unknown field/],
    ["offspring without stages", { levelSize: 0.01, offspring: 4 }, /stages: give offspring and stages together/],
  ];
  for (const [what, json, pattern] of cases) {
    it(`${what} is a DataError naming the file and the field`, () => {
      try {
        parseSearchSpace(plugin, JSON.stringify(json), "spaces/evopress-bad.json");
        expect.unreachable("the space should be refused");
      } catch (error) {
        expect(error).toBeInstanceOf(DataError);
        expect((error as DataError).file).toBe("spaces/evopress-bad.json");
        expect((error as DataError).problem).toMatch(/^invalid evopress search space: /);
        expect((error as DataError).problem).toMatch(pattern);
      }
    });
  }
});

// ---------------------------------------------------------------- the search, with a fake host

/**
 * A toy model of pruning damage: linear j costs c_j x params_j x s_j^2, so the best
 * allocation prunes the sensitive (large c) linears less. With tokens given, the host
 * adds noise of amplitude 0.4 / sqrt(tokens / 64) x the uniform loss, derived only from
 * (seed, generation, stage, phenotype), as a fresh minibatch would.
 */
const toyContext = contextOf(Array.from({ length: 24 }, (_, j) => [4096, 1024, 1024, 4096, 11008, 11008][j % 6]!), 6, 0.6, { lo: 0, hi: 0.99 });
const sensitivity = toyContext.linears.map((_, j) => 0.5 + ((j * 7) % 5) / 2);
const trueLoss = (s: BlockAllocation): number => s.reduce((n, v, j) => n + sensitivity[j]! * toyContext.linears[j]!.params * v * v, 0);
const uniformLoss = trueLoss(toyContext.linears.map(() => toyContext.target));
const keyOf = (s: BlockAllocation): string => s.map((v) => v.toFixed(9)).join(",");

const toyScore = (seed: number, s: BlockAllocation, fidelity: Fidelity): Fitness => {
  const loss = trueLoss(s) / uniformLoss;
  if (fidelity.tokens === undefined) return { ...fitnessOk(loss), tokens: 1024 };
  const u = new Rng(seed).split(fidelity.generation).split(fidelity.stage).split(keyOf(s)).next();
  return { ...fitnessOk(loss + (u - 0.5) * 0.4 * Math.sqrt(64 / fidelity.tokens) * 0.05), tokens: fidelity.tokens };
};

const toySpace: EvoPressSpace = {
  levelSize: 0.05,
  maxLevels: 6,
  offspring: 16,
  stages: [
    { survivors: 4, tokens: 64 },
    { survivors: 2, tokens: 256 },
    { survivors: 1, tokens: 1024 },
  ],
};

type Options = EvolveOptions<Levels, BlockAllocation>;

const search = (time: Clocked, seed: number, generations: number, overrides: Partial<Options> = {}, seen?: BlockAllocation[][]): Options => ({
  genome: genomeOf(toyContext, toySpace),
  strategy: method.strategy!(toyContext, toySpace) as Strategy<Levels, BlockAllocation>,
  phenotypeKey: keyOf,
  evaluate: (batch, fidelity) =>
    Effect.sync(() => {
      seen?.push([...batch]);
      return batch.map((s) => {
        time.advance(1000);
        return toyScore(seed, s, fidelity);
      });
    }),
  seed,
  generations,
  ...overrides,
});

const run = (options: Options, time: Clocked): Promise<EvolveResult<Levels, BlockAllocation>> =>
  Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

describe("evopress search on the engine, with a fake noisy host", () => {
  it("moves sparsity from sensitive linears to robust ones, every candidate keeping the count and the bounds", async () => {
    for (const seed of [0, 1, 2]) {
      const time = fakeClock();
      const seen: BlockAllocation[][] = [];
      const result = await run(search(time, seed, 60, {}, seen), time);
      const genome = genomeOf(toyContext, toySpace);
      const grid = levelGrid(toyContext, toySpace);
      for (const batch of seen) {
        for (const s of batch) {
          const levels = toyContext.linears.map((l, j) => Math.round(((s[j]! - toyContext.target) * l.params) / grid.levelWeights));
          expectValid(levels, s, toyContext, toySpace, grid);
        }
      }
      const best = result.best!;
      expectValid(best.genome, best.phenotype, toyContext, toySpace);
      expect(genome.decode(best.genome)).toEqual(best.phenotype);
      // Well below uniform, and the most sensitive linears pruned least.
      expect(trueLoss(best.phenotype) / uniformLoss).toBeLessThan(0.86);
      const bySensitivity = (c: number) => best.phenotype.filter((_, j) => sensitivity[j] === c);
      const mean = (xs: number[]) => sum(xs) / xs.length;
      expect(mean(bySensitivity(2.5))).toBeLessThan(toyContext.target);
      expect(mean(bySensitivity(0.5))).toBeGreaterThan(toyContext.target);
      // No duplicate candidates in a stage: the children of a generation are distinct.
      for (const g of new Set(result.history.map((r) => r.generation))) {
        const children = result.history.filter((r) => r.generation === g && r.stage === undefined);
        expect(new Set(children.map((r) => r.key)).size).toBe(children.length);
        expect(children.length).toBe(toySpace.offspring);
      }
    }
  });

  it("is deterministic for a seed, reports its leader as the best, and resumes exactly after any generation", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 8 }), fc.nat(), fc.option(fc.integer({ min: 1, max: 120 }), { nil: undefined }), async (seed, generations, pick, budgetEvals) => {
        const limits = budgetEvals === undefined ? {} : { budgetEvals };
        const time = fakeClock();
        const saved = store();
        const whole = await run(search(time, seed, generations, { ...limits, checkpoint: saved.checkpoint }), time);
        const again = fakeClock();
        expect(await run(search(again, seed, generations, limits), again)).toEqual(whole);
        // The best is the parent with its score on the last stage of the last whole generation.
        const finals = whole.history.filter((r) => r.stage === toySpace.stages!.length - 1);
        const lastGeneration = Math.max(...finals.map((r) => r.generation));
        const final = finals.filter((r) => r.generation === lastGeneration);
        if (final.length === toySpace.stages![1]!.survivors + 1) {
          expect(whole.best!.fitness).toBe(Math.min(...final.map((r) => r.fitness!)));
          expect(keyOf(whole.best!.phenotype)).toBe(final.find((r) => r.fitness === whole.best!.fitness)!.key);
        }
        const k = pick % saved.states.length;
        const later = fakeClock();
        expect(await run(search(later, seed, generations, { ...limits, checkpoint: store(saved.states[k]).checkpoint }), later)).toEqual(whole);
      }),
      { numRuns: 30 },
    );
  });

  it("runs through the host's runMethod with its own strategy, on the run's fitness windows when its stages give no tokens", async () => {
    const space: EvoPressSpace = { levelSize: 0.05, offspring: 6, stages: [{ survivors: 2 }, { survivors: 1 }] };
    const states: unknown[] = [];
    const outcome = await Effect.runPromise(
      runMethod(
        plugin,
        space,
        toyContext,
        { seed: 3, population: 1, generations: 4 },
        { evaluate: (batch) => Effect.succeed(batch.map((s) => toyScore(3, s, { generation: 0, stage: 0 }))) },
        keyOf,
        { load: () => undefined, save: (state) => void states.push(state) },
        () => {},
      ),
    );
    expect(outcome.generations).toBe(4);
    expect(outcome.best.sparsities).toHaveLength(toyContext.linears.length);
    expect(outcome.history.some((r) => r.stage === 1)).toBe(true);
    expect(outcome.history.filter((r) => r.generation === 0 && r.stage === undefined)).toHaveLength(6);
    expect(states.every((s) => (s as { strategy: { name: string } }).strategy.name === "staged")).toBe(true);
    expect(outcome.best.fitness).toBeLessThanOrEqual(1);
  });
});
