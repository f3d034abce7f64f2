import { Cause, Clock, Effect, Exit } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions, type EvolveResult } from "../src/engine/evolve.ts";
import { fitnessFailed, fitnessOk, type Fidelity, type Fitness } from "../src/engine/genome.ts";
import { ranking, score } from "../src/engine/selection.ts";
import { decodeEngineState, type EngineState, type HistoryRecord } from "../src/engine/state.ts";
import type { Strategy } from "../src/engine/strategy.ts";
import { Rng } from "../src/rng.ts";

import { fakeClock, scrambled, store, sphere, TARGET, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";


/**
 * A (1+λ) hill climber, with optional staged selection: stage 0 scores the parent and λ
 * mutants on `stages[0]` tokens, each later stage the better half of the last on
 * `stages[s]`; the best of the last stage is the next parent. `stages` ends with undefined
 * (the host's default), so the parent is chosen on comparable scores.
 */
interface Climb {
  readonly parent: Vector | null;
  readonly survivors: readonly Vector[];
}
const climber = (lambda: number, stages: readonly (number | undefined)[] = [undefined]): Strategy<Vector, Vector, Climb> => ({
  name: "climber",
  init: () => ({ parent: null, survivors: [] }),
  ask: ({ parent, survivors }, { genome, stage, rng }) =>
    parent === null ? (stage === 0 ? { genomes: [genome.create(rng.split(0), 0)] } : undefined)
    : stage === 0 ? { genomes: [parent, ...Array.from({ length: lambda }, (_, i) => genome.mutate(parent, rng.split(i + 1)))], tokens: stages[0] }
    : stage < stages.length ? { genomes: survivors, tokens: stages[stage] }
    : undefined,
  tell: ({ parent }, { scored, complete }, { stage }) => {
    const ranked = ranking(scored.map((s) => score(s.fitness))).map((i) => scored[i]!.genome);
    if (parent === null || (complete && stage === stages.length - 1)) return { parent: ranked[0] ?? parent, survivors: [] };
    return complete ? { parent, survivors: ranked.slice(0, Math.ceil(ranked.length / 2)) } : { parent, survivors: [] };
  },
  encode: (state) => state,
  restore: (json) => json as Climb,
});

interface Call {
  readonly keys: string[];
  readonly fidelity: Fidelity;
}

/**
 * Default fidelity: the exact sphere, 100 tokens. Given tokens: the sphere plus noise that
 * depends on the phenotype and on a "minibatch" derived from (seed, generation, stage)
 * alone, as Fidelity asks of a host. Every evaluation takes one fake second.
 */
const hostScore = (seed: number, v: Vector, fidelity: Fidelity): Fitness => {
  const tokens = fidelity.tokens ?? 100;
  if (fidelity.tokens === undefined) return { ...fitnessOk(sphere(v)), tokens };
  const noise = 1 + 4 * new Rng(seed).split(fidelity.generation).split(fidelity.stage).split(v.join(",")).next();
  return { ...fitnessOk(sphere(v) + noise), tokens };
};

const host =
  (time: Clocked, seed: number, calls?: Call[]) =>
  (batch: readonly Vector[], fidelity: Fidelity) =>
    Effect.sync(() => {
      calls?.push({ keys: batch.map((v) => v.join(",")), fidelity });
      return batch.map((v) => {
        time.advance(1000);
        return hostScore(seed, v, fidelity);
      });
    });

/** The same scores, computed concurrently and finishing in a scrambled order. */
const scrambledHost = (time: Clocked, seed: number, shuffleSeed: number) => (batch: readonly Vector[], fidelity: Fidelity) =>
  scrambled(time, shuffleSeed, batch, (v) => hostScore(seed, v, fidelity));

type Options = EvolveOptions<Vector, Vector>;

const run = (options: Options, time: Clocked): Promise<EvolveResult<Vector, Vector>> =>
  Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const runExit = (options: Options, time: Clocked) => Effect.runPromiseExit(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

/** The failure or defect an exit ended with, as text. */
const failureOf = (exit: Exit.Exit<unknown, unknown>): string => (Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "success");


const climbArb = fc.record({
  seed: fc.integer({ min: 0, max: 2 ** 31 }),
  lambda: fc.integer({ min: 1, max: 6 }),
  generations: fc.integer({ min: 1, max: 10 }),
  stages: fc.constantFrom<(number | undefined)[]>([undefined], [16, undefined], [16, 64, undefined], [32, 32, undefined]),
  small: fc.boolean(),
  patience: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
  budgetEvals: fc.option(fc.integer({ min: 1, max: 40 }), { nil: undefined }),
});
type Climbing = typeof climbArb extends fc.Arbitrary<infer T> ? T : never;

const climbing = (time: Clocked, c: Climbing, overrides: Partial<Options> = {}): Options => ({
  genome: c.small ? vectorGenome(2, 3) : vectorGenome(),
  strategy: climber(c.lambda, c.stages),
  phenotypeKey: (v) => v.join(","),
  evaluate: host(time, c.seed),
  seed: c.seed,
  generations: c.generations,
  ...(c.patience !== undefined ? { patience: c.patience } : {}),
  ...(c.budgetEvals !== undefined ? { budgetEvals: c.budgetEvals } : {}),
  ...overrides,
});

const stageOf = (r: HistoryRecord): number => r.stage ?? 0;

describe("a second strategy through the same driver: a (1+λ) hill climber", () => {
  it("finds the optimum, one stage or staged on growing token counts", async () => {
    for (const stages of [[undefined], [16, 64, undefined]]) {
      const time = fakeClock();
      const c = { seed: 1, lambda: 4, generations: 60, stages, small: false, patience: undefined, budgetEvals: undefined };
      const result = await run(climbing(time, c), time);
      expect(result.best?.fitness).toBe(0);
      expect(result.best?.phenotype).toEqual(TARGET);
    }
  });

  it("the same seed gives the same result, whether evaluate runs in order or concurrently out of order", async () => {
    await fc.assert(
      fc.asyncProperty(climbArb, fc.integer(), async (c, shuffleSeed) => {
        const first = fakeClock();
        const second = fakeClock();
        const scrambled = fakeClock();
        const a = await run(climbing(first, c), first);
        expect(await run(climbing(second, c), second)).toEqual(a);
        expect(await run(climbing(scrambled, c, { evaluate: scrambledHost(scrambled, c.seed, shuffleSeed) }), scrambled)).toEqual(a);
      }),
      { numRuns: 50 },
    );
  });

  it("a resumed run ends exactly as an uninterrupted one, whatever generation it stopped at", async () => {
    await fc.assert(
      fc.asyncProperty(climbArb, fc.nat(), async (c, pick) => {
        const time = fakeClock();
        const saved = store();
        const whole = await run(climbing(time, c, { checkpoint: saved.checkpoint }), time);
        expect(saved.states.length).toBe(whole.generations);
        expect(saved.states.every((s) => s.version === 1 && s.strategy.name === "climber")).toBe(true);
        const k = pick % saved.states.length;
        const later = fakeClock();
        const resumed = await run(climbing(later, c, { checkpoint: store(saved.states[k]).checkpoint }), later);
        expect(resumed).toEqual(whole);
      }),
      { numRuns: 50 },
    );
  });

  it("the cache never re-evaluates, the budget is never exceeded, and every evaluation carries its generation, stage and tokens", async () => {
    await fc.assert(
      fc.asyncProperty(climbArb, async (c) => {
        const time = fakeClock();
        const calls: Call[] = [];
        const result = await run(climbing(time, c, { evaluate: host(time, c.seed, calls) }), time);

        // Default-fidelity scores are cached for the run, others within their stage only.
        const runWide = calls.filter((call) => call.fidelity.tokens === undefined).flatMap((call) => call.keys);
        expect(new Set(runWide).size).toBe(runWide.length);
        for (const call of calls) expect(new Set(call.keys).size).toBe(call.keys.length);
        expect(calls.every((call) => call.keys.length > 0)).toBe(true);

        const passed = calls.flatMap((call) => call.keys.map((key) => ({ key, ...call.fidelity })));
        expect(passed.length).toBe(result.evaluations);
        if (c.budgetEvals !== undefined) expect(result.evaluations).toBeLessThanOrEqual(c.budgetEvals);
        if (result.stoppedBy === "budget") expect(result.evaluations).toBe(c.budgetEvals);

        // The fresh records are the evaluations, in order, at the fidelity they were asked at.
        const fresh = result.history.filter((r) => !r.cached);
        expect(fresh.map((r) => ({ key: r.key, generation: r.generation, stage: stageOf(r), tokens: r.tokens }))).toEqual(
          passed.map((p) => ({ key: p.key, generation: p.generation, stage: p.stage, tokens: p.tokens ?? 100 })),
        );
        for (const call of calls) {
          expect(call.fidelity.stage).toBeLessThan(c.stages.length);
          expect(call.fidelity.tokens).toBe(call.fidelity.generation === 0 ? undefined : c.stages[call.fidelity.stage]);
        }
        expect(result.history.filter((r) => r.cached).every((r) => r.tokens === 0 && r.seconds === 0)).toBe(true);
        expect(result.history.reduce((n, r) => n + r.tokens, 0)).toBe(passed.reduce((n, p) => n + (p.tokens ?? 100), 0));

        // The best counts only comparable (default-fidelity) scores: those of the last stage.
        const comparable = result.history.filter((r) => r.generation === 0 || stageOf(r) === c.stages.length - 1);
        expect(result.best?.fitness).toBe(Math.min(...comparable.map((r) => r.fitness!)));
        expect(result.best?.fitness).toBe(sphere(result.best!.phenotype));
      }),
      { numRuns: 60 },
    );
  });

  it("a state saved by one strategy is refused by another", async () => {
    const time = fakeClock();
    const saved = store();
    const c = { seed: 2, lambda: 2, generations: 2, stages: [undefined], small: false, patience: undefined, budgetEvals: undefined };
    await run(climbing(time, c, { checkpoint: saved.checkpoint }), time);
    const exit = await runExit(climbing(time, c, { strategy: undefined, population: 4, checkpoint: store(saved.states.at(-1)).checkpoint }), time);
    expect(failureOf(exit)).toContain("the saved search ran strategy climber, not generational");
  });

  it("a strategy that proposes nothing for a generation, or a host that reports bad tokens, is a defect", async () => {
    const time = fakeClock();
    const c = { seed: 2, lambda: 2, generations: 2, stages: [undefined], small: false, patience: undefined, budgetEvals: undefined };
    const empty: Strategy<Vector, Vector> = { ...climber(1), ask: () => ({ genomes: [] }) };
    expect(failureOf(await runExit(climbing(time, c, { strategy: empty }), time))).toContain("strategy climber proposed no candidates for generation 0");
    const bad = (batch: readonly Vector[]) => Effect.succeed(batch.map(() => ({ ...fitnessOk(1), tokens: 1.5 })));
    expect(failureOf(await runExit(climbing(time, c, { evaluate: bad }), time))).toContain("evaluate reported 1.5 tokens");
  });
});

/** The generational GA's options, as engine.test.ts runs it. */
const generationalRun = (time: Clocked, overrides: Partial<Options> = {}): Options => ({
  genome: vectorGenome(2, 3),
  phenotypeKey: (v) => v.join(","),
  evaluate: (batch) =>
    Effect.sync(() =>
      batch.map((v) => {
        time.advance(1000);
        return v[0] === 0 ? fitnessFailed("broken") : fitnessOk(sphere(v));
      }),
    ),
  seed: 1,
  population: 4,
  generations: 5,
  ...overrides,
});

describe("the generational strategy's fidelity and tokens", () => {
  it("evaluate is told the generation and stage 0, with the host's default tokens", async () => {
    const time = fakeClock();
    const fidelities: Fidelity[] = [];
    const result = await run(
      generationalRun(time, {
        genome: vectorGenome(),
        population: 6,
        generations: 7,
        evaluate: (batch, fidelity) => {
          fidelities.push(fidelity);
          return Effect.succeed(batch.map((v) => fitnessOk(sphere(v))));
        },
      }),
      time,
    );
    const evaluated = [...new Set(result.history.filter((r) => !r.cached).map((r) => r.generation))];
    expect(fidelities).toEqual(evaluated.map((generation) => ({ generation, stage: 0 })));
    expect(result.history.every((r) => r.stage === undefined && r.tokens === 0)).toBe(true);
  });

  it("records the tokens each evaluation spent, 0 when cached, and saves them", async () => {
    const time = fakeClock();
    const saved = store();
    let spent = 0;
    const result = await run(
      generationalRun(time, {
        generations: 8,
        evaluate: (batch) =>
          Effect.sync(() =>
            batch.map((v): Fitness => {
              const fitness: Fitness = v[0] === 0 ? { ok: false, error: "broken", tokens: 7 } : { ...fitnessOk(sphere(v)), tokens: 128 + v[1]! };
              spent += fitness.tokens!;
              return fitness;
            }),
          ),
        checkpoint: saved.checkpoint,
      }),
      time,
    );
    for (const r of result.history) expect(r.tokens).toBe(r.cached ? 0 : r.fitness === null ? 7 : 128 + Number(r.key.split(",")[1]));
    expect(result.history.some((r) => r.cached)).toBe(true);
    expect(result.history.reduce((n, r) => n + r.tokens, 0)).toBe(spent);
    expect(saved.states.at(-1)!.history).toEqual(result.history);
  });
});

/**
 * engine-state.json as the engine wrote it before strategies (version 0, unversioned):
 * seed 1, population 4, 5 generations, stopped after generation 3 (generationalRun's
 * settings); two of its population failed.
 */
const VERSION_0 = {"seed":1,"generation":3,"evaluations":7,"seconds":7,"stale":2,"population":[{"genome":[3,2],"key":"3,2"},{"genome":[0,1],"key":"0,1"},{"genome":[0,1],"key":"0,1"},{"genome":[3,2],"key":"3,2"}],"cache":[["3,2",{"ok":true,"value":25}],["1,2",{"ok":true,"value":29}],["0,2",{"ok":false,"error":"broken"}],["3,0",{"ok":true,"value":49}],["2,0",{"ok":true,"value":50}],["1,1",{"ok":true,"value":40}],["0,1",{"ok":false,"error":"broken"}]],"history":[{"generation":0,"index":0,"genome":"[3 2]","key":"3,2","fitness":25,"cached":false,"seconds":1},{"generation":0,"index":1,"genome":"[1 2]","key":"1,2","fitness":29,"cached":false,"seconds":1},{"generation":0,"index":2,"genome":"[0 2]","key":"0,2","fitness":null,"error":"broken","cached":false,"seconds":1},{"generation":0,"index":3,"genome":"[3 0]","key":"3,0","fitness":49,"cached":false,"seconds":1},{"generation":1,"index":0,"genome":"[3 2]","key":"3,2","fitness":25,"cached":true,"seconds":0},{"generation":1,"index":1,"genome":"[2 0]","key":"2,0","fitness":50,"cached":false,"seconds":1},{"generation":1,"index":2,"genome":"[1 1]","key":"1,1","fitness":40,"cached":false,"seconds":1},{"generation":1,"index":3,"genome":"[3 2]","key":"3,2","fitness":25,"cached":true,"seconds":0},{"generation":2,"index":0,"genome":"[3 2]","key":"3,2","fitness":25,"cached":true,"seconds":0},{"generation":2,"index":1,"genome":"[0 1]","key":"0,1","fitness":null,"error":"broken","cached":false,"seconds":1},{"generation":2,"index":2,"genome":"[0 1]","key":"0,1","fitness":null,"error":"broken","cached":true,"seconds":0},{"generation":2,"index":3,"genome":"[3 2]","key":"3,2","fitness":25,"cached":true,"seconds":0}],"best":{"genome":[3,2],"key":"3,2","fitness":25}};

/** What that run ended with before strategies: each record's key, fitness and cached flag. */
const VERSION_0_ENDED = [["3,2",25,false],["1,2",29,false],["0,2",null,false],["3,0",49,false],["3,2",25,true],["2,0",50,false],["1,1",40,false],["3,2",25,true],["3,2",25,true],["0,1",null,false],["0,1",null,true],["3,2",25,true],["3,2",25,true],["3,3",16,false],["3,3",16,true],["3,1",36,false],["3,3",16,true],["3,3",16,true],["2,3",17,false],["3,2",25,true]];

/** A version 1 state of the generational strategy written back in the version 0 format. */
const toVersion0 = (state: EngineState): unknown => {
  const { version: _, strategy, history, ...rest } = JSON.parse(JSON.stringify(state)) as EngineState;
  const population = (strategy.state as { population: { genome: unknown; key: string }[] }).population.map((p) => ({ genome: p.genome, key: p.key }));
  return { ...rest, population, history: history.map(({ tokens: __, ...r }) => r) };
};

describe("saved state versions", () => {
  it("a state saved in the old unversioned format resumes to the same result as before", async () => {
    const state = decodeEngineState(structuredClone(VERSION_0), "engine-state.json");
    expect(state.version).toBe(1);
    expect(state.history.every((r) => r.tokens === 0)).toBe(true);
    expect(state.strategy).toEqual({
      name: "generational",
      state: { population: [{ genome: [3, 2], key: "3,2", fitness: 25 }, { genome: [0, 1], key: "0,1", fitness: null }, { genome: [0, 1], key: "0,1", fitness: null }, { genome: [3, 2], key: "3,2", fitness: 25 }] },
    });
    const time = fakeClock();
    const resumed = await run(generationalRun(time, { checkpoint: store(state).checkpoint }), time);
    expect(resumed.history.map((r) => [r.key, r.fitness, r.cached])).toEqual(VERSION_0_ENDED);
    expect(resumed.best).toEqual({ genome: [3, 3], phenotype: [3, 3], fitness: 16 });
    expect([resumed.evaluations, resumed.generations, resumed.stoppedBy, resumed.seconds]).toEqual([10, 5, "generations", 10]);
    const wholeTime = fakeClock();
    expect(resumed).toEqual(await run(generationalRun(wholeTime), wholeTime));
  });

  it("any generation's state, written in the old format, resumes into the uninterrupted run", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 8 }), fc.nat(), async (seed, population, pick) => {
        const time = fakeClock();
        const saved = store();
        const whole = await run(generationalRun(time, { seed, population, generations: 6, checkpoint: saved.checkpoint }), time);
        const old = toVersion0(saved.states[pick % saved.states.length]!);
        expect(old).not.toHaveProperty("version");
        const later = fakeClock();
        const resumed = await run(generationalRun(later, { seed, population, generations: 6, checkpoint: store(decodeEngineState(old, "old.json")).checkpoint }), later);
        expect(resumed).toEqual(whole);
      }),
      { numRuns: 40 },
    );
  });

  it("an unknown version is refused, naming the file", async () => {
    const time = fakeClock();
    const saved = store();
    await run(generationalRun(time, { generations: 2, checkpoint: saved.checkpoint }), time);
    const json = JSON.parse(JSON.stringify(saved.states.at(-1)));
    expect(decodeEngineState(json, "/runs/a/engine-state.json")).toEqual(saved.states.at(-1));
    for (const version of [2, "1", null]) {
      expect(() => decodeEngineState({ ...json, version }, "/runs/a/engine-state.json")).toThrow(
        expect.objectContaining({ _tag: "DataError", file: "/runs/a/engine-state.json", problem: expect.stringContaining(`search state version ${JSON.stringify(version)} is unknown`) }),
      );
    }
    expect(() => decodeEngineState({ ...json, history: [{ ...json.history[0], tokens: undefined }] }, "/runs/a/engine-state.json")).toThrow("/runs/a/engine-state.json");
    expect(() => decodeEngineState({ ...VERSION_0, population: [{ genome: [1, 1], key: "9,9" }] }, "/runs/b/engine-state.json")).toThrow(
      "/runs/b/engine-state.json: invalid search state: the population's key 9,9 has no cached fitness",
    );
  });
});
