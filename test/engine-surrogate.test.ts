/**
 * The pre-screening surrogate (src/engine/surrogate.ts) and staged selection with it: ridge
 * regression recovers a linear law; pre-screened children are the ones it predicts best;
 * runs stay deterministic and resume exactly with the surrogate's observations in the
 * saved state; on a toy problem it reaches a better parent for the same tokens.
 */
import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions } from "../src/engine/evolve.ts";
import { fitnessOk, type Fidelity, type Genome } from "../src/engine/genome.ts";
import { staged } from "../src/engine/staged.ts";
import { fitRidge, predict } from "../src/engine/surrogate.ts";
import { Rng } from "../src/rng.ts";
import { fakeClock, sphere, store, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";

const withFeatures = (): Genome<Vector, Vector> => ({ ...vectorGenome(), features: (v) => v });

/** Noisy stage scores from (seed, generation, stage, phenotype) alone. */
const host = (time: Clocked, seed: number) => (batch: readonly Vector[], f: Fidelity) =>
  Effect.sync(() =>
    batch.map((v) => {
      time.advance(10);
      const u = new Rng(seed).split(f.generation).split(f.stage).split(v.join(",")).next();
      return { ...fitnessOk(sphere(v) + (u - 0.5) * 2), tokens: f.tokens ?? 100 };
    }),
  );

const run = (options: EvolveOptions<Vector, Vector>, time: Clocked) => Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const options = (prescreen: boolean, time: Clocked, seed: number, generations: number, checkpoint?: ReturnType<typeof store>["checkpoint"]): EvolveOptions<Vector, Vector> => ({
  genome: withFeatures(),
  phenotypeKey: (v) => v.join(","),
  evaluate: host(time, seed),
  seed,
  generations,
  strategy: staged<Vector, Vector>({ offspring: 4, stages: [{ survivors: 2, tokens: 50 }, { survivors: 1, tokens: 200 }], ...(prescreen ? { prescreen: { pool: 16, warmup: 8 } } : {}) }),
  ...(checkpoint ? { checkpoint } : {}),
});

describe("fitRidge", () => {
  it("recovers the weights of a noiseless linear law (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 1, maxLength: 6 }), fc.nat(1000), (w, seed) => {
        const rng = new Rng(seed);
        const observations = Array.from({ length: 40 }, () => {
          const x = w.map(() => rng.int(7) - 3);
          return { x, y: predict(w, x) };
        });
        const fitted = fitRidge(observations, 1e-9)!;
        // Identifiable when the sampled x span every direction: they do here almost surely.
        fitted.forEach((v, i) => expect(v).toBeCloseTo(w[i]!, 4));
      }),
    );
    expect(fitRidge([])).toBeUndefined();
  });
});

describe("staged selection with pre-screening", () => {
  it("is deterministic and resumes exactly, observations included", async () => {
    const whole = await run(options(true, fakeClock(), 3, 12), fakeClock());
    const saved = store();
    const time = fakeClock();
    await run(options(true, time, 3, 5, saved.checkpoint), time);
    const resumed = await run(options(true, time, 3, 12, store(saved.states.at(-1)).checkpoint), time);
    expect(resumed.history.map((r) => [r.key, r.fitness])).toEqual(whole.history.map((r) => [r.key, r.fitness]));
    expect(resumed.best).toEqual(whole.best);
    const again = await run(options(true, fakeClock(), 3, 12), fakeClock());
    expect(again.history).toEqual(whole.history);
  });

  it("before its warm-up scores the first children drawn, as without pre-screening", async () => {
    const a = await run(options(true, fakeClock(), 5, 1), fakeClock());
    const b = await run(options(false, fakeClock(), 5, 1), fakeClock());
    expect(a.history.map((r) => r.key)).toEqual(b.history.map((r) => r.key));
  });

  it("reaches a parent at least as good for the same tokens on the toy problem, over several seeds", async () => {
    let better = 0;
    let total = [0, 0];
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const screened = await run(options(true, fakeClock(), seed, 25), fakeClock());
      const plain = await run(options(false, fakeClock(), seed, 25), fakeClock());
      expect(screened.history.reduce((n, r) => n + r.tokens, 0)).toBe(plain.history.reduce((n, r) => n + r.tokens, 0));
      const s = sphere(screened.best!.phenotype);
      const p = sphere(plain.best!.phenotype);
      if (s <= p) better++;
      total = [total[0]! + s, total[1]! + p];
    }
    expect(total[0]).toBeLessThanOrEqual(total[1]!);
    expect(better).toBeGreaterThanOrEqual(3);
  });

  it("refuses a genome without features and a pool smaller than the offspring", () => {
    expect(() => staged({ offspring: 4, stages: [{ survivors: 1 }], prescreen: { pool: 2, warmup: 1 } })).toThrow(/prescreen.pool must be a whole number in \[4/);
    expect(() => staged<Vector, Vector>({ offspring: 4, stages: [{ survivors: 1 }], prescreen: { pool: 8, warmup: 1 } }).init(vectorGenome())).toThrow(/needs a genome with features/);
  });
});
