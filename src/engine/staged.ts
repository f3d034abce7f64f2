/**
 * Staged (1+λ) selection, as EvoPress runs it: one parent; each generation `offspring`
 * distinct mutants of it, then selection in stages. Stage s scores its candidates on the
 * stage's `tokens` (a minibatch the host draws afresh per (seed, generation, stage); see
 * Fidelity) and keeps its best `survivors` for stage s + 1. The parent joins the
 * candidates before the last stage only, and the best of the last stage is the next
 * parent: a child replaces the parent when it scores at least as well on that stage's
 * minibatch (ties go to the child, placed before the parent, as in a (1+λ) EA).
 *
 * Randomness: generation 0's parent is `genome.create(rng.split(0), 0)`; child i draws
 * from `rng.split(i + 1)`, try t of it from `rng.split(i + 1).split(t)`. A draw whose
 * `genome.key` equals the parent's or an earlier child's is redrawn, at most `tries` times
 * per child; a child whose tries are all duplicates is left out, so the generation has
 * fewer children (a genome with few neighbours cannot fill a large offspring). Should
 * no child at all be found, the generation scores the parent alone on the last stage's
 * tokens, and it stays the parent.
 *
 * A generation cut short by the evaluation budget leaves the parent as it was, and so
 * does a last stage in which every candidate failed (the parent keeps its failed score).
 *
 * Scores of different generations come from different minibatches, so the strategy's
 * `leader` is its parent with its last-stage score; the driver reports that as the best.
 */
import { Schema } from "effect";
import { UsageError } from "../errors.ts";
import type { Rng } from "../rng.ts";
import type { Genome } from "./genome.ts";
import { ranking, score } from "./selection.ts";
import { StoredFitness } from "./state.ts";
import type { Leader, Strategy, Told } from "./strategy.ts";
import { fitRidge, predict, type Observation } from "./surrogate.ts";

export interface Stage {
  /** Candidates kept for the next stage; the last stage keeps one, the next parent. */
  readonly survivors: number;
  /** Fitness tokens of the stage's minibatch; undefined: the host's default fitness set. */
  readonly tokens?: number;
  /** Score this stage with the host's most faithful fitness (Fidelity.exact). */
  readonly exact?: boolean;
}

export interface StagedOptions {
  /** Children per generation (λ). */
  readonly offspring: number;
  /** The selection stages, in order; typically fewer survivors on more tokens. */
  readonly stages: readonly Stage[];
  /** Draws per child before a child that keeps duplicating is left out; default 100. */
  readonly tries?: number;
  /**
   * Pre-screening (ours, not EvoPress's): draw `pool` children and, once `warmup` stage-0
   * scores have been seen, score only the `offspring` a linear surrogate of fitness
   * (surrogate.ts, fitted on every stage-0 score so far) predicts best; before that, the
   * first `offspring` drawn. Needs `genome.features`.
   */
  readonly prescreen?: { readonly pool: number; readonly warmup: number; readonly memory?: number };
}

/**
 * Stage-0 scores the surrogate keeps by default: the most recent few generations' (the
 * landscape around the parent changes as the parent moves).
 */
const surrogateMemory = (options: StagedOptions): number => options.prescreen?.memory ?? 3 * options.offspring;

/** The parent's score on the stage that chose it. */
interface ParentScore {
  /** Phenotype key, as the driver told it. */
  readonly key: string;
  readonly fitness: StoredFitness;
}

export interface StagedState<G> {
  /** The parent; null until the first generation has drawn it. */
  readonly parent: G | null;
  /** The parent's last-stage score; null until a last stage has scored it. */
  readonly parentScore: ParentScore | null;
  /** Candidates waiting for the next stage of the running generation; empty between generations. */
  readonly survivors: readonly G[];
  /** Stage-0 scores the pre-screening surrogate is fitted on (empty without pre-screening). */
  readonly observations: readonly Observation[];
}

/** The saved form: genomes through `genome.encode`. */
const StagedJson = Schema.Struct({
  parent: Schema.NullOr(Schema.Struct({ genome: Schema.Unknown })),
  parentScore: Schema.NullOr(Schema.Struct({ key: Schema.String, fitness: StoredFitness })),
  survivors: Schema.Array(Schema.Unknown),
  observations: Schema.optional(Schema.Array(Schema.Struct({ x: Schema.Array(Schema.Number), y: Schema.Number }))),
});
type StagedJson = typeof StagedJson.Type;

const defaultTries = 100;

/**
 * Candidates of each stage when every child is found: the offspring at stage 0, then the
 * survivors of the stage before, plus the parent at the last stage.
 */
export const stageSizes = (offspring: number, stages: readonly Stage[]): number[] =>
  stages.map((_, s) => (s === 0 ? offspring : stages[s - 1]!.survivors) + (s === stages.length - 1 ? 1 : 0));

/** What is wrong with a stage keeping `survivors` of `candidates`, if anything. */
export const survivorsProblem = (survivors: number, candidates: number, last: boolean): string | undefined =>
  last
    ? survivors === 1 ? undefined : `must be 1 in the last stage (the next parent), got ${survivors}`
    : Number.isInteger(candidates) && survivors > candidates ? `${survivors} exceeds the stage's ${candidates} candidates` : undefined;

/** Problems with the settings, one phrase each; none when they make sense. */
export const stagedProblems = (options: StagedOptions): string[] => {
  const problems: string[] = [];
  const whole = (name: string, value: number | undefined, min: number, max = Infinity): boolean => {
    const ok = value === undefined || (Number.isInteger(value) && value >= min && value <= max);
    if (!ok) problems.push(`${name} must be a whole number in [${min}, ${max}], got ${value}`);
    return ok;
  };
  whole("offspring", options.offspring, 1);
  whole("tries", options.tries, 1);
  if (options.prescreen) {
    whole("prescreen.pool", options.prescreen.pool, options.offspring);
    whole("prescreen.warmup", options.prescreen.warmup, 1);
    whole("prescreen.memory", options.prescreen.memory, 1);
  }
  if (options.stages.length === 0) problems.push("stages: list at least one stage");
  const sizes = stageSizes(options.offspring, options.stages);
  options.stages.forEach((stage, s) => {
    whole(`stages[${s}].tokens`, stage.tokens, 1);
    if (!whole(`stages[${s}].survivors`, stage.survivors, 1)) return;
    const problem = survivorsProblem(stage.survivors, sizes[s]!, s === options.stages.length - 1);
    if (problem !== undefined) problems.push(`stages[${s}].survivors ${problem}`);
  });
  return problems;
};

/** Up to `count` (default `offspring`) mutants of the parent, none with the parent's or an earlier child's key. */
export const drawChildren = <G, P>(genome: Genome<G, P>, parent: G, options: StagedOptions, rng: Rng, count = options.offspring): G[] => {
  const tries = options.tries ?? defaultTries;
  const seen = new Set([genome.key(parent)]);
  const children: G[] = [];
  for (let i = 0; i < count; i++) {
    const childRng = rng.split(i + 1);
    for (let t = 0; t < tries; t++) {
      const child = genome.mutate(parent, childRng.split(t));
      const key = genome.key(child);
      if (seen.has(key)) continue;
      seen.add(key);
      children.push(child);
      break;
    }
  }
  return children;
};

/** Staged (1+λ) selection; settings that make no sense throw a UsageError. */
export const staged = <G, P>(options: StagedOptions): Strategy<G, P, StagedState<G>> => {
  const problems = stagedProblems(options);
  if (problems.length > 0) throw new UsageError({ problem: problems.join("; ") });
  const stages = options.stages.map((s) => ({ ...s }));
  const last = stages.length - 1;
  const parentOf = (state: StagedState<G>, genome: Genome<G, P>, rng: Rng): G => state.parent ?? genome.create(rng.split(0), 0);
  const tokensOf = (s: number) => ({ ...(stages[s]!.tokens !== undefined ? { tokens: stages[s]!.tokens } : {}), ...(stages[s]!.exact ? { exact: true as const } : {}) });
  const relative = (genome: Genome<G, P>, g: G, parent: G): number[] => {
    const p = genome.features!(parent);
    return genome.features!(g).map((v, i) => v - p[i]!);
  };
  /** The children stage 0 scores: all drawn, or the `offspring` the surrogate predicts best. */
  const screened = (state: StagedState<G>, genome: Genome<G, P>, parent: G, rng: Rng): G[] => {
    const screen = options.prescreen;
    if (!screen) return drawChildren(genome, parent, options, rng);
    const pool = drawChildren(genome, parent, options, rng, screen.pool);
    const weights = state.observations.length >= screen.warmup ? fitRidge(state.observations) : undefined;
    if (!weights) return pool.slice(0, options.offspring);
    const predicted = pool.map((g) => predict(weights, relative(genome, g, parent)));
    // Lowest predicted first; ties keep the draw order.
    const order = pool.map((_, i) => i).sort((a, b) => predicted[a]! - predicted[b]! || a - b);
    return order.slice(0, options.offspring).sort((a, b) => a - b).map((i) => pool[i]!);
  };
  const observe = (state: StagedState<G>, genome: Genome<G, P>, parent: G, scored: Told<G>["scored"]): readonly Observation[] => {
    if (!options.prescreen) return state.observations;
    const ok = scored.filter((s) => s.fitness.ok);
    if (ok.length === 0) return state.observations;
    const mean = ok.reduce((n, s) => n + (s.fitness.ok ? s.fitness.value : 0), 0) / ok.length;
    const fresh = ok.map((s) => ({ x: relative(genome, s.genome, parent), y: (s.fitness.ok ? s.fitness.value : 0) - mean }));
    return [...state.observations, ...fresh].slice(-surrogateMemory(options));
  };

  return {
    name: "staged",
    init: (genome) => {
      if (options.prescreen && !genome.features) throw new UsageError({ problem: "pre-screening needs a genome with features" });
      return { parent: null, parentScore: null, survivors: [], observations: [] };
    },

    ask: (state, { genome, stage, rng }) => {
      const parent = parentOf(state, genome, rng);
      if (stage === 0) {
        const children = screened(state, genome, parent, rng);
        if (children.length === 0) return { genomes: [parent], ...tokensOf(last) };
        return { genomes: last === 0 ? [...children, parent] : children, ...tokensOf(0) };
      }
      if (state.survivors.length === 0 || stage > last) return undefined;
      return { genomes: stage === last ? [...state.survivors, parent] : state.survivors, ...tokensOf(stage) };
    },

    tell: (state, { scored, complete }, { genome, stage, rng }) => {
      const parent = parentOf(state, genome, rng);
      // A generation cut short by the budget leaves the parent as it was.
      if (!complete) return { parent, parentScore: state.parentScore, survivors: [], observations: state.observations };
      const observations = stage === 0 ? observe(state, genome, parent, scored) : state.observations;
      const order = ranking(scored.map((s) => score(s.fitness)));
      // The parent is proposed at the final stage only: scoring it ends the generation.
      const parentKey = genome.key(parent);
      const final = scored.findIndex((s) => genome.key(s.genome) === parentKey);
      if (final === -1) {
        return { parent, parentScore: state.parentScore, survivors: order.slice(0, stages[stage]!.survivors).map((i) => scored[i]!.genome), observations };
      }
      // Should every candidate fail, the parent stays, with its failed score.
      const winner = scored[order[0]!]!.fitness.ok ? scored[order[0]!]! : scored[final]!;
      return { parent: winner.genome, parentScore: { key: winner.key, fitness: winner.fitness }, survivors: [], observations };
    },

    leader: (state): Leader<G> | undefined =>
      state.parent !== null && state.parentScore?.fitness.ok
        ? { genome: state.parent, key: state.parentScore.key, fitness: state.parentScore.fitness.value }
        : undefined,

    encode: (state, genome): StagedJson => ({
      parent: state.parent === null ? null : { genome: genome.encode(state.parent) },
      parentScore: state.parentScore,
      survivors: state.survivors.map((g) => genome.encode(g)),
      ...(state.observations.length > 0 ? { observations: state.observations } : {}),
    }),

    restore: (json, genome) => {
      const saved = Schema.decodeUnknownSync(StagedJson)(json);
      return {
        parent: saved.parent === null ? null : genome.restore(saved.parent.genome),
        parentScore: saved.parentScore,
        survivors: saved.survivors.map((g) => genome.restore(g)),
        observations: saved.observations ?? [],
      };
    },
  };
};
