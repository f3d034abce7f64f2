/**
 * The generational genetic algorithm as a strategy: one stage per generation on the host's
 * default fidelity. Generation 0 is `genome.create(rng.split(i), i)` for each index i; a
 * later generation is the elites (the best distinct phenotypes of the last generation that
 * did not fail), then children by tournament selection, crossover and mutation, child i
 * drawing only from `rng.split(i)`.
 */
import { Schema } from "effect";
import { UsageError } from "../errors.ts";
import type { Rng } from "../rng.ts";
import type { Genome } from "./genome.ts";
import { ranking, score, tournament } from "./selection.ts";
import type { Strategy } from "./strategy.ts";

export interface GenerationalOptions {
  /** Individuals per generation. */
  readonly population: number;
  /** Best distinct individuals copied unchanged into the next generation; default 1 (0 when the population is 1). */
  readonly elitism?: number;
  /** Tournament size; default 2 (binary tournament). */
  readonly tournament?: number;
  /** Probability that a child is the crossover of two parents rather than a copy of one; default 0.9. */
  readonly crossoverRate?: number;
  /** Probability that a child is mutated; default 1. */
  readonly mutationRate?: number;
}

export type GenerationalSettings = Required<GenerationalOptions>;

interface Member<G> {
  readonly genome: G;
  readonly key: string;
  /** Fitness; +Infinity for a failure. */
  readonly score: number;
}

/** The last generation, as told (a prefix of it when the budget cut it); empty before generation 0. */
export interface GenerationalState<G> {
  readonly population: readonly Member<G>[];
}

/** The saved form: genomes through `genome.encode`, a failure's fitness as null. */
const GenerationalJson = Schema.Struct({
  population: Schema.Array(Schema.Struct({ genome: Schema.Unknown, key: Schema.String, fitness: Schema.NullOr(Schema.Finite) })),
});
export type GenerationalJson = typeof GenerationalJson.Type;

/** Problems with the settings, one phrase each; none when they make sense. */
export const generationalProblems = (options: Partial<GenerationalOptions>): string[] => {
  const problems: string[] = [];
  const whole = (name: string, value: number | undefined, min: number, max = Infinity): void => {
    if (value !== undefined && !(Number.isInteger(value) && value >= min && value <= max)) {
      problems.push(`${name} must be a whole number in [${min}, ${max}], got ${value}`);
    }
  };
  const fraction = (name: string, value: number | undefined): void => {
    if (value !== undefined && !(value >= 0 && value <= 1)) problems.push(`${name} must be in [0, 1], got ${value}`);
  };
  whole("population", options.population, 1);
  if (options.population !== undefined) whole("elitism", options.elitism, 0, options.population - 1);
  whole("tournament", options.tournament, 1);
  fraction("crossover rate", options.crossoverRate);
  fraction("mutation rate", options.mutationRate);
  return problems;
};

export const generationalSettings = (options: GenerationalOptions): GenerationalSettings => ({
  population: options.population,
  elitism: options.elitism ?? Math.min(1, options.population - 1),
  tournament: options.tournament ?? 2,
  crossoverRate: options.crossoverRate ?? 0.9,
  mutationRate: options.mutationRate ?? 1,
});

/** The generational GA; settings that make no sense throw a UsageError. */
export const generational = <G, P>(options: GenerationalOptions): Strategy<G, P, GenerationalState<G>> => {
  const problems = generationalProblems(options);
  if (problems.length > 0) throw new UsageError({ problem: problems.join("; ") });
  const settings = generationalSettings(options);
  return {
    name: "generational",
    init: () => ({ population: [] }),
    ask: (state, { genome, stage, rng }) => {
      if (stage > 0) return undefined;
      const genomes =
        state.population.length === 0
          ? Array.from({ length: settings.population }, (_, i) => genome.create(rng.split(i), i))
          : breed(genome, state.population, settings, rng);
      return { genomes };
    },
    tell: (_, told) => ({ population: told.scored.map((s) => ({ genome: s.genome, key: s.key, score: score(s.fitness) })) }),
    encode: (state, genome): GenerationalJson => ({
      population: state.population.map((m) => ({ genome: genome.encode(m.genome), key: m.key, fitness: Number.isFinite(m.score) ? m.score : null })),
    }),
    restore: (json, genome) => ({
      population: Schema.decodeUnknownSync(GenerationalJson)(json).population.map((m) => ({
        genome: genome.restore(m.genome),
        key: m.key,
        score: m.fitness ?? Infinity,
      })),
    }),
  };
};

/** Elites first (best distinct phenotypes that did not fail), then tournament children. */
const breed = <G>(genome: Genome<G, unknown>, parents: readonly Member<G>[], settings: GenerationalSettings, rng: Rng): G[] => {
  const scores = parents.map((p) => p.score);
  const children: G[] = [];
  const eliteKeys = new Set<string>();
  for (const i of ranking(scores)) {
    if (children.length >= settings.elitism || scores[i] === Infinity) break;
    if (eliteKeys.has(parents[i]!.key)) continue;
    eliteKeys.add(parents[i]!.key);
    children.push(parents[i]!.genome);
  }
  for (let i = children.length; i < settings.population; i++) {
    const childRng = rng.split(i);
    const first = parents[tournament(scores, settings.tournament, childRng)]!.genome;
    let child =
      childRng.next() < settings.crossoverRate
        ? genome.crossover(first, parents[tournament(scores, settings.tournament, childRng)]!.genome, childRng)
        : first;
    if (childRng.next() < settings.mutationRate) child = genome.mutate(child, childRng);
    children.push(child);
  }
  return children;
};
