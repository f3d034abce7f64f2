import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { weightedMean } from "../src/allocation/project.ts";
import type { Bounds } from "../src/allocation/project.ts";
import type { Genome } from "../src/engine/genome.ts";
import { UsageError } from "../src/errors.ts";
import { outlierShare } from "../src/prune/outliers.ts";
import { Rng } from "../src/rng.ts";
import type { BlockAllocation, BlockStatistics, MethodContext, MethodPlugin } from "../src/search/plugin.ts";
import { availablePlugins, loadPlugin } from "../src/search/registry.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { plugin as atpPlugin } from "../plugins/atp/index.ts";
import { plugin as dsaPlugin, formula } from "../plugins/dsa/index.ts";
import type { DsaExpression, DsaSpace } from "../plugins/dsa/index.ts";
import { preOps, reduceAll, reductions, select, transformOps } from "../plugins/dsa/ops.ts";
import { plugin as mrpPlugin } from "../plugins/mrp/index.ts";
import { plugin as mspPlugin } from "../plugins/msp/index.ts";
import { plugin as mspNmPlugin } from "../plugins/msp-nm/index.ts";
import { plugin as owlPlugin } from "../plugins/owl/index.ts";
import { plugin as uniformPlugin } from "../plugins/uniform/index.ts";

// ---------------------------------------------------------------- synthetic contexts

/** How a block's element scores look; several kinds make NaN or ±Inf inside DSA. */
const scoreKinds = ["normal", "positive", "zeros", "constant", "huge", "tiny", "mixed", "nonfinite", "empty"] as const;
type ScoreKind = (typeof scoreKinds)[number];

const makeScores = (kind: ScoreKind, length: number, scale: number, rng: Rng): Float32Array => {
  switch (kind) {
    case "normal":
      return Float32Array.from({ length }, () => scale * rng.normal());
    case "positive":
      return Float32Array.from({ length }, () => scale * Math.abs(rng.normal()));
    case "zeros":
      return new Float32Array(length);
    case "constant":
      return new Float32Array(length).fill(scale);
    case "huge":
      return Float32Array.from({ length }, () => 3e38 * (rng.next() < 0.5 ? -1 : 1) * rng.next());
    case "tiny":
      return Float32Array.from({ length }, () => 1e-44 * rng.int(4));
    case "mixed":
      return Float32Array.from({ length }, (_, i) => (i % 3 === 0 ? 0 : i % 3 === 1 ? 3e38 : -scale));
    case "nonfinite":
      return Float32Array.from({ length }, (_, i) => [NaN, Infinity, -Infinity, scale][i % 4]);
    case "empty":
      return new Float32Array(0);
  }
};

interface ContextOptions {
  readonly blocks: number;
  readonly params: readonly number[];
  readonly target: number;
  readonly bounds: Bounds;
  readonly kinds: readonly ScoreKind[];
  readonly traces: readonly number[];
  readonly seed: number;
}

const statisticsOf = (scores: readonly Float32Array[], traces: readonly number[]): BlockStatistics => ({
  outlierShares: () => scores.map((s) => outlierShare([s])),
  fisherTraces: () => traces,
  elementScores: (block) => scores[block],
  nonOutlierRatio: (block, sparsity) => 1 - sparsity - block / 100,
});

const contextOf = (o: ContextOptions): MethodContext => {
  const rng = new Rng(o.seed);
  const scores = o.kinds.map((kind, b) => makeScores(kind, 1 + rng.int(48), (b + 1) * (1 + rng.next()), rng));
  return {
    blocks: o.blocks,
    blockParams: o.params,
    linears: o.params.map((params, block) => ({ block, linear: "w", params })),
    target: o.target,
    bounds: o.bounds,
    pattern: { kind: "unstructured" },
    statistics: statisticsOf(scores, o.traces),
  };
};

const boundsArb = (target: number): fc.Arbitrary<Bounds> =>
  fc.oneof(
    fc.constant({ lo: 0, hi: 0.99 }),
    fc
      .record({ lo: fc.double({ min: 0, max: 1, noNaN: true }), hi: fc.double({ min: 0, max: 1, noNaN: true }) })
      .map(({ lo, hi }) => ({ lo: lo * target, hi: target + hi * (0.99 - target) })),
  );

const traceArb = fc.oneof(
  { weight: 6, arbitrary: fc.double({ min: 1e-8, max: 1e8, noNaN: true }) },
  { weight: 1, arbitrary: fc.constantFrom(0, NaN, Infinity, -1) },
);

const contextArb = (equalParams: boolean, target: fc.Arbitrary<number> = fc.double({ min: 0.1, max: 0.9, noNaN: true })) =>
  fc.integer({ min: 2, max: 40 }).chain((blocks) =>
    fc
      .record({
        target,
        params: equalParams
          ? fc.integer({ min: 1, max: 1_000_000 }).map((p) => new Array<number>(blocks).fill(p))
          : fc.array(fc.integer({ min: 1, max: 1_000_000 }), { minLength: blocks, maxLength: blocks }),
        kinds: fc.array(fc.constantFrom(...scoreKinds), { minLength: blocks, maxLength: blocks }),
        traces: fc.array(traceArb, { minLength: blocks, maxLength: blocks }),
        seed: fc.integer({ min: 0, max: 2 ** 31 }),
      })
      .chain((o) => boundsArb(o.target).map((bounds) => contextOf({ ...o, blocks, bounds }))),
  );

const expectValid = (allocation: BlockAllocation, context: MethodContext, bounds: Bounds = context.bounds): void => {
  expect(allocation).toHaveLength(context.blocks);
  for (const s of allocation) {
    expect(Number.isFinite(s)).toBe(true);
    expect(s).toBeGreaterThanOrEqual(bounds.lo);
    expect(s).toBeLessThanOrEqual(bounds.hi);
  }
  expect(Math.abs(weightedMean(allocation, context.blockParams) - context.target)).toBeLessThanOrEqual(1e-6);
};

const genomeOf = <S>(plugin: MethodPlugin<S>, context: MethodContext, space: S): Genome<unknown, BlockAllocation> => {
  const method = plugin.method;
  if (method.kind !== "evolve") throw new Error(`${plugin.name} is not evolutionary`);
  return method.genome(context, space);
};

const roundTrip = <G>(genome: Genome<G, BlockAllocation>, g: G): G => genome.restore(JSON.parse(JSON.stringify(genome.encode(g))));

/**
 * Creates a small population (seeded and random indices), then applies a random chain
 * of mutations and crossovers; returns every individual seen.
 */
const evolveChain = <G>(genome: Genome<G, BlockAllocation>, seed: number, steps: number): G[] => {
  const rng = new Rng(seed);
  const population = [0, 1, 2, 7, 13, 40].map((index) => genome.create(rng.split(index), index));
  const seen = [...population];
  for (let step = 0; step < steps; step++) {
    const a = population[rng.int(population.length)];
    const child = rng.next() < 0.5 ? genome.mutate(a, rng) : genome.crossover(a, population[rng.int(population.length)], rng);
    population[rng.int(population.length)] = child;
    seen.push(child);
  }
  return seen;
};

const dsaSpace = loadSearchSpace(dsaPlugin);
const dsaSmallSpace = loadSearchSpace(dsaPlugin, "dsa-small.json");
const mspSpace = loadSearchSpace(mspPlugin);
const mspNmSpace = loadSearchSpace(mspNmPlugin);

/** Every op of every table enabled, with the arities of docs/methods.md. */
const fullDsaSpace: DsaSpace = {
  pre: Object.keys(preOps),
  preCount: [0, 2],
  reductions: Object.keys(reductions),
  transform: Object.keys(transformOps),
  transformCount: [1, 2],
  lambda: [0.02, 0.2],
};

const runs = { numRuns: 60 };

// ---------------------------------------------------------------- evolve plugins

describe("evolutionary plugins: every genome decodes to a valid allocation", () => {
  const cases: [string, MethodPlugin<never>, unknown, Bounds | undefined][] = [
    ["dsa", dsaPlugin as MethodPlugin<never>, dsaSpace, undefined],
    ["dsa (dsa-small.json)", dsaPlugin as MethodPlugin<never>, dsaSmallSpace, { lo: 0, hi: 0.9 }],
    ["dsa (every op)", dsaPlugin as MethodPlugin<never>, fullDsaSpace, undefined],
    ["msp", mspPlugin as MethodPlugin<never>, mspSpace, undefined],
  ];
  for (const [name, plugin, space, spaceBounds] of cases) {
    it(`${name}: create / mutate / crossover chains stay valid and round-trip`, () => {
      fc.assert(
        fc.property(contextArb(false), fc.integer({ min: 0, max: 2 ** 31 }), (context, seed) => {
          const genome = genomeOf(plugin, context, space as never);
          const bounds = spaceBounds
            ? { lo: Math.max(spaceBounds.lo, context.bounds.lo), hi: Math.min(spaceBounds.hi, context.bounds.hi) }
            : context.bounds;
          for (const g of evolveChain(genome, seed, 12)) {
            expectValid(genome.decode(g), context, bounds);
            const back = roundTrip(genome, g);
            expect(back).toEqual(g);
            expect(genome.key(back)).toBe(genome.key(g));
            expect(genome.describe(g)).not.toBe("");
          }
        }),
        runs,
      );
    });
  }

  it("msp-nm: entries are exactly n / M with whole n, the mean is the target, and genomes round-trip", () => {
    const m = mspNmSpace.m;
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 40 }).chain((blocks) =>
          fc
            .integer({ min: Math.ceil(0.1 * m * blocks), max: Math.min(Math.floor(0.9 * m * blocks), mspNmSpace.n[1] * blocks) })
            .map((total) => ({ blocks, total })),
        ),
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.array(traceArb, { minLength: 40, maxLength: 40 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        ({ blocks, total }, params, traces, seed) => {
          const context = contextOf({
            blocks,
            params: new Array<number>(blocks).fill(params),
            target: total / (m * blocks),
            bounds: { lo: 0, hi: 0.99 },
            kinds: new Array<ScoreKind>(blocks).fill("positive"),
            traces: traces.slice(0, blocks),
            seed,
          });
          const genome = genomeOf(mspNmPlugin, context, mspNmSpace) as Genome<readonly number[], BlockAllocation>;
          for (const g of evolveChain(genome, seed, 12)) {
            const allocation = genome.decode(g);
            expectValid(allocation, context);
            for (const s of allocation) {
              expect(Math.round(s * m) / m).toBe(s);
              expect(Math.round(s * m)).toBeGreaterThanOrEqual(mspNmSpace.n[0]);
              expect(Math.round(s * m)).toBeLessThanOrEqual(mspNmSpace.n[1]);
            }
            expect(g.reduce((a, b) => a + b, 0)).toBe(total);
            expect(roundTrip(genome, g)).toEqual(g);
          }
        },
      ),
      runs,
    );
  });
});

describe("genome keys", () => {
  it("dsa and msp-nm: equal keys exactly when the genomes are equal", () => {
    fc.assert(
      fc.property(contextArb(true), fc.integer({ min: 0, max: 2 ** 31 }), (context, seed) => {
        const genomes: Genome<unknown, BlockAllocation>[] = [genomeOf(dsaPlugin, context, fullDsaSpace)];
        const m = mspNmSpace.m;
        const total = Math.min(Math.round(context.target * m * context.blocks), mspNmSpace.n[1] * context.blocks);
        const nmContext = { ...context, target: total / (m * context.blocks), bounds: { lo: 0, hi: 0.99 } };
        genomes.push(genomeOf(mspNmPlugin, nmContext, mspNmSpace));
        for (const genome of genomes) {
          const seen = evolveChain(genome, seed, 20);
          for (const a of seen) {
            for (const b of seen) {
              expect(genome.key(a) === genome.key(b)).toBe(JSON.stringify(a) === JSON.stringify(b));
            }
          }
        }
      }),
      { numRuns: 30 },
    );
  });

  it("msp: equal vectors share a key, and vectors sharing a key differ by at most 1e-6 per block", () => {
    fc.assert(
      fc.property(contextArb(false), fc.integer({ min: 0, max: 2 ** 31 }), (context, seed) => {
        const genome = genomeOf(mspPlugin, context, mspSpace) as Genome<readonly number[], BlockAllocation>;
        const seen = evolveChain(genome, seed, 20);
        for (const a of seen) {
          for (const b of seen) {
            const distance = Math.max(...a.map((v, l) => Math.abs(v - b[l])));
            if (distance === 0) expect(genome.key(a)).toBe(genome.key(b));
            if (genome.key(a) === genome.key(b)) expect(distance).toBeLessThanOrEqual(1e-6);
            if (distance > 1e-6) expect(genome.key(a)).not.toBe(genome.key(b));
          }
        }
      }),
      { numRuns: 30 },
    );
  });
});

// ---------------------------------------------------------------- DSA

const someContext = (kinds: readonly ScoreKind[], seed = 1): MethodContext =>
  contextOf({
    blocks: kinds.length,
    params: kinds.map((_, b) => 1000 + 37 * b),
    target: 0.5,
    bounds: { lo: 0, hi: 0.99 },
    kinds,
    traces: kinds.map((_, b) => b + 1),
    seed,
  });

describe("dsa", () => {
  it("never throws nor yields NaN for any single pre op x reduction x transform op", () => {
    const contexts = [
      someContext(["normal", "positive", "zeros", "huge", "tiny", "mixed", "nonfinite", "empty", "constant"]),
      someContext(["zeros", "zeros", "zeros"]),
      someContext(["huge", "positive", "huge", "normal"], 7),
    ];
    for (const context of contexts) {
      const genome = genomeOf(dsaPlugin, context, fullDsaSpace) as Genome<DsaExpression, BlockAllocation>;
      for (const pre of [[], ...fullDsaSpace.pre.map((op) => [op])]) {
        for (const reduction of fullDsaSpace.reductions) {
          for (const transform of fullDsaSpace.transform) {
            const e = genome.restore({ pre, reduction, transform: [transform], lambda: 0.2 });
            expectValid(genome.decode(e), context);
          }
        }
      }
    }
  });

  it("never throws nor yields NaN for random two-op chains of every stage", () => {
    const op = (ops: readonly string[]) => fc.constantFrom(...ops);
    fc.assert(
      fc.property(
        contextArb(false),
        fc.array(op(fullDsaSpace.pre), { maxLength: 2 }),
        op(fullDsaSpace.reductions),
        fc.array(op(fullDsaSpace.transform), { minLength: 1, maxLength: 2 }),
        fc.double({ min: 0.02, max: 0.2, noNaN: true }),
        (context, pre, reduction, transform, lambda) => {
          const genome = genomeOf(dsaPlugin, context, fullDsaSpace);
          expectValid(genome.decode(genome.restore({ pre, reduction, transform, lambda })), context);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("gives the uniform allocation when every block's scores are equal", () => {
    fc.assert(
      fc.property(
        contextArb(false),
        fc.constantFrom(...scoreKinds),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (context, kind, seed) => {
          const scores = makeScores(kind, 32, 2, new Rng(seed));
          const same = { ...context, statistics: statisticsOf(new Array(context.blocks).fill(scores), []) };
          const genome = genomeOf(dsaPlugin, same, fullDsaSpace);
          for (const g of evolveChain(genome, seed, 6)) {
            expect(genome.decode(g)).toEqual(new Array(context.blocks).fill(context.target));
          }
        },
      ),
      runs,
    );
  });

  it("prunes blocks with a larger score more", () => {
    const context = someContext(["positive", "positive", "positive", "positive", "positive"], 3);
    const genome = genomeOf(dsaPlugin, context, fullDsaSpace) as Genome<DsaExpression, BlockAllocation>;
    const allocation = genome.decode(genome.restore({ pre: [], reduction: "mean", transform: ["identity"], lambda: 0.1 }));
    const means = Array.from({ length: context.blocks }, (_, b) => {
      const s = context.statistics.elementScores(b);
      return s.reduce((a, v) => a + v, 0) / s.length;
    });
    for (let a = 0; a < context.blocks; a++) {
      for (let b = 0; b < context.blocks; b++) {
        if (means[a] > means[b]) expect(allocation[a]).toBeGreaterThan(allocation[b]);
      }
    }
  });

  it("runs a pre chain over each block's scores once, whatever reduction and transform follow", () => {
    const base = someContext(["normal", "positive", "huge", "zeros"]);
    let calls = 0;
    const context: MethodContext = {
      ...base,
      statistics: {
        ...base.statistics,
        elementScores: (block) => {
          calls++;
          return base.statistics.elementScores(block);
        },
      },
    };
    const genome = genomeOf(dsaPlugin, context, fullDsaSpace) as Genome<DsaExpression, BlockAllocation>;
    for (const reduction of fullDsaSpace.reductions) {
      genome.decode(genome.restore({ pre: ["abs", "identity"], reduction, transform: ["tanh"], lambda: 0.1 }));
      genome.decode(genome.restore({ pre: ["identity", "abs"], reduction, transform: ["exp", "sin"], lambda: 0.05 }));
    }
    expect(calls).toBe(context.blocks);
  });

  it("describes an expression as a formula, pre ops innermost", () => {
    const e: DsaExpression = { pre: ["abs", "log"], reduction: "mean", transform: ["tanh"], lambda: 0.08 };
    expect(formula(e)).toBe("tanh(mean(log(abs(x))))");
    const genome = genomeOf(dsaPlugin, someContext(["normal", "normal"]), fullDsaSpace) as Genome<DsaExpression, BlockAllocation>;
    expect(genome.describe(e)).toBe("tanh(mean(log(abs(x)))) λ=0.08");
  });

  it("keeps op counts and λ inside the space under mutation and crossover", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 }), (seed) => {
        const genome = genomeOf(dsaPlugin, someContext(["normal", "positive"]), dsaSmallSpace) as Genome<DsaExpression, BlockAllocation>;
        for (const e of evolveChain(genome, seed, 30)) {
          expect(e.pre.length).toBeLessThanOrEqual(dsaSmallSpace.preCount[1]);
          expect(e.transform.length).toBe(1);
          for (const op of e.pre) expect(dsaSmallSpace.pre).toContain(op);
          for (const op of e.transform) expect(dsaSmallSpace.transform).toContain(op);
          expect(dsaSmallSpace.reductions).toContain(e.reduction);
          expect(e.lambda).toBeGreaterThanOrEqual(dsaSmallSpace.lambda[0]);
          expect(e.lambda).toBeLessThanOrEqual(dsaSmallSpace.lambda[1]);
        }
      }),
      runs,
    );
  });

  it("crossover takes whole stages from the parents, some from each", () => {
    const genome = genomeOf(dsaPlugin, someContext(["normal", "positive"]), fullDsaSpace) as Genome<DsaExpression, BlockAllocation>;
    const a: DsaExpression = { pre: ["abs"], reduction: "mean", transform: ["tanh"], lambda: 0.05 };
    const b: DsaExpression = { pre: ["exp", "zscore"], reduction: "q90", transform: ["sqrt", "cos"], lambda: 0.15 };
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 }), (seed) => {
        const child = genome.crossover(a, b, new Rng(seed));
        const stages = [
          [child.pre, a.pre, b.pre],
          [child.reduction, a.reduction, b.reduction],
          [child.transform, a.transform, b.transform],
          [child.lambda, a.lambda, b.lambda],
        ] as const;
        const fromA = stages.filter(([c, x]) => JSON.stringify(c) === JSON.stringify(x)).length;
        const fromB = stages.filter(([c, , y]) => JSON.stringify(c) === JSON.stringify(y)).length;
        expect(fromA + fromB).toBe(4);
        expect(fromA).toBeGreaterThan(0);
        expect(fromB).toBeGreaterThan(0);
      }),
      runs,
    );
  });

  it("rejects restoring an expression the space does not allow", () => {
    const genome = genomeOf(dsaPlugin, someContext(["normal", "positive"]), dsaSmallSpace);
    expect(() => genome.restore({ pre: ["exp"], reduction: "mean", transform: ["tanh"], lambda: 0.05 })).toThrow(/exp/);
    expect(() => genome.restore({ pre: [], reduction: "mean", transform: ["tanh"], lambda: 0.5 })).toThrow(/lambda/);
    expect(() => genome.restore({ pre: [], reduction: "mean", transform: [], lambda: 0.05 })).toThrow(/transform/);
    expect(() => genome.restore("mean")).toThrow(/not an object/);
  });
});

describe("dsa reductions", () => {
  const vectorArb = fc.array(fc.oneof(fc.double({ min: -50, max: 50, noNaN: true }), fc.constantFrom(0, 1, -1)), {
    minLength: 1,
    maxLength: 200,
  });

  const sortedQuantile = (sorted: readonly number[], p: number): number => {
    const position = p * (sorted.length - 1);
    const k = Math.floor(position);
    return position > k ? sorted[k] + (position - k) * (sorted[k + 1] - sorted[k]) : sorted[k];
  };

  it("agree with direct formulas", () => {
    fc.assert(
      fc.property(vectorArb, (x) => {
        const names = Object.keys(reductions);
        const values = reduceAll(Float64Array.from(x), x.length, names);
        const got = Object.fromEntries(names.map((name, i) => [name, values[i]]));
        const n = x.length;
        const mean = x.reduce((a, v) => a + v, 0) / n;
        const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
        // -0 and +0 are the same value to a reduction; Object.is would tell them apart.
        const same = (a: number, b: number) => expect(a === b).toBe(true);
        const close = (a: number, b: number) => expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(b)));
        close(got.mean, mean);
        close(got.variance, variance);
        close(got.std, Math.sqrt(variance));
        close(got.l1, x.reduce((a, v) => a + Math.abs(v), 0) / n);
        close(got.l2, Math.sqrt(x.reduce((a, v) => a + v * v, 0)));
        same(got.max, Math.max(...x));
        same(got.min, Math.min(...x));
        const top = Math.max(...x);
        const z = x.reduce((a, v) => a + Math.exp(v - top), 0);
        close(got.entropy, -x.reduce((a, v) => a + (Math.exp(v - top) / z) * Math.log(Math.exp(v - top) / z || 1), 0));
        if (variance > 1e-12) {
          close(got.skewness, x.reduce((a, v) => a + (v - mean) ** 3, 0) / n / variance ** 1.5);
          close(got.kurtosis, x.reduce((a, v) => a + (v - mean) ** 4, 0) / n / variance ** 2 - 3);
        }
        const sorted = [...x].sort((a, b) => a - b);
        same(got.median, sortedQuantile(sorted, 0.5));
        same(got.q10, sortedQuantile(sorted, 0.1));
        same(got.q25, sortedQuantile(sorted, 0.25));
        same(got.q75, sortedQuantile(sorted, 0.75));
        same(got.q90, sortedQuantile(sorted, 0.9));
      }),
      { numRuns: 300 },
    );
  });

  it("selection puts the k-th smallest at k with smaller before and larger after", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: -5, max: 5 }), { minLength: 1, maxLength: 300 }),
        fc.nat(),
        (x, at) => {
          const b = Float64Array.from(x);
          const k = at % x.length;
          select(b, k, 0, x.length);
          const sorted = [...x].sort((p, q) => p - q);
          expect(b[k]).toBe(sorted[k]);
          for (let i = 0; i < k; i++) expect(b[i]).toBeLessThanOrEqual(b[k]);
          for (let i = k + 1; i < x.length; i++) expect(b[i]).toBeGreaterThanOrEqual(b[k]);
          expect([...b].sort((p, q) => p - q)).toEqual(sorted);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("pre ops work in place and follow their definitions", () => {
    const x = [-2, -0.5, 0, 0.5, 3];
    const apply = (op: string): number[] => {
      const b = Float64Array.from(x);
      preOps[op](b, b.length);
      return [...b];
    };
    expect(apply("log")).toEqual(x.map((v) => Math.log((v <= 0 ? 1 : v) + 1e-6)));
    expect(apply("abslog")).toEqual(x.map((v) => Math.log(v === 0 ? 1 : Math.abs(v))));
    expect(apply("minmax")).toEqual(x.map((v) => (v + 2) / 5));
    const z = apply("zscore");
    expect(z.reduce((a, v) => a + v, 0)).toBeCloseTo(0, 12);
    expect(z.reduce((a, v) => a + v * v, 0) / z.length).toBeCloseTo(1, 12);
    for (const [i, v] of apply("sigmoid").entries()) expect(v).toBeCloseTo(1 / (1 + Math.exp(-x[i])), 15);
  });
});

// ---------------------------------------------------------------- MSP

describe("msp", () => {
  it("seeds the first individuals from Fisher traces: more sensitive blocks are pruned less", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 30 }).chain((blocks) =>
          fc.uniqueArray(fc.double({ min: 1e-3, max: 1e6, noNaN: true }), { minLength: blocks, maxLength: blocks }),
        ),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (traces, seed) => {
          const context: MethodContext = {
            ...someContext(new Array<ScoreKind>(traces.length).fill("positive")),
            blockParams: new Array<number>(traces.length).fill(4096),
            statistics: statisticsOf([], traces),
          };
          const genome = genomeOf(mspPlugin, context, mspSpace) as Genome<readonly number[], BlockAllocation>;
          for (let index = 0; index < mspSpace.lambdas.length; index++) {
            const s = genome.create(new Rng(seed), index);
            expect(genome.create(new Rng(seed + 1), index)).toEqual(s);
            for (let a = 0; a < traces.length; a++) {
              for (let b = 0; b < traces.length; b++) {
                if (traces[a] > traces[b]) expect(s[a]).toBeLessThanOrEqual(s[b]);
              }
            }
          }
        },
      ),
      runs,
    );
  });

  it("mutation moves sparsity between two blocks and keeps the pruned weight count", () => {
    fc.assert(
      fc.property(contextArb(false), fc.integer({ min: 0, max: 2 ** 31 }), (context, seed) => {
        const genome = genomeOf(mspPlugin, context, mspSpace) as Genome<readonly number[], BlockAllocation>;
        const rng = new Rng(seed);
        let s = genome.create(rng, 20);
        for (let i = 0; i < 10; i++) {
          const next = genome.mutate(s, rng);
          const moved = next.filter((v, l) => Math.abs(v - s[l]) > 1e-9).length;
          expect(moved).toBeLessThanOrEqual(2);
          expectValid(next, context);
          s = next;
        }
      }),
      runs,
    );
  });
});

describe("msp-nm", () => {
  const equalContext = (blocks: number, target: number): MethodContext => ({
    ...someContext(new Array<ScoreKind>(blocks).fill("positive")),
    blockParams: new Array<number>(blocks).fill(512),
    target,
  });

  it("mutation is a paired +1 / -1 between two blocks", () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 40 }), fc.integer({ min: 0, max: 2 ** 31 }), (blocks, seed) => {
        const context = equalContext(blocks, 0.5);
        const genome = genomeOf(mspNmPlugin, context, mspNmSpace) as Genome<readonly number[], BlockAllocation>;
        const rng = new Rng(seed);
        let ns = genome.create(rng, 9);
        for (let i = 0; i < 10; i++) {
          const next = genome.mutate(ns, rng);
          const deltas = next.map((n, l) => n - ns[l]).filter((d) => d !== 0);
          expect(deltas.sort()).toEqual([-1, 1]);
          ns = next;
        }
      }),
      runs,
    );
  });

  it("refuses targets whole N's cannot reach, and blocks of unequal size", () => {
    const make = (context: MethodContext) => () => genomeOf(mspNmPlugin, context, mspNmSpace);
    expect(make(equalContext(3, 0.3))).toThrow(UsageError);
    expect(make(equalContext(3, 0.3))).toThrow(/steps of 1\/24/);
    expect(make({ ...equalContext(4, 0.5), blockParams: [1, 1, 2, 2] })).toThrow(/equal size/);
    expect(make({ ...equalContext(4, 0.5), bounds: { lo: 0.6, hi: 0.99 } })).toThrow(UsageError);
  });
});

// ---------------------------------------------------------------- MRP

describe("mrp", () => {
  const mrpSpace = loadSearchSpace(mrpPlugin);
  const allocate = (context: MethodContext): BlockAllocation => {
    const method = mrpPlugin.method;
    if (method.kind !== "direct") throw new Error("mrp is direct");
    return method.allocate(context, mrpSpace);
  };

  /** NOR_l(s) = c_l - k_l s: redundancy falls as a block is pruned, at a block's own rate. */
  const norContextArb = contextArb(false).chain((context) =>
    fc
      .array(fc.record({ c: fc.double({ min: 0, max: 1, noNaN: true }), k: fc.double({ min: 0, max: 2, noNaN: true }) }), {
        minLength: context.blocks,
        maxLength: context.blocks,
      })
      .map((lines) => ({ context, lines })),
  );

  it("a worked example: two equal blocks with NOR 0.9 - s and 0.5 - s reach 0.7 and 0.3 for a target of 0.5", () => {
    // MRP raises the block of highest NOR by Δ = 0.01: block 0 alone until its NOR falls to
    // block 1's (s_0 = 0.4), then both in turn, until the mean is 0.5: s_0 - s_1 = 0.4 and
    // s_0 + s_1 = 1, so 0.7 and 0.3 (within a step).
    const base = someContext(["positive", "positive"]);
    const context = { ...base, blockParams: [100, 100], target: 0.5, statistics: { ...base.statistics, nonOutlierRatio: (b: number, s: number) => [0.9, 0.5][b]! - s } };
    const result = allocate(context);
    expect(result[0]).toBeCloseTo(0.7, 1);
    expect(result[1]).toBeCloseTo(0.3, 1);
    expect(Math.abs(result[0]! - 0.7)).toBeLessThanOrEqual(mrpSpace.delta);
    expectValid(result, context);
  });

  it("each step raises the block with the highest NOR, lowest index on ties, by at most Δ", () => {
    fc.assert(
      fc.property(norContextArb, ({ context, lines }) => {
        const calls: [number, number][] = [];
        const statistics = {
          ...context.statistics,
          nonOutlierRatio: (b: number, s: number) => {
            calls.push([b, s]);
            return lines[b].c - lines[b].k * s;
          },
        };
        const result = allocate({ ...context, statistics });
        const { lo, hi } = context.bounds;
        // The first round measures every block at the start, the dense end of the bounds.
        expect(calls.slice(0, context.blocks)).toEqual(Array.from({ length: context.blocks }, (_, b) => [b, lo]));
        const state = new Array<number>(context.blocks).fill(lo);
        const nor = state.map((s, b) => lines[b].c - lines[b].k * s);
        for (const [block, sparsity] of calls.slice(context.blocks)) {
          let best = -1;
          for (let b = 0; b < context.blocks; b++) if (state[b] < hi && (best < 0 || nor[b] > nor[best])) best = b;
          expect(block).toBe(best);
          expect(sparsity).toBeGreaterThan(state[block]);
          expect(sparsity - state[block]).toBeLessThanOrEqual(mrpSpace.delta + 1e-12);
          state[block] = sparsity;
          nor[block] = lines[block].c - lines[block].k * sparsity;
        }
        result.forEach((v, b) => expect(Math.abs(v - state[b])).toBeLessThanOrEqual(1e-9));
      }),
      runs,
    );
  });

  it("fills the most redundant block first when redundancy does not change", () => {
    const context = { ...someContext(["positive", "positive", "positive"]), blockParams: [10, 10, 10], target: 0.4 };
    const constant = [0.2, 0.9, 0.5];
    const result = allocate({ ...context, statistics: { ...context.statistics, nonOutlierRatio: (b) => constant[b] } });
    const { lo, hi } = context.bounds;
    expect(result[0]).toBe(lo);
    expect(result[1]).toBe(hi);
    expect(result[2]).toBeCloseTo(3 * context.target - hi, 12);
  });
});

// ---------------------------------------------------------------- baselines through their plugins

describe("uniform, owl and atp on the papers' worked examples", () => {
  const three = (shares: readonly number[]): MethodContext => {
    const base = someContext(["positive", "positive", "positive"]);
    return { ...base, blockParams: [100, 100, 100], target: 0.7, statistics: { ...base.statistics, outlierShares: () => shares } };
  };
  const direct = (plugin: MethodPlugin<unknown>, context: MethodContext): BlockAllocation => {
    const method = plugin.method;
    if (method.kind !== "direct") throw new Error(`${plugin.name} is direct`);
    return method.allocate(context, loadSearchSpace(plugin));
  };

  it("uniform: every block at the target", () => {
    expect(direct(uniformPlugin as MethodPlugin<unknown>, three([0.1, 0.2, 0.3]))).toEqual([0.7, 0.7, 0.7]);
  });

  it("owl (λ = 0.08, M = 5): outlier shares 0.1, 0.2, 0.3 at 70% give 78%, 70%, 62%", () => {
    // Density 2λ·minmax(D) = 0, 0.08, 0.16 above a constant chosen for a mean sparsity of
    // 0.7: sparsities 0.78, 0.70, 0.62; the block with most outliers is pruned least.
    const result = direct(owlPlugin as MethodPlugin<unknown>, three([0.1, 0.2, 0.3]));
    [0.78, 0.7, 0.62].forEach((v, b) => expect(result[b]).toBeCloseTo(v, 12));
    // Only the ranking of the shares matters after min-max: a scaled copy gives the same.
    expect(direct(owlPlugin as MethodPlugin<unknown>, three([0.02, 0.04, 0.06]))).toEqual(result);
  });

  it("atp: four blocks at 50% from uniform (β = 0) to the steepest ramp, which touches both bounds", () => {
    const base = someContext(["positive", "positive", "positive", "positive"]);
    const context = { ...base, blockParams: [100, 100, 100, 100], target: 0.5 };
    const method = atpPlugin.method;
    if (method.kind !== "grid") throw new Error("atp is a grid method");
    const candidates = method.candidates(context, loadSearchSpace(atpPlugin));
    // β_max = 2·min(0.5 - 0, 0.99 - 0.5) / (4 - 1) = 0.98 / 3; above 10 points of 0.002 the
    // grid steps by β_max / 10: β = 0, 0.0327, ..., 0.3267, eleven candidates.
    expect(candidates).toHaveLength(11);
    expect(candidates[0]!.allocation).toEqual([0.5, 0.5, 0.5, 0.5]);
    const steepest = candidates[10]!.allocation;
    [0.01, 0.5 - 0.98 / 6, 0.5 + 0.98 / 6, 0.99].forEach((v, b) => expect(steepest[b]).toBeCloseTo(v, 12));
    const second = candidates[1]!.allocation;
    // s_i = S - β(L-1)/2 + βi with β = 0.098/3.
    [0.5 - 0.147 / 3, 0.5 - 0.049 / 3, 0.5 + 0.049 / 3, 0.5 + 0.147 / 3].forEach((v, b) => expect(second[b]).toBeCloseTo(v, 12));
  });
});

// ---------------------------------------------------------------- registry

describe("plugin registry", () => {
  it("finds every plugin folder and loads it by name", async () => {
    const names = availablePlugins();
    expect(names).toEqual(expect.arrayContaining(["atp", "dsa", "mrp", "msp", "msp-nm", "owl", "uniform"]));
    for (const name of names) {
      const plugin = await loadPlugin(name);
      expect(plugin.name).toBe(name);
      expect(["direct", "grid", "evolve"]).toContain(plugin.method.kind);
    }
  });

  it("refuses an unknown name, listing the known ones", async () => {
    await expect(loadPlugin("nonesuch")).rejects.toBeInstanceOf(UsageError);
    await expect(loadPlugin("nonesuch")).rejects.toThrow(/built-in: .*dsa.*msp-nm/);
    await expect(loadPlugin("../src")).rejects.toBeInstanceOf(UsageError);
  });
});
