/**
 * The driver of the evolutionary engine: it runs any Strategy (strategy.ts) in ask/tell
 * form and owns everything but selection and variation. Per generation it asks the
 * strategy for each stage's candidates, passes the host's `evaluate` only the phenotypes
 * it has never scored at that fidelity, keeps the rest from a cache keyed by the host's
 * phenotype key, records every candidate in the history, tells the strategy the fitness,
 * then saves the state and reports. It knows nothing of what a phenotype is. Without a
 * `strategy` option it runs the generational GA (generational.ts).
 *
 * The run's best: the lowest default-fidelity score seen (only those are comparable
 * across generations), and patience counts generations without a lower one. A strategy
 * that defines `leader` (it scores on fresh minibatches, as EvoPress does) names the best
 * itself: after every generation the best is its leader, with the score it chose it on,
 * and patience counts generations in which the leader's phenotype key did not change;
 * while it names none (no finite score yet), the best stays what it was.
 *
 * Reproducibility: generation g draws only from `new Rng(seed).split(g)`, so no RNG state
 * is stored and nothing depends on how the host batches or parallelises evaluations. The
 * state saved after every generation is enough to resume into exactly the history an
 * uninterrupted run would have written.
 */
import { Clock, Effect } from "effect";
import { UsageError } from "../errors.ts";
import { Rng } from "../rng.ts";
import { generational, generationalProblems, type GenerationalOptions } from "./generational.ts";
import type { Fidelity, Fitness, Genome } from "./genome.ts";
import { median } from "./selection.ts";
import { ENGINE_STATE_VERSION, type EngineState, type GenerationRecord, type HistoryRecord, type StopReason, type StoredFitness } from "./state.ts";
import type { StageContext, Strategy } from "./strategy.ts";

export interface EngineCheckpoint {
  load(): EngineState | undefined;
  /** Called after every generation; the host should write it atomically. */
  save(state: EngineState): void;
}

export interface EvolveOptions<G, P, E = never, R = never> extends Partial<GenerationalOptions> {
  readonly genome: Genome<G, P>;
  /**
   * The search strategy; default the generational GA built from `population`, `elitism`,
   * `tournament`, `crossoverRate` and `mutationRate` (population is then required; those
   * settings are not used with another strategy).
   */
  readonly strategy?: Strategy<G, P>;
  /** Equal keys mean equal phenotypes (e.g. an allocation rounded to whole weights). */
  readonly phenotypeKey: (phenotype: P) => string;
  /**
   * Scores a stage's new, distinct phenotypes, one Fitness each, in order, at the given
   * fidelity (see Fidelity for what the host must guarantee). A bad candidate is a
   * Fitness with ok: false; failing the Effect means the evaluator itself broke, and ends
   * the search with that error.
   */
  readonly evaluate: (batch: readonly P[], fidelity: Fidelity) => Effect.Effect<readonly Fitness[], E, R>;
  readonly seed: number;
  /**
   * Maximum number of generations, the first included; absent: no cap, the run ends on a
   * budget (one of the budgets is then required).
   */
  readonly generations?: number;
  /** Maximum real (uncached) evaluations; the last generation is cut short to respect it. */
  readonly budgetEvals?: number;
  /**
   * Maximum fitness tokens over the run (every evaluation's reported tokens, stages
   * included); no stage starts an evaluation that would pass it. Needs `tokensOf`.
   */
  readonly budgetTokens?: number;
  /** The tokens one evaluation at a fidelity costs, known before it runs (the host's windows). */
  readonly tokensOf?: (fidelity: Fidelity) => number;
  /** Wall-clock limit, checked between generations. */
  readonly timeBudgetSeconds?: number;
  /**
   * Stop after this many generations without a better best fitness (with a strategy that
   * has a leader: without a change of leader).
   */
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

/** The driver's limits, defaults applied. */
interface Limits {
  readonly generations: number;
  readonly budgetEvals: number;
  readonly budgetTokens: number;
  readonly timeBudgetSeconds: number;
  readonly patience: number;
}

interface Candidate<G> {
  readonly genome: G;
  readonly key: string;
}

export const evolve = <G, P, E = never, R = never>(
  options: EvolveOptions<G, P, E, R>,
): Effect.Effect<EvolveResult<G, P>, E | UsageError, R> =>
  Effect.gen(function* () {
    const limits = yield* checkEngineLimits(options);
    if (options.budgetTokens !== undefined && options.tokensOf === undefined) {
      return yield* new UsageError({ problem: "a token budget needs the host's token count per evaluation (tokensOf)" });
    }
    const { population, elitism, tournament, crossoverRate, mutationRate, screening } = options;
    const strategy: Strategy<G, P> = options.strategy ?? generational<G, P>({ population: population!, elitism, tournament, crossoverRate, mutationRate, screening });
    const leads = strategy.leader !== undefined;
    const { genome } = options;
    const saved = options.checkpoint?.load();
    if (saved !== undefined && saved.seed !== options.seed) {
      return yield* new UsageError({ problem: `the saved search was started with seed ${saved.seed}, not ${options.seed}` });
    }
    if (saved !== undefined && saved.strategy.name !== strategy.name) {
      return yield* new UsageError({ problem: `the saved search ran strategy ${saved.strategy.name}, not ${strategy.name}` });
    }
    const root = new Rng(options.seed);
    const startMillis = yield* Clock.currentTimeMillis;
    const priorSeconds = saved?.seconds ?? 0;
    const elapsed = Effect.map(Clock.currentTimeMillis, (now) => priorSeconds + (now - startMillis) / 1000);

    let generation = saved?.generation ?? 0;
    let evaluations = saved?.evaluations ?? 0;
    let stale = saved?.stale ?? 0;
    // Every evaluation's tokens are in the history, so a resumed run knows what it spent.
    let spentTokens = (saved?.history ?? []).reduce((n, r) => n + r.tokens, 0);
    /** Set when the token budget cannot pay for the next evaluation. */
    let tokensExhausted = false;
    /** Scores on the host's default fidelity, for the whole run. */
    const cache = new Map<string, StoredFitness>(saved?.cache ?? []);
    const history: HistoryRecord[] = [...(saved?.history ?? [])];
    let state = saved === undefined ? strategy.init(genome) : strategy.restore(saved.strategy.state, genome);
    let best: Candidate<G> & { fitness: number } | undefined =
      saved?.best != null ? { ...saved.best, genome: genome.restore(saved.best.genome) } : undefined;

    for (;;) {
      const seconds = yield* elapsed;
      const stoppedBy: StopReason | undefined =
        evaluations >= limits.budgetEvals || spentTokens >= limits.budgetTokens || tokensExhausted ? "budget"
        : generation >= limits.generations ? "generations"
        : stale >= limits.patience ? "patience"
        : seconds >= limits.timeBudgetSeconds ? "time"
        : undefined;
      if (stoppedBy !== undefined) {
        const found = best && { genome: best.genome, phenotype: genome.decode(best.genome), fitness: best.fitness };
        return { best: found, history, generations: generation, evaluations, stoppedBy, seconds };
      }

      const rng = root.split(generation);
      let improved = false;
      let size = 0;
      let failed = 0;
      const values: number[] = [];
      for (let stage = 0; ; stage++) {
        const context: StageContext<G, P> = { genome, generation, stage, rng };
        const proposal = strategy.ask(state, context);
        if (proposal === undefined || proposal.genomes.length === 0) {
          if (stage === 0) return yield* Effect.die(new Error(`strategy ${strategy.name} proposed no candidates for generation ${generation}`));
          break;
        }
        const { genomes, tokens, exact } = proposal;
        const fidelity: Fidelity = { generation, stage, ...(tokens !== undefined ? { tokens } : {}), ...(exact ? { exact } : {}) };
        // Default-fidelity scores are kept for the run; others only for this stage.
        const known = tokens === undefined && !exact ? cache : new Map<string, StoredFitness>();
        const phenotypes = genomes.map((g) => genome.decode(g));
        const keys = phenotypes.map(options.phenotypeKey);

        // The first occurrence of each unseen key is evaluated; twins and cached keys are free.
        // The stage, and with it the generation, ends before the candidate that would overrun the budget.
        const fresh: number[] = [];
        const pending = new Set<string>();
        let told = genomes.length;
        const cost = options.tokensOf?.(fidelity) ?? 0;
        for (let i = 0; i < genomes.length; i++) {
          if (known.has(keys[i]!) || pending.has(keys[i]!)) continue;
          const overTokens = spentTokens + (fresh.length + 1) * cost > limits.budgetTokens;
          if (evaluations + fresh.length >= limits.budgetEvals || overTokens) {
            if (overTokens) tokensExhausted = true;
            told = i;
            break;
          }
          pending.add(keys[i]!);
          fresh.push(i);
        }

        const batchStart = yield* Clock.currentTimeMillis;
        const results = fresh.length === 0 ? [] : yield* options.evaluate(fresh.map((i) => phenotypes[i]!), fidelity);
        const batchSeconds = ((yield* Clock.currentTimeMillis) - batchStart) / 1000;
        if (results.length !== fresh.length) {
          return yield* Effect.die(new Error(`evaluate returned ${results.length} fitness values for ${fresh.length} phenotypes`));
        }
        const spent = new Map<number, { seconds: number; tokens: number }>();
        for (const [j, i] of fresh.entries()) {
          const result = results[j]!;
          if (result.tokens !== undefined && !(Number.isInteger(result.tokens) && result.tokens >= 0)) {
            return yield* Effect.die(new Error(`evaluate reported ${result.tokens} tokens: not a whole number of tokens`));
          }
          known.set(keys[i]!, stored(result));
          spent.set(i, {
            seconds: result.seconds !== undefined && Number.isFinite(result.seconds) ? result.seconds : batchSeconds / fresh.length,
            tokens: result.tokens ?? 0,
          });
        }
        evaluations += fresh.length;
        for (const { tokens: t } of spent.values()) spentTokens += t;

        for (let i = 0; i < told; i++) {
          const fitness = known.get(keys[i]!)!;
          const record: HistoryRecord = {
            generation,
            index: i,
            ...(stage > 0 ? { stage } : {}),
            genome: genome.describe(genomes[i]!),
            key: keys[i]!,
            fitness: fitness.ok ? fitness.value : null,
            ...(fitness.ok ? {} : { error: fitness.error }),
            cached: !spent.has(i),
            seconds: spent.get(i)?.seconds ?? 0,
            tokens: spent.get(i)?.tokens ?? 0,
          };
          history.push(record);
          options.onEvaluation?.(record);
          if (!fitness.ok) {
            failed += 1;
            continue;
          }
          // Only default-fidelity scores are comparable across the run.
          if (tokens !== undefined || exact) continue;
          values.push(fitness.value);
          // A strategy with a leader names the best itself, once the generation ends.
          if (leads) continue;
          if (best === undefined || fitness.value < best.fitness) {
            best = { genome: genomes[i]!, key: keys[i]!, fitness: fitness.value };
            improved = true;
          }
        }
        if (stage === 0) size = told;

        const complete = told === genomes.length;
        const scored = genomes.slice(0, told).map((g, i) => ({ genome: g, key: keys[i]!, fitness: known.get(keys[i]!)! }));
        state = strategy.tell(state, { scored, complete }, context);
        if (!complete) break;
      }

      const leader = strategy.leader?.(state);
      if (leader !== undefined) {
        if (!Number.isFinite(leader.fitness)) {
          return yield* Effect.die(new Error(`strategy ${strategy.name} leads with a non-finite fitness ${leader.fitness}`));
        }
        improved = best === undefined || leader.key !== best.key;
        best = { genome: leader.genome, key: leader.key, fitness: leader.fitness };
      }
      stale = improved ? 0 : stale + 1;
      generation += 1;
      const secondsNow = yield* elapsed;
      if (options.checkpoint) {
        options.checkpoint.save({
          version: ENGINE_STATE_VERSION,
          seed: options.seed,
          generation,
          evaluations,
          seconds: secondsNow,
          stale,
          cache: [...cache],
          history: [...history],
          best: best === undefined ? null : { genome: genome.encode(best.genome), key: best.key, fitness: best.fitness },
          strategy: { name: strategy.name, state: strategy.encode(state, genome) },
        });
      }
      options.onGeneration?.({
        generation: generation - 1,
        size,
        evaluations,
        best: best?.fitness,
        median: median(values),
        failed,
        seconds: secondsNow,
      });
    }
  });

/** Non-finite values are failures, so the cache and the history stay JSON-safe. */
const stored = (fitness: Fitness): StoredFitness =>
  !fitness.ok
    ? { ok: false, error: fitness.error }
    : Number.isFinite(fitness.value)
      ? { ok: true, value: fitness.value }
      : { ok: false, error: `non-finite fitness ${fitness.value}` };

export type EngineLimits = Pick<
  EvolveOptions<unknown, unknown>,
  "seed" | "population" | "generations" | "elitism" | "tournament" | "crossoverRate" | "mutationRate" | "screening" | "budgetEvals" | "budgetTokens" | "timeBudgetSeconds" | "patience"
> & { readonly strategy?: unknown };

/**
 * Checks the driver's limits and, without a `strategy`, the generational GA's settings
 * (population required); every problem is named in one UsageError.
 */
export const checkEngineLimits = (options: EngineLimits): Effect.Effect<Limits, UsageError> => {
  const problems: string[] = [];
  const whole = (name: string, value: number | undefined, min: number, max = Infinity): void => {
    if (value !== undefined && !(Number.isInteger(value) && value >= min && value <= max)) {
      problems.push(`${name} must be a whole number in [${min}, ${max}], got ${value}`);
    }
  };
  whole("seed", options.seed, -(2 ** 53), 2 ** 53);
  if (options.strategy === undefined) {
    if (options.population === undefined) problems.push("population must be given for the generational strategy");
    problems.push(...generationalProblems(options));
  }
  whole("generations", options.generations, 1);
  if (options.generations === undefined && options.budgetEvals === undefined && options.budgetTokens === undefined && options.timeBudgetSeconds === undefined) {
    problems.push("a search without a generation cap needs a budget (evaluations, tokens or seconds) to end on");
  }
  whole("evaluation budget", options.budgetEvals, 1);
  whole("token budget", options.budgetTokens, 1);
  whole("patience", options.patience, 1);
  if (options.timeBudgetSeconds !== undefined && !(options.timeBudgetSeconds > 0)) {
    problems.push(`time budget must be a positive number of seconds, got ${options.timeBudgetSeconds}`);
  }
  if (problems.length > 0) return Effect.fail(new UsageError({ problem: problems.join("; ") }));
  return Effect.succeed({
    generations: options.generations ?? Infinity,
    budgetEvals: options.budgetEvals ?? Infinity,
    budgetTokens: options.budgetTokens ?? Infinity,
    timeBudgetSeconds: options.timeBudgetSeconds ?? Infinity,
    patience: options.patience ?? Infinity,
  });
};
