/**
 * The token budget (evolve's budgetTokens): no evaluation starts that would pass it, with
 * the generational strategy and with staged selection, and a resumed run with a larger
 * budget continues where the smaller one stopped.
 */
import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions } from "../src/engine/evolve.ts";
import { fitnessOk, type Fidelity } from "../src/engine/genome.ts";
import { staged } from "../src/engine/staged.ts";
import { fakeClock, sphere, store, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";

/** Default fidelity costs 100 tokens; a stage costs the tokens it asks for. */
const tokensOf = (f: Fidelity): number => f.tokens ?? 100;
const host = (time: Clocked) => (batch: readonly Vector[], fidelity: Fidelity) =>
  Effect.sync(() =>
    batch.map((v) => {
      time.advance(10);
      return { ...fitnessOk(sphere(v) + (fidelity.tokens ? 1 / fidelity.tokens : 0)), tokens: tokensOf(fidelity) };
    }),
  );

const run = (options: EvolveOptions<Vector, Vector>, time: Clocked) => Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const spent = (history: readonly { tokens: number }[]) => history.reduce((n, r) => n + r.tokens, 0);

describe("the token budget", () => {
  it("is never passed, and stops the run by 'budget' (property: generational and staged)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 100, max: 6000 }), fc.boolean(), fc.nat(100), async (budget, useStages, seed) => {
        const time = fakeClock();
        const result = await run(
          {
            genome: vectorGenome(),
            phenotypeKey: (v) => v.join(","),
            evaluate: host(time),
            seed,
            generations: 1000,
            budgetTokens: budget,
            tokensOf,
            ...(useStages ? { strategy: staged<Vector, Vector>({ offspring: 6, stages: [{ survivors: 2, tokens: 50 }, { survivors: 1, tokens: 200 }] }) } : { population: 5 }),
          },
          time,
        );
        expect(spent(result.history)).toBeLessThanOrEqual(budget);
        expect(result.stoppedBy).toBe("budget");
        // Not stopped early: the next evaluation of the cheapest kind would not have fitted.
        expect(spent(result.history) + (useStages ? 50 : 100)).toBeGreaterThan(budget - (useStages ? 200 : 0));
      }),
      { numRuns: 40 },
    );
  });

  it("a run stopped by its budget and resumed with a larger one keeps its history and spends at most the new budget", async () => {
    const options = (budgetTokens: number, time: Clocked, checkpoint: ReturnType<typeof store>["checkpoint"]) => ({
      genome: vectorGenome(),
      phenotypeKey: (v: Vector) => v.join(","),
      evaluate: host(time),
      seed: 7,
      generations: 1000,
      budgetTokens,
      tokensOf,
      strategy: staged<Vector, Vector>({ offspring: 6, stages: [{ survivors: 2, tokens: 50 }, { survivors: 1, tokens: 200 }] }),
      checkpoint,
    });
    const time = fakeClock();
    const first = store();
    const stopped = await run(options(1500, time, first.checkpoint), time);
    expect(stopped.stoppedBy).toBe("budget");
    const resumed = await run(options(4000, time, store(first.states.at(-1)).checkpoint), time);
    expect(resumed.history.slice(0, stopped.history.length)).toEqual(stopped.history);
    expect(resumed.history.length).toBeGreaterThan(stopped.history.length);
    expect(spent(resumed.history)).toBeLessThanOrEqual(4000);
    expect(resumed.stoppedBy).toBe("budget");
  });

  it("needs the host's token counts, and a whole positive budget", async () => {
    const time = fakeClock();
    const base = { genome: vectorGenome(), phenotypeKey: (v: Vector) => v.join(","), evaluate: host(time), seed: 1, generations: 3, population: 4 };
    await expect(run({ ...base, budgetTokens: 100 }, time)).rejects.toThrow(/needs the host's token count/);
    await expect(run({ ...base, budgetTokens: 0, tokensOf }, time)).rejects.toThrow(/token budget must be a whole number/);
  });
});
