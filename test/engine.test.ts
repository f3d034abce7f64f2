import { Clock, Data, Effect, Exit } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions, type EvolveResult } from "../src/engine/evolve.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../src/engine/genome.ts";
import type { HistoryRecord } from "../src/engine/state.ts";

import { fakeClock, scrambled, store, sphere, TARGET, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";


/** Every evaluation takes one fake second. */
const evaluator =
  (time: Clocked, score: (v: Vector) => Fitness = (v) => fitnessOk(sphere(v)), calls?: Vector[][]) =>
  (batch: readonly Vector[]) =>
    Effect.sync(() => {
      calls?.push([...batch]);
      return batch.map((v) => {
        time.advance(1000);
        return score(v);
      });
    });

/** The same scores, computed concurrently and finishing in a scrambled order. */
const scrambledEvaluator = (time: Clocked, shuffleSeed: number) => (batch: readonly Vector[]) =>
  scrambled(time, shuffleSeed, batch, (v) => fitnessOk(sphere(v)));

type Options<E = never> = EvolveOptions<Vector, Vector, E>;

const run = <E>(options: Options<E>, time: Clocked): Promise<EvolveResult<Vector, Vector>> =>
  Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const runExit = <E>(options: Options<E>, time: Clocked) =>
  Effect.runPromiseExit(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const base = (time: Clocked, overrides: Partial<Options> = {}): Options => ({
  genome: vectorGenome(),
  phenotypeKey: (v) => v.join(","),
  evaluate: evaluator(time),
  seed: 1,
  population: 8,
  generations: 6,
  ...overrides,
});


const settingsArb = fc.record({
  seed: fc.integer({ min: 0, max: 2 ** 31 }),
  population: fc.integer({ min: 2, max: 10 }),
  generations: fc.integer({ min: 1, max: 8 }),
  elitism: fc.integer({ min: 0, max: 2 }),
  tournament: fc.integer({ min: 1, max: 4 }),
  crossoverRate: fc.double({ min: 0, max: 1, noNaN: true }),
  mutationRate: fc.double({ min: 0, max: 1, noNaN: true }),
});

const limitsArb = fc.record({
  patience: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
  budgetEvals: fc.option(fc.integer({ min: 1, max: 40 }), { nil: undefined }),
});

const generationBests = (history: readonly HistoryRecord[]): number[] => {
  const bests: number[] = [];
  for (const r of history) if (r.fitness !== null) bests[r.generation] = Math.min(bests[r.generation] ?? Infinity, r.fitness);
  return bests;
};

class Killed extends Data.TaggedError("Killed")<{}> {}

describe("evolve", () => {
  it("finds the optimum of a small problem and reports a consistent best", async () => {
    const time = fakeClock();
    const result = await run(base(time, { population: 16, generations: 30 }), time);
    expect(result.best?.fitness).toBe(0);
    expect(result.best?.phenotype).toEqual(TARGET);
    expect(result.best?.fitness).toBe(Math.min(...result.history.flatMap((r) => (r.fitness === null ? [] : [r.fitness]))));
    expect(result.history.length).toBe(16 * 30);
    expect(result.stoppedBy).toBe("generations");
  });

  it("the same seed and settings give the same history", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, async (s) => {
        const settings = { ...s, elitism: Math.min(s.elitism, s.population - 1) };
        const first = fakeClock();
        const second = fakeClock();
        const a = await run(base(first, settings), first);
        const b = await run(base(second, settings), second);
        expect(b).toEqual(a);
      }),
      { numRuns: 60 },
    );
  });

  it("a resumed run ends exactly as an uninterrupted one, whatever generation it stopped at", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, limitsArb, fc.nat(), async (s, limits, pick) => {
        const settings = { ...s, ...limits, elitism: Math.min(s.elitism, s.population - 1) };
        const time = fakeClock();
        const saved = store();
        const whole = await run(base(time, { ...settings, checkpoint: saved.checkpoint }), time);
        expect(saved.states.length).toBe(whole.generations);
        const k = pick % saved.states.length;
        const later = fakeClock();
        const resumed = await run(base(later, { ...settings, checkpoint: store(saved.states[k]).checkpoint }), later);
        expect(resumed).toEqual(whole);
      }),
      { numRuns: 60 },
    );
  });

  it("a run killed by its evaluator after generation k resumes into the uninterrupted history", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 0, max: 7 }), async (seed, k) => {
        const settings = { seed, population: 6, generations: 8 };
        const time = fakeClock();
        const whole = await run(base(time, settings), time);

        const killedTime = fakeClock();
        const saved = store();
        let calls = 0;
        const healthy = evaluator(killedTime);
        const dying = (batch: readonly Vector[]) => (calls++ === k ? Effect.fail(new Killed()) : healthy(batch));
        const exit = await runExit({ ...base(killedTime, settings), evaluate: dying, checkpoint: saved.checkpoint }, killedTime);
        const killed = calls > k;
        expect(Exit.isFailure(exit)).toBe(killed);
        if (killed) expect(JSON.stringify(exit)).toContain("Killed");

        const resumeTime = fakeClock();
        const last = saved.states.at(-1);
        const resumed = await run(base(resumeTime, { ...settings, checkpoint: store(last).checkpoint }), resumeTime);
        expect(resumed).toEqual(whole);
      }),
      { numRuns: 40 },
    );
  });

  it("a run extended past its generation limit continues the same search", async () => {
    const time = fakeClock();
    const whole = await run(base(time, { generations: 9 }), time);
    const firstTime = fakeClock();
    const saved = store();
    const short = await run(base(firstTime, { generations: 4, checkpoint: saved.checkpoint }), firstTime);
    expect(short.generations).toBe(4);
    const laterTime = fakeClock();
    let evaluated = 0;
    const counting = (batch: readonly Vector[]) => {
      evaluated += batch.length;
      return evaluator(laterTime)(batch);
    };
    const continued = await run(
      base(laterTime, { generations: 9, evaluate: counting, checkpoint: store(saved.states.at(-1)).checkpoint }),
      laterTime,
    );
    expect(continued).toEqual(whole);
    expect(evaluated).toBe(whole.evaluations - short.evaluations);
  });

  it("refuses to resume a state saved under another seed", async () => {
    const time = fakeClock();
    const saved = store();
    await run(base(time, { generations: 2, checkpoint: saved.checkpoint }), time);
    const exit = await runExit(base(time, { seed: 2, checkpoint: store(saved.states.at(-1)).checkpoint }), time);
    expect(Exit.isFailure(exit)).toBe(true);
    expect(JSON.stringify(exit)).toContain("UsageError");
  });

  it("never passes a phenotype to evaluate twice; repeats are cache hits with the first fitness", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, async (s) => {
        const time = fakeClock();
        const calls: Vector[][] = [];
        const genome = vectorGenome(2, 3); // 16 phenotypes in all
        const result = await run(
          {
            ...base(time, { ...s, elitism: Math.min(s.elitism, s.population - 1), generations: 12 }),
            genome,
            evaluate: evaluator(time, (v) => fitnessOk(sphere(v)), calls),
          },
          time,
        );
        const passed = calls.flat().map((v) => v.join(","));
        expect(new Set(passed).size).toBe(passed.length);
        expect(passed.length).toBe(result.evaluations);
        expect(passed.length).toBeLessThanOrEqual(16);
        expect(calls.every((batch) => batch.length > 0)).toBe(true);
        const fresh = result.history.filter((r) => !r.cached);
        expect(fresh.map((r) => r.key)).toEqual(passed);
        const first = new Map(fresh.map((r) => [r.key, r.fitness]));
        for (const r of result.history) {
          expect(r.fitness).toBe(first.get(r.key));
          expect(r.seconds).toBe(r.cached ? 0 : 1);
        }
      }),
      { numRuns: 40 },
    );
  });

  it("records failed and non-finite evaluations and keeps searching", async () => {
    const time = fakeClock();
    const score = (v: Vector): Fitness =>
      v[0]! % 3 === 0 ? fitnessFailed("out of memory") : v[1]! % 3 === 0 ? { ok: true, value: NaN } : fitnessOk(sphere(v));
    const result = await run(base(time, { population: 10, generations: 10, evaluate: evaluator(time, score) }), time);
    expect(result.stoppedBy).toBe("generations");
    expect(result.generations).toBe(10);
    const failed = result.history.filter((r) => r.fitness === null);
    expect(failed.length).toBeGreaterThan(0);
    expect(failed.some((r) => r.error === "out of memory")).toBe(true);
    expect(failed.some((r) => r.error?.includes("non-finite"))).toBe(true);
    expect(result.history.filter((r) => r.fitness !== null).every((r) => r.error === undefined)).toBe(true);
    expect(result.best).toBeDefined();
    expect(result.best!.phenotype[0]! % 3).not.toBe(0);
    expect(JSON.parse(JSON.stringify(result.history))).toEqual(result.history);
  });

  it("an all-failing search ends with no best and no crash", async () => {
    const time = fakeClock();
    const saved = store();
    const generations: (number | undefined)[] = [];
    const result = await run(
      base(time, {
        evaluate: evaluator(time, () => fitnessFailed("broken")),
        checkpoint: saved.checkpoint,
        onGeneration: (g) => generations.push(g.best, g.median),
      }),
      time,
    );
    expect(result.best).toBeUndefined();
    expect(result.stoppedBy).toBe("generations");
    expect(result.history.length).toBe(8 * 6);
    expect(result.history.every((r) => r.fitness === null && r.error === "broken")).toBe(true);
    expect(generations.every((x) => x === undefined)).toBe(true);
    expect(saved.states.at(-1)?.best).toBeNull();
  });

  it("fails with the evaluator's own error", async () => {
    const time = fakeClock();
    const exit = await runExit({ ...base(time), evaluate: () => Effect.fail(new Killed()) }, time);
    expect(Exit.isFailure(exit)).toBe(true);
    expect(JSON.stringify(exit)).toContain("Killed");
  });

  it("never exceeds the evaluation budget, and spends it exactly when it stops for it", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, fc.integer({ min: 1, max: 40 }), async (s, budget) => {
        const time = fakeClock();
        const calls: Vector[][] = [];
        const result = await run(
          {
            ...base(time, { ...s, elitism: Math.min(s.elitism, s.population - 1), budgetEvals: budget }),
            evaluate: evaluator(time, (v) => fitnessOk(sphere(v)), calls),
          },
          time,
        );
        expect(calls.flat().length).toBe(result.evaluations);
        expect(result.evaluations).toBeLessThanOrEqual(budget);
        if (result.stoppedBy === "budget") expect(result.evaluations).toBe(budget);
        else expect(result.stoppedBy).toBe("generations");
        expect(result.history.filter((r) => !r.cached).length).toBe(result.evaluations);
      }),
      { numRuns: 60 },
    );
  });

  it("stops after `patience` generations without improvement", async () => {
    const time = fakeClock();
    const flat = await run(
      base(time, { generations: 50, patience: 3, evaluate: evaluator(time, () => fitnessOk(1)) }),
      time,
    );
    expect(flat.stoppedBy).toBe("patience");
    expect(flat.generations).toBe(1 + 3);

    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 4 }), async (seed, patience) => {
        const t = fakeClock();
        const result = await run(base(t, { seed, population: 4, generations: 40, patience }), t);
        const bests = generationBests(result.history);
        const soFar = bests.map((_, g) => Math.min(...bests.slice(0, g + 1)));
        if (result.stoppedBy === "patience") {
          const last = soFar.length - 1;
          expect(soFar[last - patience]).toBe(soFar[last]);
          expect(last - patience === 0 || soFar[last - patience - 1]! > soFar[last]!).toBe(true);
        } else {
          expect(result.stoppedBy).toBe("generations");
        }
      }),
      { numRuns: 40 },
    );
  });

  it("with elitism the best of each generation never gets worse", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, fc.integer({ min: 1, max: 2 }), async (s, elitism) => {
        const time = fakeClock();
        const result = await run(base(time, { ...s, elitism: Math.min(elitism, s.population - 1) }), time);
        const bests = generationBests(result.history);
        for (let g = 1; g < bests.length; g++) expect(bests[g]).toBeLessThanOrEqual(bests[g - 1]!);
      }),
      { numRuns: 60 },
    );
  });

  it("gives the same results whether evaluate runs the batch in order or concurrently out of order", async () => {
    await fc.assert(
      fc.asyncProperty(settingsArb, fc.integer(), async (s, shuffleSeed) => {
        const settings = { ...s, elitism: Math.min(s.elitism, s.population - 1) };
        const inOrder = fakeClock();
        const scrambled = fakeClock();
        const a = await run(base(inOrder, settings), inOrder);
        const b = await run(base(scrambled, { ...settings, evaluate: scrambledEvaluator(scrambled, shuffleSeed) }), scrambled);
        expect(b).toEqual(a);
      }),
      { numRuns: 40 },
    );
  });

  it("stops at the first generation boundary past the time budget", async () => {
    const time = fakeClock();
    const records: { seconds: number }[] = [];
    const result = await run(
      base(time, { generations: 100, timeBudgetSeconds: 20, onGeneration: (g) => records.push(g) }),
      time,
    );
    expect(result.stoppedBy).toBe("time");
    expect(records.at(-1)!.seconds).toBeGreaterThanOrEqual(20);
    expect(records.slice(0, -1).every((g) => g.seconds < 20)).toBe(true);
  });

  it("reports progress per generation and per evaluation", async () => {
    const time = fakeClock();
    const generations: number[] = [];
    const evaluations: HistoryRecord[] = [];
    const result = await run(
      base(time, { onGeneration: (g) => generations.push(g.generation), onEvaluation: (r) => evaluations.push(r) }),
      time,
    );
    expect(generations).toEqual([0, 1, 2, 3, 4, 5]);
    expect(evaluations).toEqual(result.history);
  });

  it("rejects settings that make no sense", async () => {
    const time = fakeClock();
    for (const bad of [{ population: 0 }, { elitism: 8 }, { crossoverRate: 1.5 }, { budgetEvals: 0 }, { generations: 2.5 }]) {
      const exit = await runExit(base(time, bad), time);
      expect(JSON.stringify(exit)).toContain("UsageError");
    }
  });
});
