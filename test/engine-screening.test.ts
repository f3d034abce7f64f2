/**
 * Multi-stage selection in the generational strategy (`--screen`): every generation
 * screens its new candidates on minibatches of growing tokens, the best of each screen go
 * on, and the population is made of default-fidelity scores only (the survivors of the
 * last screen and the elites); token budgets are never passed; the same seed gives the same
 * run in any evaluation order, and a resumed run ends exactly as an uninterrupted one.
 */
import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions, type EvolveResult } from "../src/engine/evolve.ts";
import { generationalProblems, parseScreening, type ScreeningStage } from "../src/engine/generational.ts";
import { fitnessOk, type Fidelity, type Fitness } from "../src/engine/genome.ts";
import { ranking } from "../src/engine/selection.ts";
import type { HistoryRecord } from "../src/engine/state.ts";
import { Rng } from "../src/rng.ts";
import { fakeClock, scrambled, sphere, store, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";

/** Default fidelity: the exact sphere on 100 tokens; a minibatch: plus noise from (seed, generation, stage, phenotype). */
const noisyScore = (seed: number, v: Vector, fidelity: Fidelity): Fitness => {
  if (fidelity.tokens === undefined) return { ...fitnessOk(sphere(v)), tokens: 100 };
  const u = new Rng(seed).split(fidelity.generation).split(fidelity.stage).split(v.join(",")).next();
  return { ...fitnessOk(sphere(v) + ((u - 0.5) * 16) / Math.sqrt(fidelity.tokens)), tokens: fidelity.tokens };
};

const screeningArb = fc.constantFrom<ScreeningStage[]>(
  [{ candidates: 8, tokens: 16 }],
  [{ candidates: 12, tokens: 16 }, { candidates: 6, tokens: 64 }],
  [{ candidates: 6, tokens: 32 }, { candidates: 6, tokens: 32 }, { candidates: 4, tokens: 128 }],
);

const searchArb = fc.record({
  seed: fc.integer({ min: 0, max: 2 ** 31 }),
  screening: screeningArb,
  population: fc.integer({ min: 2, max: 4 }),
  elitism: fc.integer({ min: 0, max: 1 }),
  generations: fc.integer({ min: 1, max: 6 }),
  budgetTokens: fc.option(fc.integer({ min: 100, max: 3000 }), { nil: undefined }),
});
type Search = typeof searchArb extends fc.Arbitrary<infer T> ? T : never;

const options = (time: Clocked, c: Search, overrides: Partial<EvolveOptions<Vector, Vector>> = {}): EvolveOptions<Vector, Vector> => ({
  genome: vectorGenome(),
  phenotypeKey: (v) => v.join(","),
  evaluate: (batch, fidelity) =>
    Effect.sync(() =>
      batch.map((v) => {
        time.advance(1000);
        return noisyScore(c.seed, v, fidelity);
      }),
    ),
  tokensOf: (f) => f.tokens ?? 100,
  seed: c.seed,
  population: c.population,
  elitism: c.elitism,
  generations: c.generations,
  screening: c.screening,
  ...(c.budgetTokens !== undefined ? { budgetTokens: c.budgetTokens } : {}),
  ...overrides,
});

const run = (o: EvolveOptions<Vector, Vector>, time: Clocked): Promise<EvolveResult<Vector, Vector>> =>
  Effect.runPromise(evolve(o).pipe(Effect.provideService(Clock.Clock, time.clock)));

const byGeneration = (history: readonly HistoryRecord[]) => {
  const out = new Map<number, HistoryRecord[]>();
  for (const r of history) out.set(r.generation, [...(out.get(r.generation) ?? []), r]);
  return out;
};

describe("generational strategy with screening stages", () => {
  it("screens each generation's candidates on growing minibatches, the best going on, and builds the population on the default fidelity", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, async (c) => {
        const time = fakeClock();
        const result = await run(options(time, c, { budgetTokens: undefined }), time);
        const screens = c.screening.length;
        let population: HistoryRecord[] = [];
        for (const [g, records] of byGeneration(result.history)) {
          const at = (s: number) => records.filter((r) => (r.stage ?? 0) === s);
          for (let s = 0; s < screens; s++) {
            const stage = at(s);
            // Screen s scores its candidates on its tokens; the first screen has them all.
            expect(stage.length).toBe(s === 0 ? c.screening[0]!.candidates : c.screening[s]!.candidates);
            // (a candidate's tokens: what the host reported for it, 0 when cached)
            expect(stage.every((r) => r.cached || r.tokens === c.screening[s]!.tokens)).toBe(true);
            // Those that went on are the best of the screen.
            const next = s + 1 < screens ? at(s + 1) : at(screens);
            const passed = new Set(next.map((r) => r.key));
            const order = ranking(stage.map((r) => r.fitness ?? Infinity));
            const places = s + 1 < screens ? c.screening[s + 1]!.candidates : c.population - (g === 0 ? 0 : Math.min(c.elitism, population.length));
            expect(order.slice(0, places).every((i) => passed.has(stage[i]!.key))).toBe(true);
          }
          const last = at(screens);
          // The population: elites of the last generation and the last screen's best, on the default fidelity.
          expect(last.length).toBe(c.population);
          expect(last.every((r) => r.cached || r.tokens === 100)).toBe(true);
          if (g > 0 && c.elitism > 0) expect(last[0]!.key).toBe(population[ranking(population.map((r) => r.fitness ?? Infinity))[0]!]!.key);
          population = last;
        }
        // The best is a default-fidelity score.
        const defaults = result.history.filter((r) => (r.stage ?? 0) === screens && r.fitness !== null).map((r) => r.fitness!);
        expect(result.best?.fitness).toBe(Math.min(...defaults));
      }),
      { numRuns: 60 },
    );
  });

  it("never passes a token budget", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, async (c) => {
        fc.pre(c.budgetTokens !== undefined);
        const time = fakeClock();
        const result = await run(options(time, { ...c, generations: 50 }), time);
        expect(result.history.reduce((n, r) => n + (r.tokens ?? 0), 0)).toBeLessThanOrEqual(c.budgetTokens!);
      }),
      { numRuns: 60 },
    );
  });

  it("the same seed gives the same run in any evaluation order, and resuming after any generation ends the same", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, fc.integer(), fc.nat(), async (search, shuffleSeed, pick) => {
        // Without a token budget: a run cut by one stops there, and the search job, not the
        // engine, knows a finished run (resuming it does nothing).
        const c = { ...search, budgetTokens: undefined };
        const time = fakeClock();
        const saved = store();
        const whole = await run(options(time, c, { checkpoint: saved.checkpoint }), time);
        const out = fakeClock();
        expect(await run(options(out, c, { evaluate: (batch, f) => scrambled(out, shuffleSeed, batch, (v) => noisyScore(c.seed, v, f)) }), out)).toEqual(whole);
        if (saved.states.length === 0) return;
        const later = fakeClock();
        const resumed = await run(options(later, c, { checkpoint: store(saved.states[pick % saved.states.length]).checkpoint }), later);
        expect(resumed.history).toEqual(whole.history);
        expect(resumed.best).toEqual(whole.best);
      }),
      { numRuns: 50 },
    );
  });

  it("--screen parses CANDIDATES@TOKENS lists and refuses screens smaller than the population or growing", () => {
    expect(parseScreening("64@1024,16@4096")).toEqual([{ candidates: 64, tokens: 1024 }, { candidates: 16, tokens: 4096 }]);
    for (const bad of ["", "64", "64@", "@5", "a@b", "64@1024;16@4096", "-1@5"]) expect(() => parseScreening(bad)).toThrow(RangeError);
    expect(generationalProblems({ population: 8, screening: [{ candidates: 4, tokens: 10 }] })).toEqual(["screening stage 0 candidates must be a whole number in [8, Infinity], got 4"]);
    expect(generationalProblems({ population: 4, screening: [{ candidates: 8, tokens: 10 }, { candidates: 16, tokens: 10 }] })).toEqual(["screening stage 1 candidates must be a whole number in [4, 8], got 16"]);
    expect(generationalProblems({ population: 4, screening: [{ candidates: 8, tokens: 0 }] })).toEqual(["screening stage 0 tokens must be a whole number in [1, Infinity], got 0"]);
  });
});
