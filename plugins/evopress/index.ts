/**
 * EvoPress (IST-DASLab): per-linear sparsity levels searched by staged (1+λ) selection.
 *
 * The genome holds one whole level per prunable linear (MethodContext.linears, in that
 * order). A level is a fixed count of weights, `levelWeights`, so linear j prunes
 * target x params_j + level_j x levelWeights weights: its sparsity is
 * target + level_j x levelWeights / params_j. The levels always sum to 0, so the count of
 * pruned weights, hence the global sparsity, never moves; level 0 everywhere is the
 * uniform allocation, the first parent. A mutation makes min(U{1,3}, U{1,3}) switches,
 * each taking one linear down a level and another up one.
 *
 * `levelWeights` is the space's `levelSize` times the mean linear's weights (rounded, at
 * least one weight): EvoPress fixes it as a share of a hidden x hidden matrix, which the
 * project generalises to any family through the mean linear. Each linear's levels stop
 * where its sparsity would leave the bounds (the run's, narrowed by the space's) and,
 * with `maxLevels`, at ±maxLevels, as EvoPress's database of pruned levels stops.
 *
 * `granularity: "block"` (ours) holds one level per block instead: a level is `levelSize`
 * of the mean block's weights, and every linear of a block takes the block's sparsity.
 * The default space (`evopress.json`) searches so, with levels of 2% and no ±8 stop: at
 * 70% and 800k fitness tokens it ended better on held-out text than EvoPress's per-linear
 * levels on both models under Wanda and on the embedded one under SparseGPT, 2% behind on
 * stories260K under SparseGPT; on stories260K under Wanda per linear won on the search's
 * own fitness and lost to OWL on held-out text (README). `evopress-linear.json` keeps
 * EvoPress's levels.
 */
import { Schema } from "effect";
import { projectToTarget } from "../../src/allocation/project.ts";
import { BoundsSchema, effectiveBounds } from "../../src/allocation/space-schema.ts";
import type { Genome } from "../../src/engine/genome.ts";
import { staged, stageSizes, survivorsProblem } from "../../src/engine/staged.ts";
import { UsageError } from "../../src/errors.ts";
import type { Rng } from "../../src/rng.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../../src/search/plugin.ts";

/** More children than this per generation would take longer than any search is run for. */
const maxOffspring = 10_000;

const atLeastOne = Schema.Int.check(Schema.makeFilter((v: number) => v >= 1 || `${v} is below 1`));

const StageSchema = Schema.Struct({
  /** Candidates kept for the next stage; 1 in the last stage (the next parent). */
  survivors: atLeastOne,
  /** Fitness tokens of the stage's fresh minibatch; absent: the run's fitness windows. */
  tokens: Schema.optional(atLeastOne),
  /** Score this stage with the run's final pruning protocol (sequential) on the same minibatch. */
  exact: Schema.optional(Schema.Boolean),
});

export const EvoPressSpaceSchema = Schema.Struct({
  /** Weights per level, as a share of the mean prunable linear's weights. */
  levelSize: Schema.Finite.check(Schema.makeFilter((v: number) => (v > 0 && v <= 1) || `${v} is outside (0, 1]`)),
  /** Most levels a linear may move away from the target, either way; absent: only the bounds limit it. */
  maxLevels: Schema.optional(atLeastOne),
  /**
   * Children per generation (λ) and the selection stages. Absent (both): the run derives
   * them from its budget (src/search/plan.ts); `evopress-published.json` holds EvoPress's own.
   */
  offspring: Schema.optional(atLeastOne.check(Schema.makeFilter((v: number) => v <= maxOffspring || `${v} is above ${maxOffspring}`))),
  stages: Schema.optional(
    Schema.Array(StageSchema).check(Schema.makeFilter((stages: readonly unknown[]) => stages.length > 0 || "empty: list at least one stage")),
  ),
  bounds: Schema.optional(BoundsSchema),
  /**
   * Ours, off by default: draw `pool` children and score only the `offspring` a linear
   * surrogate of fitness in the level changes predicts best, once `warmup` stage-0 scores
   * are known (src/engine/staged.ts).
   */
  prescreen: Schema.optional(Schema.Struct({ pool: atLeastOne, warmup: atLeastOne, memory: Schema.optional(atLeastOne) })),
  /**
   * Ours: whether the last stage of a plan the run derives scores with the final protocol
   * (sequential pruning). Absent: the run decides (on where the protocol differs from the
   * dense fitness at the cost of a forward: Wanda pruned sequentially).
   */
  exactLastStage: Schema.optional(Schema.Boolean),
  /** Ours: a level per prunable linear (EvoPress's, when absent) or per block (the default space's). */
  granularity: Schema.optional(Schema.Literals(["linear", "block"])),
}).check(
  Schema.makeFilter(
    ({ offspring, stages, prescreen }: { readonly offspring?: number; readonly stages?: readonly { readonly survivors: number }[]; readonly prescreen?: { readonly pool: number } }) => {
      if ((offspring === undefined) !== (stages === undefined)) {
        return [{ path: [offspring === undefined ? "offspring" : "stages"], issue: "give offspring and stages together, or neither (the run derives both from its budget)" }];
      }
      if (offspring === undefined || stages === undefined) return [];
      const sizes = stageSizes(offspring, stages);
      const problems = stages.flatMap((stage, s) => {
        const problem = survivorsProblem(stage.survivors, sizes[s]!, s === stages.length - 1);
        return problem === undefined ? [] : [{ path: ["stages", s, "survivors"], issue: problem }];
      });
      if (prescreen && prescreen.pool < offspring) problems.push({ path: ["prescreen", "pool"], issue: `${prescreen.pool} is below the ${offspring} offspring it screens for` });
      return problems;
    },
  ),
);

export type EvoPressSpace = typeof EvoPressSpaceSchema.Type;

/** A level per prunable linear, in MethodContext.linears order; they sum to 0. */
export type Levels = readonly number[];

/** The arithmetic of levels for one context: sizes, per-linear ranges and sparsities. */
export interface LevelGrid {
  /** Weights one level moves. */
  readonly levelWeights: number;
  /** Lowest and highest level of each linear; lowest <= 0 <= highest. */
  readonly lowest: readonly number[];
  readonly highest: readonly number[];
  readonly sparsityAt: (linear: number, level: number) => number;
  /** The context the levels belong to (unitContext): per block, its blocks are the linears. */
  readonly units: MethodContext;
}

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

/**
 * What one level each belongs to: the prunable linears, or with `granularity: "block"` the
 * blocks, each as one unit of its weights. A start given per linear is then taken per
 * block, as the share of the block's weights it prunes.
 */
export const unitContext = (context: MethodContext, space: EvoPressSpace): MethodContext => {
  if (space.granularity !== "block") return context;
  const linears = context.blockParams.map((params, block) => ({ block, linear: "block", params }));
  const start = context.start;
  if (!start || start.sparsities.length === context.blocks) return { ...context, linears };
  if (start.sparsities.length !== context.linears.length) throw new RangeError(`a start of ${start.sparsities.length} sparsities fits neither the ${context.blocks} blocks nor the ${context.linears.length} linears`);
  const pruned = new Array<number>(context.blocks).fill(0);
  context.linears.forEach((l, j) => (pruned[l.block]! += start.sparsities[j]! * l.params));
  return { ...context, linears, start: { label: start.label, sparsities: pruned.map((p, b) => (context.blockParams[b]! > 0 ? p / context.blockParams[b]! : context.target)) } };
};

/** The unit a level belongs to, as messages name it. */
const unitName = (space: EvoPressSpace): string => (space.granularity === "block" ? "block" : "linear");

export const levelGrid = (units: MethodContext, space: EvoPressSpace): LevelGrid => {
  const context = unitContext(units, space);
  const unit = unitName(space);
  const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
  const params = context.linears.map((l) => l.params);
  if (params.length === 0) throw new UsageError({ problem: `evopress needs at least one prunable ${unit}` });
  const levelWeights = Math.max(1, Math.round((space.levelSize * sum(params)) / params.length));
  const sparsityAt = (j: number, level: number): number => (level === 0 ? context.target : context.target + (level * levelWeights) / params[j]!);
  const inside = (j: number, level: number): boolean => {
    const s = sparsityAt(j, level);
    return s >= bounds.lo && s <= bounds.hi && (space.maxLevels === undefined || Math.abs(level) <= space.maxLevels);
  };
  // Start from the closed form, then step to the exact edge so rounding can never leave a bound.
  const edge = (j: number, direction: 1 | -1): number => {
    if (!(params[j]! > 0)) return 0;
    const room = direction > 0 ? bounds.hi - context.target : context.target - bounds.lo;
    const steps = Math.min(Math.floor((room * params[j]!) / levelWeights), space.maxLevels ?? Infinity);
    let level = steps === 0 ? 0 : direction * steps;
    while (level !== 0 && !inside(j, level)) level -= direction;
    while (inside(j, level + direction)) level += direction;
    return level;
  };
  const lowest = params.map((_, j) => edge(j, -1));
  const highest = params.map((_, j) => edge(j, 1));
  const downs = lowest.filter((l) => l < 0).length;
  const ups = highest.filter((h) => h > 0).length;
  // A switch needs a linear that can go down and another that can go up.
  const oneSwitch = downs > 0 && ups > 0 && !(downs === 1 && ups === 1 && lowest.findIndex((l) => l < 0) === highest.findIndex((h) => h > 0));
  if (!oneSwitch) {
    throw new UsageError({
      problem:
        `evopress: a level of ${levelWeights} weights (levelSize ${space.levelSize} of the mean ${unit}) leaves no switch within the bounds ` +
        `[${bounds.lo}, ${bounds.hi}] at sparsity ${context.target}: ${downs} of ${params.length} ${unit}s can go down a level, ${ups} up; use a smaller levelSize`,
    });
  }
  return { levelWeights, lowest, highest, sparsityAt, units: context };
};

/**
 * One switch: a linear that can go down a level, drawn uniformly, and another that can go
 * up, drawn uniformly (EvoPress's redraw-until-valid, with the two kept distinct); none
 * when no such pair exists.
 */
const switchLevels = (levels: number[], grid: LevelGrid, rng: Rng): void => {
  const ups: number[] = [];
  for (let j = 0; j < levels.length; j++) if (levels[j]! < grid.highest[j]!) ups.push(j);
  // A linear may go down only if some other linear can go up.
  const downs: number[] = [];
  for (let j = 0; j < levels.length; j++) {
    if (levels[j]! > grid.lowest[j]! && (ups.length > 1 || (ups.length === 1 && ups[0] !== j))) downs.push(j);
  }
  if (downs.length === 0) return;
  const down = downs[rng.int(downs.length)]!;
  const others = ups.filter((j) => j !== down);
  const up = others[rng.int(others.length)]!;
  levels[down] -= 1;
  levels[up] += 1;
};

/** EvoPress's mutation: min(U{1,3}, U{1,3}) switches, biased towards few. */
export const mutateLevels = (levels: Levels, grid: LevelGrid, rng: Rng): number[] => {
  const next = [...levels];
  const switches = Math.min(1 + rng.int(3), 1 + rng.int(3));
  for (let k = 0; k < switches; k++) switchLevels(next, grid, rng);
  return next;
};

/**
 * Uniform crossover, then a repair back to a zero sum that moves linears only towards
 * the other parent's level: the sum of the smaller levels is <= 0 <= the sum of the
 * larger ones, so the repair always ends, inside both parents' ranges.
 */
const crossLevels = (a: Levels, b: Levels, rng: Rng): number[] => {
  const child = a.map((v, j) => (rng.next() < 0.5 ? v : b[j]!));
  for (let excess = sum(child); excess !== 0; excess = sum(child)) {
    const step = excess > 0 ? -1 : 1;
    const movable: number[] = [];
    for (let j = 0; j < child.length; j++) {
      const limit = step < 0 ? Math.min(a[j]!, b[j]!) : Math.max(a[j]!, b[j]!);
      if (child[j] !== limit) movable.push(j);
    }
    child[movable[rng.int(movable.length)]] += step;
  }
  return child;
};

const checkLevels = (json: unknown, grid: LevelGrid): number[] => {
  const count = grid.lowest.length;
  if (!Array.isArray(json) || json.length !== count) throw new RangeError(`invalid EvoPress genome: expected a list of ${count} levels`);
  json.forEach((level: unknown, j) => {
    if (!(Number.isInteger(level) && (level as number) >= grid.lowest[j]! && (level as number) <= grid.highest[j]!)) {
      throw new RangeError(`invalid EvoPress genome: level ${JSON.stringify(level)} of linear ${j} is not a whole number in ${grid.lowest[j]}..${grid.highest[j]}`);
    }
  });
  if (sum(json as number[]) !== 0) throw new RangeError(`invalid EvoPress genome: the levels sum to ${sum(json as number[])}, not 0`);
  return [...(json as number[])];
};

/**
 * The levels nearest to a starting allocation (per block or per linear): each linear's
 * level rounded from its sparsity, kept in its range, then moved one level at a time
 * (the linear whose rounding went furthest the wrong way first, ties to the lowest index)
 * until the levels sum to 0, so the pruned count is the target's exactly. `context` is the
 * one the levels belong to (unitContext: per block, its blocks are the linears).
 */
export const startLevels = (context: MethodContext, grid: LevelGrid, start: BlockAllocation): number[] => {
  const linears = context.linears;
  const perLinear = start.length === linears.length ? start : start.length === context.blocks ? linears.map((l) => start[l.block]!) : undefined;
  if (!perLinear) throw new RangeError(`a start of ${start.length} sparsities fits neither the ${context.blocks} blocks nor the ${linears.length} linears`);
  const wanted = perLinear.map((s, j) => ((s - context.target) * linears[j]!.params) / grid.levelWeights);
  const levels = wanted.map((w, j) => Math.min(grid.highest[j]!, Math.max(grid.lowest[j]!, Math.round(w))));
  for (let excess = sum(levels); excess !== 0; excess = sum(levels)) {
    const step = excess > 0 ? -1 : 1;
    let pick = -1;
    for (let j = 0; j < levels.length; j++) {
      const next = levels[j]! + step;
      if (next < grid.lowest[j]! || next > grid.highest[j]!) continue;
      if (pick < 0 || step * (wanted[j]! - levels[j]!) > step * (wanted[pick]! - levels[pick]!)) pick = j;
    }
    // The ranges hold 0 for every linear, so a zero sum is always reachable.
    levels[pick]! += step;
  }
  return levels;
};

const evoPressGenome = (linearContext: MethodContext, space: EvoPressSpace): Genome<Levels, BlockAllocation> => {
  const grid = levelGrid(linearContext, space);
  const context = grid.units;
  const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
  const params = context.linears.map((l) => l.params);
  // The parent the staged search starts from: uniform, or the run's start allocation.
  const first = context.start ? startLevels(context, grid, context.start.sparsities) : params.map(() => 0);
  const unitLabel = (j: number): string => (space.granularity === "block" ? `b${context.linears[j]!.block}` : `${context.linears[j]!.block}.${context.linears[j]!.linear}`);
  return {
    // The generational GA would ask more than index 0: each a mutation of it.
    create: (rng, index) => (index === 0 ? [...first] : mutateLevels(first, grid, rng)),
    mutate: (levels, rng) => mutateLevels(levels, grid, rng),
    crossover: (a, b, rng) => crossLevels(a, b, rng),
    key: (levels) => levels.join(","),
    // The levels sum to 0, so the mean is the target up to rounding, which the projection
    // (a no-op on a valid vector) absorbs. Per block, the allocation is one per block.
    decode: (levels) => projectToTarget(levels.map((level, j) => grid.sparsityAt(j, level)), params, context.target, bounds),
    describe: (levels) => {
      const moved = levels.flatMap((level, j) => (level === 0 ? [] : [`${unitLabel(j)}${level > 0 ? "+" : ""}${level}`]));
      return moved.length === 0 ? "uniform" : moved.join(" ");
    },
    encode: (levels) => [...levels],
    restore: (json) => checkLevels(json, grid),
    // The surrogate's inputs: the levels themselves.
    features: (levels) => levels,
  };
};

export const plugin: MethodPlugin<EvoPressSpace> = {
  name: "evopress",
  startable: true,
  describe: "EvoPress: sparsity levels of a fixed weight count per block (per linear, as published, with evopress-linear.json), searched by staged (1+λ) selection",
  spaceSchema: EvoPressSpaceSchema,
  defaultSpace: "evopress.json",
  patterns: ["unstructured"],
  method: {
    kind: "evolve",
    genome: evoPressGenome,
    strategy: (_, space) => {
      if (space.offspring === undefined || space.stages === undefined) throw new UsageError({ problem: "evopress: the search space has no stage plan, and the run derived none" });
      return staged({ offspring: space.offspring, stages: space.stages, ...(space.prescreen ? { prescreen: space.prescreen } : {}) });
    },
  },
  stagedPlan: (space) =>
    space.offspring !== undefined && space.stages !== undefined
      ? { offspring: space.offspring, stages: space.stages.map((s) => ({ survivors: s.survivors, tokens: s.tokens ?? 0, ...(s.exact ? { exact: true } : {}) })) }
      : undefined,
  withStagedPlan: (space, plan) => ({
    ...space,
    offspring: plan.offspring,
    // The space's exactLastStage, when given, decides the last stage; otherwise the run's plan does.
    stages: plan.stages.map((s, i) => {
      const last = i === plan.stages.length - 1;
      const exact = last && space.exactLastStage !== undefined ? space.exactLastStage : s.exact === true;
      return { survivors: s.survivors, tokens: s.tokens, ...(exact ? { exact: true } : {}) };
    }),
  }),
  // Per block with no stop, a linear has about three times the levels of EvoPress's ±8 (50
  // against 17 at 70%), down to 0% where a stored level keeps every weight: about five
  // times the disk.
  fewerLevels: "--space evopress-linear.json (EvoPress's levels, about a fifth of the disk), a space with maxLevels",
  // Every level of every linear: EvoPress's database of pruned levels (per block: each linear at its block's).
  levels: (context, space) => {
    const grid = levelGrid(context, space);
    const perUnit = grid.lowest.map((lowest, j) => Array.from({ length: grid.highest[j]! - lowest + 1 }, (_, k) => grid.sparsityAt(j, lowest + k)));
    return space.granularity === "block" ? context.linears.map((l) => perUnit[l.block]!) : perUnit;
  },
};
