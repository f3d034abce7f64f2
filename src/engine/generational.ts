/**
 * The generational genetic algorithm as a strategy: one stage per generation on the host's
 * default fidelity. Generation 0 is `genome.create(rng.split(i), i)` for each index i; a
 * later generation is the elites (the best distinct phenotypes of the last generation that
 * did not fail), then children by tournament selection, crossover and mutation, child i
 * drawing only from `rng.split(i)`.
 *
 * With `screening` (multi-stage selection, for every method on this strategy), a
 * generation first breeds `screening[0].candidates` children (generation 0 creates as
 * many individuals) and scores them on a minibatch of `screening[0].tokens` fitness
 * tokens; the best `screening[1].candidates` go on to the next minibatch, and so on; the
 * best of the last screen, as many as the population has places after the elites, are
 * then scored with the elites on the default fidelity, and those scores alone make the
 * population (so they stay comparable across generations).
 */
import { Schema } from "effect";
import { UsageError } from "../errors.ts";
import type { Rng } from "../rng.ts";
import type { Genome } from "./genome.ts";
import { ranking, score, tournament } from "./selection.ts";
import type { StoredFitness } from "./state.ts";
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
  /** Screening stages before the default fidelity: candidates scored at each, on how many tokens. */
  readonly screening?: readonly ScreeningStage[];
}

export interface ScreeningStage {
  readonly candidates: number;
  readonly tokens: number;
}

export type GenerationalSettings = Required<Omit<GenerationalOptions, "screening">> & { readonly screening: readonly ScreeningStage[] };

interface Member<G> {
  readonly genome: G;
  readonly key: string;
  /** Fitness; +Infinity for a failure. */
  readonly score: number;
}

/** The last generation, as told (a prefix of it when the budget cut it); empty before generation 0. */
export interface GenerationalState<G> {
  readonly population: readonly Member<G>[];
  /** Within a screened generation: the candidates that passed the last screen. */
  readonly passed?: readonly G[];
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
  (options.screening ?? []).forEach((stage, s, all) => {
    whole(`screening stage ${s} candidates`, stage.candidates, options.population ?? 1, s > 0 ? all[s - 1]!.candidates : Infinity);
    whole(`screening stage ${s} tokens`, stage.tokens, 1);
  });
  return problems;
};

/**
 * `--screen 64@1024,16@4096`: 64 candidates on 1024 tokens, the best 16 on 4096, then the
 * best of those on the default fidelity. Throws a RangeError naming what is wrong.
 */
export const parseScreening = (text: string): ScreeningStage[] =>
  text.split(",").map((part) => {
    const m = part.trim().match(/^(\d+)@(\d+)$/);
    if (!m) throw new RangeError(`"${part}" is not CANDIDATES@TOKENS (e.g. 64@1024,16@4096)`);
    return { candidates: Number(m[1]), tokens: Number(m[2]) };
  });

export const generationalSettings = (options: GenerationalOptions): GenerationalSettings => ({
  population: options.population,
  elitism: options.elitism ?? Math.min(1, options.population - 1),
  tournament: options.tournament ?? 2,
  crossoverRate: options.crossoverRate ?? 0.9,
  mutationRate: options.mutationRate ?? 1,
  screening: options.screening ?? [],
});

/** The generational GA; settings that make no sense throw a UsageError. */
export const generational = <G, P>(options: GenerationalOptions): Strategy<G, P, GenerationalState<G>> => {
  const problems = generationalProblems(options);
  if (problems.length > 0) throw new UsageError({ problem: problems.join("; ") });
  const settings = generationalSettings(options);
  const screens = settings.screening.length;
  const member = (s: { genome: G; key: string; fitness: StoredFitness }): Member<G> => ({ genome: s.genome, key: s.key, score: score(s.fitness) });
  return {
    name: "generational",
    init: () => ({ population: [] }),
    ask: (state, { genome, stage, rng }) => {
      if (stage > screens) return undefined;
      if (stage === 0) {
        if (screens === 0) {
          const genomes =
            state.population.length === 0
              ? Array.from({ length: settings.population }, (_, i) => genome.create(rng.split(i), i))
              : breed(genome, state.population, settings, rng, settings.population);
          return { genomes };
        }
        // Screened: `candidates` new individuals (children after the elites' places); the
        // elites join at the last stage.
        const count = settings.screening[0]!.candidates;
        const elites = elitesOf(state.population, settings).length;
        const genomes =
          state.population.length === 0
            ? Array.from({ length: count }, (_, i) => genome.create(rng.split(i), i))
            : breed(genome, state.population, settings, rng, elites + count).slice(elites);
        return { genomes, tokens: settings.screening[0]!.tokens };
      }
      if (stage < screens) return { genomes: state.passed ?? [], tokens: settings.screening[stage]!.tokens };
      // The last stage: the elites (scored before, so cached) and the survivors of the screens.
      return { genomes: [...elitesOf(state.population, settings).map((i) => state.population[i]!.genome), ...(state.passed ?? [])] };
    },
    tell: (state, told, { stage }) => {
      if (stage === screens) return { population: told.scored.map(member) };
      // A budget that cut a screen ends the generation: the population stays.
      if (!told.complete) return { population: state.population };
      const places = stage + 1 < screens ? settings.screening[stage + 1]!.candidates : settings.population - elitesOf(state.population, settings).length;
      const ranked = ranking(told.scored.map((s) => score(s.fitness)));
      return { population: state.population, passed: ranked.slice(0, places).map((i) => told.scored[i]!.genome) };
    },
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

/** Indices of the elites: the best distinct phenotypes of the population that did not fail. */
const elitesOf = <G>(population: readonly Member<G>[], settings: GenerationalSettings): number[] => {
  const scores = population.map((p) => p.score);
  const elites: number[] = [];
  const keys = new Set<string>();
  for (const i of ranking(scores)) {
    if (elites.length >= settings.elitism || scores[i] === Infinity) break;
    if (keys.has(population[i]!.key)) continue;
    keys.add(population[i]!.key);
    elites.push(i);
  }
  return elites;
};

/** Elites first, then tournament children up to `size` in all. */
const breed = <G>(genome: Genome<G, unknown>, parents: readonly Member<G>[], settings: GenerationalSettings, rng: Rng, size: number): G[] => {
  const scores = parents.map((p) => p.score);
  const children: G[] = elitesOf(parents, settings).map((i) => parents[i]!.genome);
  for (let i = children.length; i < size; i++) {
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
