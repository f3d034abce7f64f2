/**
 * Plans derived from a budget (src/search/plan.ts): run on the engine with no generation
 * cap, a derived plan never passes its token budget and spends at least 90% of it, with
 * at least 30 generations wherever the budget pays for one window a stage.
 */
import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions } from "../src/engine/evolve.ts";
import { fitnessOk, type Fidelity, type Genome } from "../src/engine/genome.ts";
import { staged } from "../src/engine/staged.ts";
import { MIN_GENERATIONS, plannedGenerations, screenedPlaces, screenEvaluations, screenPlanFor, screenTokensPerGeneration, stagedEvaluations, stagedPlanFor, stagedTokens } from "../src/search/plan.ts";
import { loadSearchSpace } from "../src/search/space.ts";
import { plugin as evopress } from "../plugins/evopress/index.ts";
import { fakeClock, sphere, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";

const run = (options: EvolveOptions<Vector, Vector>, time: Clocked) => Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));
const spent = (history: readonly { tokens: number }[]) => history.reduce((n, r) => n + r.tokens, 0);

/**
 * A host whose stages draw whole windows of `windowTokens` scored tokens, as the fitness
 * text does; an exact evaluation also forwards `exactTokens` of calibration.
 */
const hostOf = (time: Clocked, windowTokens: number, fitnessTokens: number, exactTokens = 0) => {
  const tokensOf = (f: Fidelity): number => (f.tokens === undefined ? fitnessTokens : Math.ceil(f.tokens / windowTokens) * windowTokens) + (f.exact ? exactTokens : 0);
  const evaluate = (batch: readonly Vector[], fidelity: Fidelity) =>
    Effect.sync(() =>
      batch.map((v) => {
        time.advance(5);
        // Minibatch noise: a different score per (generation, stage).
        return { ...fitnessOk(sphere(v) + ((fidelity.generation * 7 + (fidelity.stage ?? 0)) % 5) / 10), tokens: tokensOf(fidelity) };
      }),
    );
  return { tokensOf, evaluate };
};

describe("a staged plan derived from the budget", () => {
  it("never passes the budget, spends at least 90% of it, and pays for at least 30 generations, an exact last stage's calibration counted (property)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 8, max: 600 }),
        fc.integer({ min: 5 * MIN_GENERATIONS, max: 3000 }),
        fc.nat(50),
        fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }),
        async (windowTokens, windows, seed, exactWindows) => {
        // An exact stage's calibration: whole windows of windowTokens + 1 tokens, and a budget that pays for them.
        const exactTokens = exactWindows === undefined ? undefined : exactWindows * (windowTokens + 1);
        const budget = windows * windowTokens * (exactWindows === undefined ? 1 : 3 + exactWindows) + (seed % windowTokens);
        const derived = stagedPlanFor(budget, windowTokens, Infinity, exactTokens);
        expect(derived.generations).toBeGreaterThanOrEqual(MIN_GENERATIONS);
        expect(derived.tokensPerGeneration).toBe(stagedTokens(derived.plan, windowTokens, exactTokens ?? 0));
        expect(derived.generations * derived.tokensPerGeneration).toBeLessThanOrEqual(budget);
        // Only the last stage is exact, only when asked, and never the only stage.
        if (exactTokens !== undefined) expect(derived.plan.stages.length).toBeGreaterThan(1);
        expect(derived.plan.stages.map((st) => st.exact === true)).toEqual(derived.plan.stages.map((_, i) => exactTokens !== undefined && i === derived.plan.stages.length - 1));
        const time = fakeClock();
        const host = hostOf(time, windowTokens, 8 * windowTokens, exactTokens);
        const result = await run(
          {
            genome: vectorGenome(24, 1000),
            phenotypeKey: (v) => v.join(","),
            ...host,
            seed,
            budgetTokens: budget,
            strategy: staged<Vector, Vector>(derived.plan),
          },
          time,
        );
        expect(result.stoppedBy).toBe("budget");
        expect(spent(result.history)).toBeLessThanOrEqual(budget);
        expect(spent(result.history)).toBeGreaterThanOrEqual(0.9 * budget);
        expect(result.generations).toBeGreaterThanOrEqual(MIN_GENERATIONS);
        },
      ),
      { numRuns: 25 },
    );
  });

  it("gives a richer plan to a larger budget, and the cheapest one (fewer generations, said) to a budget too small for 30", () => {
    const small = stagedPlanFor(200_000, 511);
    const large = stagedPlanFor(800_000, 511);
    expect(large.tokensPerGeneration).toBeGreaterThan(small.tokensPerGeneration);
    expect(large.plan.offspring).toBeGreaterThanOrEqual(small.plan.offspring);
    const tiny = stagedPlanFor(20 * 511, 511);
    expect(tiny.plan.stages.map((s) => s.tokens)).toEqual([511]);
    expect(tiny.generations).toBeLessThan(MIN_GENERATIONS);
    expect(() => stagedPlanFor(0, 511)).toThrow(RangeError);
    expect(() => stagedPlanFor(1000, 0)).toThrow(RangeError);
  });
});

describe("a screening plan derived from the budget", () => {
  it("never passes the budget and spends at least 90% of it with the generational strategy (property)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 8, max: 300 }), fc.integer({ min: 2, max: 12 }), fc.integer({ min: 1, max: 4 }), fc.nat(50), async (windowTokens, population, fitnessWindows, seed) => {
        const fitnessTokens = fitnessWindows * windowTokens;
        const budget = MIN_GENERATIONS * (population * fitnessTokens + 8 * population * windowTokens) + seed;
        const derived = screenPlanFor(budget, windowTokens, population, fitnessTokens);
        expect(derived.generations).toBeGreaterThanOrEqual(MIN_GENERATIONS);
        const time = fakeClock();
        const result = await run(
          {
            genome: vectorGenome(24, 1000),
            phenotypeKey: (v) => v.join(","),
            ...hostOf(time, windowTokens, fitnessTokens),
            seed,
            population,
            budgetTokens: budget,
            screening: derived.plan.screen,
          },
          time,
        );
        expect(result.stoppedBy).toBe("budget");
        expect(spent(result.history)).toBeLessThanOrEqual(budget);
        expect(spent(result.history)).toBeGreaterThanOrEqual(0.9 * budget);
        // Each generation after the first (which has no elites yet) costs at most what the
        // plan says, and the run's own plan line quotes the same cost.
        expect(derived.tokensPerGeneration).toBe(screenTokensPerGeneration(derived.plan, windowTokens, screenedPlaces(population), fitnessTokens));
        const generations = Math.max(...result.history.map((r) => r.generation));
        for (let g = 1; g < generations; g++) expect(spent(result.history.filter((r) => r.generation === g))).toBeLessThanOrEqual(derived.tokensPerGeneration);
      }),
      { numRuns: 20 },
    );
  });
});

/** Vectors whose every mutation is a fresh draw of 64 values in 0..1e6. */
const freshGenome: Genome<Vector, Vector> = { ...vectorGenome(64, 1_000_000), mutate: (v, rng) => v.map(() => rng.int(1_000_001)) };

describe("the generations a run's limits pay for (the plan line's estimate, the progress bar's total)", () => {
  it("are what the engine runs when no candidate repeats, give or take the one a budget cuts short, for evaluation and token budgets (property)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 8, max: 300 }),
        fc.integer({ min: 2, max: 8 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 400 }),
        fc.option(fc.integer({ min: 1, max: 40 }), { nil: undefined }),
        fc.nat(50),
        async (windowTokens, population, screened, budgetEvals, generations, seed) => {
          const fitnessTokens = 2 * windowTokens;
          const time = fakeClock();
          const host = hostOf(time, windowTokens, fitnessTokens);
          const places = screenedPlaces(population);
          const stagedPlan = stagedPlanFor(50 * windowTokens, windowTokens).plan;
          // Half the runs staged (no elites), half generational, screened or not.
          const staging = seed % 2 === 0;
          const screen = screened ? [{ candidates: 2 * population, tokens: windowTokens }] : [];
          const cost = staging
            ? { tokens: stagedTokens(stagedPlan, windowTokens), evaluations: stagedEvaluations(stagedPlan) }
            : { tokens: screenTokensPerGeneration({ screen }, windowTokens, places, fitnessTokens), evaluations: screenEvaluations({ screen }, places) };
          const budgetTokens = (budgetEvals % 7) * cost.tokens + seed;
          const limits = { budgetEvals, ...(generations !== undefined ? { generations } : {}), ...(budgetTokens > cost.tokens ? { budgetTokens } : {}) };
          const planned = plannedGenerations(cost, limits)!;
          // Children drawn afresh from a vast space never repeat, so every candidate costs. (A
          // ±1 step mutation does repeat: with 2 individuals its walk revisits old children.)
          const result = await run(
            {
              genome: freshGenome,
              phenotypeKey: (v) => v.join(","),
              ...host,
              seed,
              ...limits,
              ...(staging ? { strategy: staged<Vector, Vector>(stagedPlan) } : { population, ...(screen.length > 0 ? { screening: screen } : {}) }),
            },
            time,
          );
          // The estimate counts whole generations; the engine also counts the one a budget cuts
          // short. The first generation of a generational run also scores its elite, so that run
          // may finish one fewer.
          expect(result.generations).toBeLessThanOrEqual(planned + 1);
          expect(result.generations).toBeGreaterThanOrEqual(planned - (staging ? 0 : 1));
          if (generations !== undefined) expect(result.generations).toBeLessThanOrEqual(generations);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("a stage scored with the final protocol (exact)", () => {
  it("is asked with Fidelity.exact on its own tokens, and its scores never count as the run's best default-fidelity scores", async () => {
    const seen: Fidelity[] = [];
    const time = fakeClock();
    const host = hostOf(time, 10, 80);
    const result = await run(
      {
        genome: vectorGenome(12, 100),
        phenotypeKey: (v) => v.join(","),
        tokensOf: host.tokensOf,
        evaluate: (batch, fidelity) => {
          seen.push(fidelity);
          return host.evaluate(batch, fidelity);
        },
        seed: 4,
        generations: 5,
        strategy: staged<Vector, Vector>({ offspring: 4, stages: [{ survivors: 2, tokens: 10 }, { survivors: 1, tokens: 40, exact: true }] }),
      },
      time,
    );
    expect(seen.filter((f) => f.stage === 0).every((f) => f.exact === undefined && f.tokens === 10)).toBe(true);
    expect(seen.filter((f) => f.stage === 1).every((f) => f.exact === true && f.tokens === 40)).toBe(true);
    expect(seen.filter((f) => f.stage === 1)).toHaveLength(5);
    // The staged leader is the parent with its exact last-stage score.
    const last = result.history.filter((r) => r.stage === 1 && r.generation === 4);
    expect(result.best!.fitness).toBe(Math.min(...last.map((r) => r.fitness!)));
  });

  it("is the last stage of a derived evopress plan as the space says, else as the run's plan says", () => {
    const plain = stagedPlanFor(800_000, 511).plan;
    const exact = stagedPlanFor(800_000, 511, Infinity, 8 * 512).plan;
    const lastOnly = (stages: readonly { exact?: boolean }[]) => [...stages.slice(0, -1).map(() => false), true];
    const exactOf = (space: object, plan: typeof plain) => evopress.stagedPlan!(evopress.withStagedPlan!(space as never, plan))!.stages.map((st) => st.exact ?? false);
    const space = loadSearchSpace(evopress);
    expect(exactOf({ ...space, exactLastStage: true }, plain)).toEqual(lastOnly(plain.stages));
    expect(exactOf({ ...space, exactLastStage: false }, exact).some((e) => e)).toBe(false);
    expect(exactOf(space, exact)).toEqual(lastOnly(exact.stages));
    expect(exactOf(space, plain).some((e) => e)).toBe(false);
  });
});
