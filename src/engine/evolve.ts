/**
 * A generational genetic algorithm in ask/tell form: each generation asks the genome for
 * individuals (creation, then elitism + tournament selection, crossover and mutation),
 * tells the host's `evaluate` only the phenotypes it has never scored, and keeps the rest
 * from a cache keyed by the host's phenotype key. It knows nothing of what a phenotype is.
 *
 * Reproducibility: generation g draws only from `new Rng(seed).split(g)`, and individual
 * i of it from `.split(i)` of that, so no RNG state is stored and nothing depends on how
 * the host batches or parallelises evaluations. The state saved after every generation
 * is enough to resume into exactly the history an uninterrupted run would have written.
 */
import { Clock, Effect } from "effect";
import { UsageError } from "../errors.ts";
import { Rng } from "../rng.ts";
import type { Fitness, Genome } from "./genome.ts";
import { median, ranking, score, tournament } from "./selection.ts";
import type { EngineState, GenerationRecord, HistoryRecord, StopReason, StoredFitness } from "./state.ts";

export interface EngineCheckpoint {
  load(): EngineState | undefined;
  /** Called after every generation; the host should write it atomically. */
  save(state: EngineState): void;
}

export interface EvolveOptions<G, P, E = never, R = never> {
  readonly genome: Genome<G, P>;
  /** Equal keys mean equal phenotypes (e.g. an allocation rounded to whole weights). */
  readonly phenotypeKey: (phenotype: P) => string;
  /**
   * Scores a generation's new, distinct phenotypes, one Fitness each, in order. A bad
   * candidate is a Fitness with ok: false; failing the Effect means the evaluator itself
   * broke, and ends the search with that error.
   */
  readonly evaluate: (batch: readonly P[]) => Effect.Effect<readonly Fitness[], E, R>;
  readonly seed: number;
  readonly population: number;
  /** Maximum number of generations, the first included. */
  readonly generations: number;
  /** Best distinct individuals copied unchanged into the next generation; default 1. */
  readonly elitism?: number;
  /** Tournament size; default 2 (binary tournament). */
  readonly tournament?: number;
  /** Probability that a child is the crossover of two parents rather than a copy of one; default 0.9. */
  readonly crossoverRate?: number;
  /** Probability that a child is mutated; default 1. */
  readonly mutationRate?: number;
  /** Maximum real (uncached) evaluations; the last generation is cut short to respect it. */
  readonly budgetEvals?: number;
  /** Wall-clock limit, checked between generations. */
  readonly timeBudgetSeconds?: number;
  /** Stop after this many generations without a better best fitness. */
  readonly patience?: number;
  readonly checkpoint?: EngineCheckpoint;
  readonly onGeneration?: (record: GenerationRecord) => void;
  readonly onEvaluation?: (record: HistoryRecord) => void;
}

export interface Best<G, P> {
  readonly genome: G;
  readonly phenotype: P;
  readonly fitness: number;
}

export interface EvolveResult<G, P> {
  /** Undefined when every evaluation failed. */
  readonly best: Best<G, P> | undefined;
  readonly history: readonly HistoryRecord[];
  /** Generations run, resumed ones included. */
  readonly generations: number;
  readonly evaluations: number;
  readonly stoppedBy: StopReason;
  readonly seconds: number;
}

interface Settings {
  readonly population: number;
  readonly generations: number;
  readonly elitism: number;
  readonly tournament: number;
  readonly crossoverRate: number;
  readonly mutationRate: number;
  readonly budgetEvals: number;
  readonly timeBudgetSeconds: number;
  readonly patience: number;
}

interface Individual<G> {
  readonly genome: G;
  readonly key: string;
}

export const evolve = <G, P, E = never, R = never>(
  options: EvolveOptions<G, P, E, R>,
): Effect.Effect<EvolveResult<G, P>, E | UsageError, R> =>
  Effect.gen(function* () {
    const settings = yield* checkEngineLimits(options);
    const { genome } = options;
    const saved = options.checkpoint?.load();
    if (saved !== undefined && saved.seed !== options.seed) {
      return yield* Effect.fail(
        new UsageError({ problem: `the saved search was started with seed ${saved.seed}, not ${options.seed}` }),
      );
    }
    const root = new Rng(options.seed);
    const startMillis = yield* Clock.currentTimeMillis;
    const priorSeconds = saved?.seconds ?? 0;
    const elapsed = Effect.map(Clock.currentTimeMillis, (now) => priorSeconds + (now - startMillis) / 1000);

    let generation = saved?.generation ?? 0;
    let evaluations = saved?.evaluations ?? 0;
    let stale = saved?.stale ?? 0;
    const cache = new Map<string, StoredFitness>(saved?.cache ?? []);
    const history: HistoryRecord[] = [...(saved?.history ?? [])];
    let population: Individual<G>[] = (saved?.population ?? []).map((p) => ({ genome: genome.restore(p.genome), key: p.key }));
    let best: Individual<G> & { fitness: number } | undefined =
      saved?.best != null ? { ...saved.best, genome: genome.restore(saved.best.genome) } : undefined;

    for (;;) {
      const seconds = yield* elapsed;
      const stoppedBy: StopReason | undefined =
        evaluations >= settings.budgetEvals ? "budget"
        : generation >= settings.generations ? "generations"
        : stale >= settings.patience ? "patience"
        : seconds >= settings.timeBudgetSeconds ? "time"
        : undefined;
      if (stoppedBy !== undefined) {
        const found = best && { genome: best.genome, phenotype: genome.decode(best.genome), fitness: best.fitness };
        return { best: found, history, generations: generation, evaluations, stoppedBy, seconds };
      }

      const rng = root.split(generation);
      const genomes =
        generation === 0
          ? Array.from({ length: settings.population }, (_, i) => genome.create(rng.split(i), i))
          : breed(genome, population, population.map((p) => score(cache.get(p.key)!)), settings, rng);
      const phenotypes = genomes.map((g) => genome.decode(g));
      const keys = phenotypes.map(options.phenotypeKey);

      // The first occurrence of each unseen key is evaluated; twins and cached keys are free.
      // The generation ends before the individual that would overrun the budget.
      const fresh: number[] = [];
      const pending = new Set<string>();
      let size = genomes.length;
      for (let i = 0; i < genomes.length; i++) {
        if (cache.has(keys[i]!) || pending.has(keys[i]!)) continue;
        if (evaluations + fresh.length >= settings.budgetEvals) {
          size = i;
          break;
        }
        pending.add(keys[i]!);
        fresh.push(i);
      }

      const batchStart = yield* Clock.currentTimeMillis;
      const results = fresh.length === 0 ? [] : yield* options.evaluate(fresh.map((i) => phenotypes[i]!));
      const batchSeconds = ((yield* Clock.currentTimeMillis) - batchStart) / 1000;
      if (results.length !== fresh.length) {
        return yield* Effect.die(new Error(`evaluate returned ${results.length} fitness values for ${fresh.length} phenotypes`));
      }
      const evaluationSeconds = new Map<number, number>();
      fresh.forEach((i, j) => {
        const result = results[j]!;
        cache.set(keys[i]!, stored(result));
        evaluationSeconds.set(i, result.seconds !== undefined && Number.isFinite(result.seconds) ? result.seconds : batchSeconds / fresh.length);
      });

      let improved = false;
      const values: number[] = [];
      for (let i = 0; i < size; i++) {
        const fitness = cache.get(keys[i]!)!;
        const record: HistoryRecord = {
          generation,
          index: i,
          genome: genome.describe(genomes[i]!),
          key: keys[i]!,
          fitness: fitness.ok ? fitness.value : null,
          ...(fitness.ok ? {} : { error: fitness.error }),
          cached: !evaluationSeconds.has(i),
          seconds: evaluationSeconds.get(i) ?? 0,
        };
        history.push(record);
        options.onEvaluation?.(record);
        if (!fitness.ok) continue;
        values.push(fitness.value);
        if (best === undefined || fitness.value < best.fitness) {
          best = { genome: genomes[i]!, key: keys[i]!, fitness: fitness.value };
          improved = true;
        }
      }

      population = genomes.slice(0, size).map((g, i) => ({ genome: g, key: keys[i]! }));
      evaluations += fresh.length;
      stale = improved ? 0 : stale + 1;
      generation += 1;
      const secondsNow = yield* elapsed;
      if (options.checkpoint) {
        options.checkpoint.save({
          seed: options.seed,
          generation,
          evaluations,
          seconds: secondsNow,
          stale,
          population: population.map((p) => ({ genome: genome.encode(p.genome), key: p.key })),
          cache: [...cache],
          history: [...history],
          best: best === undefined ? null : { genome: genome.encode(best.genome), key: best.key, fitness: best.fitness },
        });
      }
      options.onGeneration?.({
        generation: generation - 1,
        size,
        evaluations,
        best: best?.fitness,
        median: median(values),
        failed: size - values.length,
        seconds: secondsNow,
      });
    }
  });

/** Elites first (best distinct phenotypes that did not fail), then tournament children. */
const breed = <G>(
  genome: Genome<G, unknown>,
  parents: readonly Individual<G>[],
  scores: readonly number[],
  settings: Settings,
  rng: Rng,
): G[] => {
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

/** Non-finite values are failures, so the cache and the history stay JSON-safe. */
const stored = (fitness: Fitness): StoredFitness =>
  !fitness.ok
    ? { ok: false, error: fitness.error }
    : Number.isFinite(fitness.value)
      ? { ok: true, value: fitness.value }
      : { ok: false, error: `non-finite fitness ${fitness.value}` };

export type EngineLimits = Pick<
  EvolveOptions<unknown, unknown>,
  "seed" | "population" | "generations" | "elitism" | "tournament" | "crossoverRate" | "mutationRate" | "budgetEvals" | "timeBudgetSeconds" | "patience"
>;

export const checkEngineLimits = (options: EngineLimits): Effect.Effect<Settings, UsageError> => {
  const problems: string[] = [];
  const whole = (name: string, value: number | undefined, min: number, max = Infinity): void => {
    if (value !== undefined && !(Number.isInteger(value) && value >= min && value <= max)) {
      problems.push(`${name} must be a whole number in [${min}, ${max}], got ${value}`);
    }
  };
  const fraction = (name: string, value: number | undefined): void => {
    if (value !== undefined && !(value >= 0 && value <= 1)) problems.push(`${name} must be in [0, 1], got ${value}`);
  };
  whole("seed", options.seed, -(2 ** 53), 2 ** 53);
  whole("population", options.population, 1);
  whole("generations", options.generations, 1);
  whole("elitism", options.elitism, 0, options.population - 1);
  whole("tournament", options.tournament, 1);
  fraction("crossover rate", options.crossoverRate);
  fraction("mutation rate", options.mutationRate);
  whole("evaluation budget", options.budgetEvals, 1);
  whole("patience", options.patience, 1);
  if (options.timeBudgetSeconds !== undefined && !(options.timeBudgetSeconds > 0)) {
    problems.push(`time budget must be a positive number of seconds, got ${options.timeBudgetSeconds}`);
  }
  if (problems.length > 0) return Effect.fail(new UsageError({ problem: problems.join("; ") }));
  return Effect.succeed({
    population: options.population,
    generations: options.generations,
    elitism: options.elitism ?? Math.min(1, options.population - 1),
    tournament: options.tournament ?? 2,
    crossoverRate: options.crossoverRate ?? 0.9,
    mutationRate: options.mutationRate ?? 1,
    budgetEvals: options.budgetEvals ?? Infinity,
    timeBudgetSeconds: options.timeBudgetSeconds ?? Infinity,
    patience: options.patience ?? Infinity,
  });
};
