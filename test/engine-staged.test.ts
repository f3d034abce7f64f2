import { Clock, Effect } from "effect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { evolve, type EvolveOptions, type EvolveResult } from "../src/engine/evolve.ts";
import { fitnessOk, type Fidelity, type Fitness, type Genome } from "../src/engine/genome.ts";
import { ranking } from "../src/engine/selection.ts";
import { drawChildren, staged, stageSizes, type Stage, type StagedOptions, type StagedState } from "../src/engine/staged.ts";
import type { GenerationRecord, HistoryRecord } from "../src/engine/state.ts";
import type { Strategy } from "../src/engine/strategy.ts";
import { UsageError } from "../src/errors.ts";
import { Rng } from "../src/rng.ts";

import { fakeClock, scrambled, sphere, store, TARGET, vectorGenome, type Clocked, type Vector } from "./helpers/engine.ts";

/**
 * The fake host. Default fidelity: the exact sphere on 100 tokens. Given tokens: the
 * sphere plus noise of amplitude 16 / sqrt(tokens), derived only from (seed, generation,
 * stage, phenotype), as Fidelity asks of a host drawing a fresh minibatch per stage.
 */
const noisyScore = (seed: number, v: Vector, fidelity: Fidelity): Fitness => {
  if (fidelity.tokens === undefined) return { ...fitnessOk(sphere(v)), tokens: 100 };
  const u = new Rng(seed).split(fidelity.generation).split(fidelity.stage).split(v.join(",")).next();
  return { ...fitnessOk(sphere(v) + ((u - 0.5) * 16) / Math.sqrt(fidelity.tokens)), tokens: fidelity.tokens };
};

interface Call {
  readonly keys: string[];
  readonly fidelity: Fidelity;
}

const host =
  (time: Clocked, seed: number, calls?: Call[]) =>
  (batch: readonly Vector[], fidelity: Fidelity) =>
    Effect.sync(() => {
      calls?.push({ keys: batch.map((v) => v.join(",")), fidelity });
      return batch.map((v) => {
        time.advance(1000);
        return noisyScore(seed, v, fidelity);
      });
    });

/** The same scores, computed concurrently and finishing in a scrambled order. */
const scrambledHost = (time: Clocked, seed: number, shuffleSeed: number) => (batch: readonly Vector[], fidelity: Fidelity) =>
  scrambled(time, shuffleSeed, batch, (v) => noisyScore(seed, v, fidelity));

type Options = EvolveOptions<Vector, Vector>;

const run = (options: Options, time: Clocked): Promise<EvolveResult<Vector, Vector>> =>
  Effect.runPromise(evolve(options).pipe(Effect.provideService(Clock.Clock, time.clock)));

const stagesArb = fc.constantFrom<Stage[]>(
  [{ survivors: 1, tokens: 64 }],
  [{ survivors: 3, tokens: 16 }, { survivors: 1, tokens: 256 }],
  [{ survivors: 4, tokens: 16 }, { survivors: 2, tokens: 64 }, { survivors: 1, tokens: 256 }],
  [{ survivors: 2, tokens: 32 }, { survivors: 2, tokens: 32 }, { survivors: 1 }],
  [{ survivors: 2 }, { survivors: 1 }],
);

const searchArb = stagesArb.chain((stages) =>
  fc.record({
    seed: fc.integer({ min: 0, max: 2 ** 31 }),
    stages: fc.constant(stages),
    offspring: fc.integer({ min: stages.length > 1 ? stages[0]!.survivors : 1, max: 8 }),
    generations: fc.integer({ min: 1, max: 10 }),
    small: fc.boolean(),
    patience: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    budgetEvals: fc.option(fc.integer({ min: 1, max: 60 }), { nil: undefined }),
  }),
);
type Search = typeof searchArb extends fc.Arbitrary<infer T> ? T : never;

const genomeOf = (c: Pick<Search, "small">): Genome<Vector, Vector> => (c.small ? vectorGenome(2, 3) : vectorGenome());

const searching = (time: Clocked, c: Search, overrides: Partial<Options> = {}): Options => ({
  genome: genomeOf(c),
  strategy: staged({ offspring: c.offspring, stages: c.stages }),
  phenotypeKey: (v) => v.join(","),
  evaluate: host(time, c.seed),
  seed: c.seed,
  generations: c.generations,
  ...(c.patience !== undefined ? { patience: c.patience } : {}),
  ...(c.budgetEvals !== undefined ? { budgetEvals: c.budgetEvals } : {}),
  ...overrides,
});

const stageOf = (r: HistoryRecord): number => r.stage ?? 0;
const keyOf = (v: Vector): string => v.join(",");
const vectorOf = (key: string): Vector => key.split(",").map(Number);

/**
 * Walks a run's history generation by generation and checks it against EvoPress's
 * selection: distinct children that are not the parent, stage sizes from the stages list,
 * the parent in the last stage only, survivors the best of their stage, the last stage's
 * winner the next parent. Returns the parent key and score after every generation.
 */
const replay = (result: EvolveResult<Vector, Vector>, c: Search): { key: string; fitness: number }[] => {
  const genome = genomeOf(c);
  const options: StagedOptions = { offspring: c.offspring, stages: c.stages };
  const last = c.stages.length - 1;
  let parent = genome.create(new Rng(c.seed).split(0).split(0), 0);
  let leader: { key: string; fitness: number } | undefined;
  const leaders: { key: string; fitness: number }[] = [];
  for (let g = 0; g < result.generations; g++) {
    const records = result.history.filter((r) => r.generation === g);
    const byStage = Array.from({ length: c.stages.length }, (_, s) => records.filter((r) => stageOf(r) === s));
    const children = drawChildren(genome, parent, options, new Rng(c.seed).split(g));
    const parentKey = keyOf(parent);
    // Children: distinct, never the parent; fewer than asked only when the neighbourhood runs dry.
    expect(new Set(children.map(keyOf)).size).toBe(children.length);
    expect(children.map(keyOf)).not.toContain(parentKey);
    expect(children.length).toBeLessThanOrEqual(c.offspring);
    // Without children the parent alone is scored, at stage 0; otherwise stage s sees the
    // survivors of stage s - 1 (as many as there were), plus the parent at the last.
    const sizes: number[] = [];
    if (children.length === 0) sizes.push(1);
    else for (let s = 0; s <= last; s++) sizes.push((s === 0 ? children.length : Math.min(c.stages[s - 1]!.survivors, sizes[s - 1]!)) + (s === last ? 1 : 0));
    // Only the budget cuts a generation short, and only the last one.
    const cut = byStage.some((stage, s) => stage.length !== (sizes[s] ?? 0));
    if (cut) expect([g, result.stoppedBy]).toEqual([result.generations - 1, "budget"]);
    for (let s = 0; s < c.stages.length; s++) {
      const stage = byStage[s]!;
      expect(stage.map((r) => r.index)).toEqual(stage.map((_, i) => i));
      expect(new Set(stage.map((r) => r.key)).size).toBe(stage.length);
      const final = s === last || children.length === 0;
      // The parent is scored at the final stage only, as its last candidate.
      expect(stage.slice(0, final ? -1 : undefined).map((r) => r.key)).not.toContain(parentKey);
      if (final && !cut && stage.length > 0) expect(stage.at(-1)!.key).toBe(parentKey);
      if (s === 0) {
        const proposed = children.length === 0 ? [parent] : last === 0 ? [...children, parent] : children;
        expect(stage.map((r) => r.key)).toEqual(proposed.map(keyOf).slice(0, stage.length));
      }
      // Survivors: the best of the stage before, best first.
      if (s > 0 && stage.length > 0) {
        const before = byStage[s - 1]!;
        const kept = ranking(before.map((r) => r.fitness ?? Infinity)).slice(0, c.stages[s - 1]!.survivors).map((i) => before[i]!.key);
        expect(stage.map((r) => r.key).slice(0, kept.length)).toEqual(kept.slice(0, stage.length));
      }
    }
    const finalStage = children.length === 0 ? byStage[0]! : byStage[last]!;
    if (!cut) {
      const winner = finalStage[ranking(finalStage.map((r) => r.fitness ?? Infinity))[0]!]!;
      parent = vectorOf(winner.key);
      leader = { key: winner.key, fitness: winner.fitness! };
    }
    leaders.push(leader!);
  }
  return leaders;
};

describe("staged (1+λ) selection", () => {
  it("follows EvoPress's selection: distinct children, stage sizes from the list, the parent in the last stage only, the winner the next parent", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, async (c) => {
        const time = fakeClock();
        const calls: Call[] = [];
        const result = await run(searching(time, c, { evaluate: host(time, c.seed, calls) }), time);
        const leaders = replay(result, c);
        // Every evaluation ran at its stage's tokens.
        for (const call of calls) expect(call.fidelity.tokens).toBe(c.stages[call.fidelity.stage]!.tokens);
        // The best is the leader: the parent with its last-stage score.
        const leader = leaders.at(-1);
        expect(result.best === undefined ? undefined : { key: keyOf(result.best.phenotype), fitness: result.best.fitness }).toEqual(leader);
      }),
      { numRuns: 80 },
    );
  });

  it("the leader is what evolve reports as best after every generation, and patience counts generations without a new leader", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, async (c) => {
        const time = fakeClock();
        const reported: GenerationRecord[] = [];
        const result = await run(searching(time, c, { onGeneration: (r) => reported.push(r) }), time);
        const leaders = replay(result, c);
        expect(reported.map((r) => r.best)).toEqual(leaders.map((l) => l?.fitness));
        // Patience: generations since the leader's key last changed.
        let stale = 0;
        let key: string | undefined;
        leaders.forEach((l, g) => {
          stale = l !== undefined && l.key !== key ? 0 : stale + 1;
          key = l?.key ?? key;
          if (g < leaders.length - 1 && c.patience !== undefined) expect(stale).toBeLessThan(c.patience);
        });
        if (result.stoppedBy === "patience") expect(stale).toBe(c.patience);
      }),
      { numRuns: 80 },
    );
  });

  it("the best is the leader's last-stage score, not the lowest score ever drawn", async () => {
    const time = fakeClock();
    const c: Search = { seed: 5, stages: [{ survivors: 4, tokens: 16 }, { survivors: 1, tokens: 64 }], offspring: 8, generations: 12, small: false, patience: undefined, budgetEvals: undefined };
    const result = await run(searching(time, c), time);
    const lowest = Math.min(...result.history.map((r) => r.fitness!));
    expect(result.best!.fitness).toBeGreaterThan(lowest);
    const last = result.history.filter((r) => r.generation === c.generations - 1 && r.stage === 1);
    expect(last.map((r) => r.fitness)).toContain(result.best!.fitness);
    expect(result.best!.fitness).toBe(Math.min(...last.map((r) => r.fitness!)));
  });

  it("finds the optimum of the toy problem through noisy minibatch scores", async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const time = fakeClock();
      const c: Search = {
        seed,
        stages: [{ survivors: 3, tokens: 16 }, { survivors: 2, tokens: 64 }, { survivors: 1, tokens: 256 }],
        offspring: 6,
        generations: 80,
        small: false,
        patience: undefined,
        budgetEvals: undefined,
      };
      const result = await run(searching(time, c), time);
      expect(result.best?.phenotype).toEqual(TARGET);
      // Its score is noisy, but within the last stage's noise of the truth.
      expect(Math.abs(result.best!.fitness - sphere(TARGET))).toBeLessThanOrEqual(0.5);
    }
  });

  it("the same seed gives the same run, whether evaluate runs in order or concurrently out of order", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, fc.integer(), async (c, shuffleSeed) => {
        const first = fakeClock();
        const second = fakeClock();
        const out = fakeClock();
        const a = await run(searching(first, c), first);
        expect(await run(searching(second, c), second)).toEqual(a);
        expect(await run(searching(out, c, { evaluate: scrambledHost(out, c.seed, shuffleSeed) }), out)).toEqual(a);
      }),
      { numRuns: 50 },
    );
  });

  it("a run resumed from the state saved after any generation ends exactly as an uninterrupted one", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, fc.nat(), async (c, pick) => {
        const time = fakeClock();
        const saved = store();
        const whole = await run(searching(time, c, { checkpoint: saved.checkpoint }), time);
        expect(saved.states.length).toBe(whole.generations);
        expect(saved.states.every((s) => s.version === 1 && s.strategy.name === "staged")).toBe(true);
        const k = pick % saved.states.length;
        const later = fakeClock();
        const resumed = await run(searching(later, c, { checkpoint: store(saved.states[k]).checkpoint }), later);
        expect(resumed).toEqual(whole);
        expect(resumed.history).toEqual(whole.history);
        expect(resumed.best).toEqual(whole.best);
      }),
      { numRuns: 60 },
    );
  });

  it("every state it passes through, mid-generation ones included, encodes to JSON and restores exactly", async () => {
    await fc.assert(
      fc.asyncProperty(searchArb, async (c) => {
        const genome = genomeOf(c);
        const strategy = staged<Vector, Vector>({ offspring: c.offspring, stages: c.stages });
        const states: StagedState<Vector>[] = [];
        const spy: Strategy<Vector, Vector, StagedState<Vector>> = {
          ...strategy,
          tell: (state, told, context) => {
            const next = strategy.tell(state, told, context);
            states.push(next);
            return next;
          },
        };
        const time = fakeClock();
        await run(searching(time, c, { strategy: spy }), time);
        for (const state of states) {
          const back = strategy.restore(JSON.parse(JSON.stringify(strategy.encode(state, genome))), genome);
          expect(back).toEqual(state);
          expect(strategy.leader!(back)).toEqual(strategy.leader!(state));
        }
        expect(() => strategy.restore({ parent: null, survivors: [] }, genome)).toThrow();
      }),
      { numRuns: 40 },
    );
  });

  it("a run extended past its generation limit continues the same search", async () => {
    const c: Search = { seed: 9, stages: [{ survivors: 3, tokens: 16 }, { survivors: 1, tokens: 128 }], offspring: 5, generations: 9, small: false, patience: undefined, budgetEvals: undefined };
    const time = fakeClock();
    const whole = await run(searching(time, c), time);
    const firstTime = fakeClock();
    const saved = store();
    await run(searching(firstTime, { ...c, generations: 4 }, { checkpoint: saved.checkpoint }), firstTime);
    const laterTime = fakeClock();
    expect(await run(searching(laterTime, c, { checkpoint: store(saved.states.at(-1)).checkpoint }), laterTime)).toEqual(whole);
  });
});

describe("when children run out", () => {
  it("a small neighbourhood gives fewer, distinct children: every neighbour once", async () => {
    // One gene in 0..2: at most two neighbours, whatever the offspring asked.
    const genome = vectorGenome(1, 2);
    const time = fakeClock();
    const c: Search = { seed: 3, stages: [{ survivors: 2, tokens: 16 }, { survivors: 1, tokens: 64 }], offspring: 5, generations: 6, small: false, patience: undefined, budgetEvals: undefined };
    const result = await run(searching(time, c, { genome }), time);
    let parent = genome.create(new Rng(c.seed).split(0).split(0), 0);
    for (let g = 0; g < result.generations; g++) {
      const children = result.history.filter((r) => r.generation === g && r.stage === undefined).map((r) => r.key);
      const neighbours = [parent[0]! - 1, parent[0]! + 1].filter((x) => x >= 0 && x <= 2).map(String);
      expect([...children].sort()).toEqual(neighbours.sort());
      const final = result.history.filter((r) => r.generation === g && r.stage === 1);
      parent = vectorOf(final[ranking(final.map((r) => r.fitness!))[0]!]!.key);
    }
  });

  it("a genome with no neighbour scores the parent alone on the last stage's tokens, and patience ends the run", async () => {
    const genome: Genome<Vector, Vector> = { ...vectorGenome(2, 3), mutate: (v) => v };
    const time = fakeClock();
    const calls: Call[] = [];
    const c: Search = { seed: 4, stages: [{ survivors: 2, tokens: 16 }, { survivors: 1, tokens: 64 }], offspring: 4, generations: 10, small: false, patience: 3, budgetEvals: undefined };
    const result = await run(searching(time, c, { genome, evaluate: host(time, c.seed, calls) }), time);
    const parent = keyOf(genome.create(new Rng(c.seed).split(0).split(0), 0));
    expect(calls.map((call) => [call.keys, call.fidelity])).toEqual(
      Array.from({ length: 4 }, (_, g) => [[parent], { generation: g, stage: 0, tokens: 64 }]),
    );
    expect(result.stoppedBy).toBe("patience");
    expect(result.generations).toBe(4);
    expect(result.best).toEqual({ genome: vectorOf(parent), phenotype: vectorOf(parent), fitness: result.history.at(-1)!.fitness });
  });
});

describe("staged settings", () => {
  it("refuses settings that make no sense, naming each", () => {
    const refused = (options: StagedOptions, pattern: RegExp) => {
      expect(() => staged(options)).toThrow(UsageError);
      expect(() => staged(options)).toThrow(pattern);
    };
    refused({ offspring: 0, stages: [{ survivors: 1 }] }, /offspring must be a whole number in \[1, Infinity\], got 0/);
    refused({ offspring: 4, stages: [] }, /stages: list at least one stage/);
    refused({ offspring: 4, stages: [{ survivors: 2 }] }, /stages\[0\]\.survivors must be 1 in the last stage/);
    refused({ offspring: 4, stages: [{ survivors: 5, tokens: 16 }, { survivors: 1 }] }, /stages\[0\]\.survivors 5 exceeds the stage's 4 candidates/);
    refused({ offspring: 8, stages: [{ survivors: 2 }, { survivors: 3 }, { survivors: 1 }] }, /stages\[1\]\.survivors 3 exceeds the stage's 2 candidates/);
    refused({ offspring: 4, stages: [{ survivors: 2, tokens: 0 }, { survivors: 1 }] }, /stages\[0\]\.tokens must be a whole number/);
    refused({ offspring: 4, stages: [{ survivors: 1 }], tries: 0 }, /tries must be a whole number/);
    expect(() => staged({ offspring: 64, stages: [{ survivors: 8, tokens: 2048 }, { survivors: 2, tokens: 16384 }, { survivors: 1, tokens: 65536 }] })).not.toThrow();
  });

  it("stage sizes: the offspring, then the survivors before, plus the parent at the last stage", () => {
    expect(stageSizes(64, [{ survivors: 8 }, { survivors: 2 }, { survivors: 1 }])).toEqual([64, 8, 3]);
    expect(stageSizes(5, [{ survivors: 1 }])).toEqual([6]);
  });
});
