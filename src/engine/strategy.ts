/**
 * A search strategy in ask/tell form: it owns selection and variation and nothing else.
 * The driver (evolve.ts) owns the loop, the phenotype cache, the budgets, failures, the
 * saved state and the reports, and runs any strategy alike.
 *
 * A generation is one or more stages. At stage s the driver asks the strategy for
 * candidates (genomes, and the fitness tokens to score them on), scores them (cached
 * phenotypes are free), and tells the strategy their fitness, in the proposal's order.
 * It then asks stage s + 1 of the same generation, until the strategy has nothing more to
 * propose: a one-stage strategy proposes at stage 0 only; staged selection (EvoPress)
 * proposes the survivors of stage s again at stage s + 1 on more tokens.
 *
 * The strategy's state S is a plain value: `tell` returns the next one and never changes
 * its argument. The driver saves `encode(state)` after every generation and resumes from
 * `restore`, so `restore(encode(s))` must behave exactly as s. All randomness comes from
 * `context.rng`, the generation's stream `Rng(seed).split(generation)`.
 */
import type { Rng } from "../rng.ts";
import type { Genome } from "./genome.ts";
import type { StoredFitness } from "./state.ts";

export interface StageContext<G, P> {
  readonly genome: Genome<G, P>;
  readonly generation: number;
  readonly stage: number;
  /**
   * `Rng(seed).split(generation)`: one object for the whole generation, handed to every
   * ask and tell of it (resuming happens only between generations). Splitting it by keys
   * of one's own (e.g. the candidate's index, as the generational strategy does) keeps
   * each draw independent of the others.
   */
  readonly rng: Rng;
}

export interface Proposal<G> {
  /** The candidates, in order; at stage 0 at least one. */
  readonly genomes: readonly G[];
  /** Fitness tokens to score them on (see Fidelity); undefined: the host's default. */
  readonly tokens?: number;
  /** Score them with the host's most faithful fitness (see Fidelity). */
  readonly exact?: true;
}

export interface Scored<G> {
  readonly genome: G;
  /** Phenotype key: equal keys had the same fitness. */
  readonly key: string;
  /** Failures keep their message; a failure ranks after every value. */
  readonly fitness: StoredFitness;
}

export interface Told<G> {
  /** The proposal's candidates with their fitness, in order: all of them, or a prefix. */
  readonly scored: readonly Scored<G>[];
  /**
   * False when the evaluation budget cut the stage before its end (`scored` is then a
   * prefix, possibly empty after stage 0): the generation ends with this tell whatever the
   * strategy would ask next, and the next generation (a resumed run with a larger budget)
   * starts from the state it returns.
   */
  readonly complete: boolean;
}

/**
 * The candidate a strategy stands behind, with the score it chose it on: `key` is its
 * phenotype key and `fitness` a finite value (see `Strategy.leader`).
 */
export interface Leader<G> {
  readonly genome: G;
  readonly key: string;
  readonly fitness: number;
}

/**
 * The methods are declared as methods, not function properties, so that any
 * `Strategy<G, P, S>` is a `Strategy<G, P>`: the driver treats the state as opaque.
 */
export interface Strategy<G, P, S = unknown> {
  /** Saved with the state; a run resumes only with a strategy of the same name. */
  readonly name: string;
  /** The state before generation 0. */
  init(genome: Genome<G, P>): S;
  /** Candidates of `context.stage`; undefined (or none) after stage 0 ends the generation. */
  ask(state: S, context: StageContext<G, P>): Proposal<G> | undefined;
  tell(state: S, told: Told<G>, context: StageContext<G, P>): S;
  /**
   * Optional: the candidate the strategy currently stands behind (EvoPress: its parent,
   * with its last-stage score), undefined while it has none with a finite score. A
   * strategy that scores on minibatches drawn afresh per generation defines it, because
   * such scores are not comparable across generations: the driver then reports the leader
   * as the run's best and counts patience by whether the leader changed, instead of
   * taking the lowest default-fidelity score it has seen (see evolve.ts).
   */
  leader?(state: S): Leader<G> | undefined;
  /** JSON-safe form of the state, genomes through `genome.encode`. */
  encode(state: S, genome: Genome<G, P>): unknown;
  /** The state from `encode`'s JSON; throws on JSON it cannot read. */
  restore(json: unknown, genome: Genome<G, P>): S;
}
