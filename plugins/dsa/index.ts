/**
 * DSA (discovered allocation functions), run as a real evolutionary search: a genome is
 * an expression `pre ops -> reduction -> transform ops` plus λ. Applied to each block's
 * concatenated element scores it gives a scalar I_l; then Î = minmax(I),
 * s_l = S + 2λ(Î_l - mean Î), projected onto the valid allocations. Larger score, more
 * pruning. Which ops exist is the table in ./ops.ts; which are enabled, and how many of
 * each an expression may have, is the search-space file.
 */
import { Schema } from "effect";
import { clampNonFinite, minmax } from "../../src/allocation/normalise.ts";
import { projectToTarget } from "../../src/allocation/project.ts";
import { BoundsSchema, effectiveBounds, IntRangeSchema, RangeSchema } from "../../src/allocation/space-schema.ts";
import type { Genome } from "../../src/engine/genome.ts";
import type { Rng } from "../../src/rng.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../../src/search/plugin.ts";
import { preOps, reduceAll, reductions, transformOps } from "./ops.ts";

/** Longest op chain a space may allow per stage; longer expressions only add noise. */
const maxStageOps = 8;

const known = (table: object): string => Object.keys(table).join(", ");

/** A list of distinct names from `table`; each unknown name is reported at its index. */
const opList = (table: object, what: string) =>
  Schema.Array(
    Schema.String.check(
      Schema.makeFilter((name: string) => Object.hasOwn(table, name) || `unknown ${what} "${name}"; known: ${known(table)}`),
    ),
  ).check(
    Schema.makeFilter((names: readonly string[]) =>
      names.flatMap((name, i) => (names.indexOf(name) < i ? [{ path: [i], issue: `"${name}" is listed twice` }] : [])),
    ),
  );

export const DsaSpaceSchema = Schema.Struct({
  pre: opList(preOps, "op"),
  preCount: IntRangeSchema(0, maxStageOps),
  reductions: opList(reductions, "reduction").check(
    Schema.makeFilter((names: readonly string[]) => names.length > 0 || "empty: list at least one reduction"),
  ),
  transform: opList(transformOps, "op"),
  transformCount: IntRangeSchema(0, maxStageOps),
  lambda: RangeSchema(0, 1),
  bounds: Schema.optional(BoundsSchema),
}).check(
  Schema.makeFilter(
    (space: {
      readonly pre: readonly string[];
      readonly preCount: readonly [number, number];
      readonly transform: readonly string[];
      readonly transformCount: readonly [number, number];
    }) => {
      const issues: Schema.FilterIssue[] = [];
      if (space.pre.length === 0 && space.preCount[1] > 0) {
        issues.push({ path: ["pre"], issue: `empty, but preCount allows up to ${space.preCount[1]} ops` });
      }
      if (space.transform.length === 0 && space.transformCount[1] > 0) {
        issues.push({ path: ["transform"], issue: `empty, but transformCount allows up to ${space.transformCount[1]} ops` });
      }
      return issues;
    },
  ),
);

export type DsaSpace = typeof DsaSpaceSchema.Type;

export interface DsaExpression {
  /** Element-wise ops, applied first to last. */
  readonly pre: readonly string[];
  readonly reduction: string;
  /** Scalar ops, applied first to last. */
  readonly transform: readonly string[];
  readonly lambda: number;
}

/** λ lives on a 1e-4 grid so that keys and history lines stay short and stable. */
const roundLambda = (lambda: number, [min, max]: readonly [number, number]): number =>
  Math.min(max, Math.max(min, Math.round(lambda * 1e4) / 1e4));

const pick = <T>(items: readonly T[], rng: Rng): T => items[rng.int(items.length)];

const randomOps = (ops: readonly string[], [min, max]: readonly [number, number], rng: Rng): string[] => {
  const count = min + rng.int(max - min + 1);
  return Array.from({ length: count }, () => pick(ops, rng));
};

/** The expression as a formula: `tanh(mean(abs(x)))`. */
export const formula = (e: DsaExpression): string => {
  let text = "x";
  for (const op of e.pre) text = `${op}(${text})`;
  text = `${e.reduction}(${text})`;
  for (const op of e.transform) text = `${op}(${text})`;
  return text;
};

const checkOps = (value: unknown, enabled: readonly string[], [min, max]: readonly [number, number], what: string): string | undefined => {
  if (!Array.isArray(value)) return `${what} is not a list`;
  if (value.length < min || value.length > max) return `${what} has ${value.length} ops, the space allows ${min} to ${max}`;
  const unknown = value.find((op) => typeof op !== "string" || !enabled.includes(op));
  return unknown === undefined ? undefined : `${what} op ${JSON.stringify(unknown)} is not enabled in the space`;
};

const expressionProblem = (json: unknown, space: DsaSpace): string | undefined => {
  if (typeof json !== "object" || json === null) return "not an object";
  const e = json as Record<string, unknown>;
  const [lambdaMin, lambdaMax] = space.lambda;
  return (
    checkOps(e.pre, space.pre, space.preCount, "pre") ??
    (typeof e.reduction === "string" && space.reductions.includes(e.reduction)
      ? undefined
      : `reduction ${JSON.stringify(e.reduction)} is not enabled in the space`) ??
    checkOps(e.transform, space.transform, space.transformCount, "transform") ??
    (typeof e.lambda === "number" && e.lambda >= lambdaMin && e.lambda <= lambdaMax
      ? undefined
      : `lambda ${JSON.stringify(e.lambda)} is outside [${lambdaMin}, ${lambdaMax}]`)
  );
};

/** Replaces the op at a random position with a different enabled one. */
const replaceOp = (ops: readonly string[], enabled: readonly string[], rng: Rng): string[] => {
  const position = rng.int(ops.length);
  const next = [...ops];
  next[position] = pick(
    enabled.filter((op) => op !== ops[position]),
    rng,
  );
  return next;
};

const insertOp = (ops: readonly string[], enabled: readonly string[], rng: Rng): string[] => {
  const next = [...ops];
  next.splice(rng.int(ops.length + 1), 0, pick(enabled, rng));
  return next;
};

const removeOp = (ops: readonly string[], rng: Rng): string[] => {
  const next = [...ops];
  next.splice(rng.int(ops.length), 1);
  return next;
};

/** The moves that can change one op stage while keeping its length within the space. */
const stageMoves = (
  ops: readonly string[],
  enabled: readonly string[],
  [min, max]: readonly [number, number],
  rng: Rng,
): (() => string[])[] => {
  const moves: (() => string[])[] = [];
  if (ops.length > 0 && enabled.length > 1) {
    moves.push(() => replaceOp(ops, enabled, rng));
  }
  if (ops.length < max && enabled.length > 0) moves.push(() => insertOp(ops, enabled, rng));
  if (ops.length > min) moves.push(() => removeOp(ops, rng));
  return moves;
};

const dsaGenome = (context: MethodContext, space: DsaSpace): Genome<DsaExpression, BlockAllocation> => {
  const bounds = effectiveBounds(context.bounds, space.bounds, context.target);
  const reductionIndex = new Map(space.reductions.map((name, i) => [name, i]));
  // Per pre chain: every enabled reduction of every block, from one pass of the chain.
  // Identity ops do not change the values, so chains differing only by them share it.
  const reducedByChain = new Map<string, number[][]>();
  let scratch = new Float64Array(0);

  const reducedBlocks = (pre: readonly string[]): number[][] => {
    const chain = pre.filter((op) => op !== "identity");
    const key = chain.join(",");
    const cached = reducedByChain.get(key);
    if (cached !== undefined) return cached;
    const rows: number[][] = [];
    for (let block = 0; block < context.blocks; block++) {
      const scores = context.statistics.elementScores(block);
      if (scratch.length < scores.length) scratch = new Float64Array(scores.length);
      scratch.set(scores);
      for (const op of chain) preOps[op](scratch, scores.length);
      rows.push(reduceAll(scratch, scores.length, space.reductions));
    }
    reducedByChain.set(key, rows);
    return rows;
  };

  /** I_l of every block; may hold NaN or ±Inf. */
  const blockScores = (e: DsaExpression): number[] => {
    const column = reductionIndex.get(e.reduction)!;
    return reducedBlocks(e.pre).map((row) => {
      let value = row[column];
      for (const op of e.transform) value = transformOps[op](value);
      return value;
    });
  };

  const make = (pre: readonly string[], reduction: string, transform: readonly string[], lambda: number): DsaExpression => ({
    pre: [...pre],
    reduction,
    transform: [...transform],
    lambda,
  });

  return {
    create: (rng) =>
      make(
        randomOps(space.pre, space.preCount, rng),
        pick(space.reductions, rng),
        randomOps(space.transform, space.transformCount, rng),
        roundLambda(space.lambda[0] + rng.next() * (space.lambda[1] - space.lambda[0]), space.lambda),
      ),

    mutate: (e, rng) => {
      const moves: (() => DsaExpression)[] = [
        ...stageMoves(e.pre, space.pre, space.preCount, rng).map((move) => () => make(move(), e.reduction, e.transform, e.lambda)),
        ...stageMoves(e.transform, space.transform, space.transformCount, rng).map(
          (move) => () => make(e.pre, e.reduction, move(), e.lambda),
        ),
      ];
      if (space.reductions.length > 1) {
        moves.push(() => make(e.pre, pick(space.reductions.filter((r) => r !== e.reduction), rng), e.transform, e.lambda));
      }
      const [lambdaMin, lambdaMax] = space.lambda;
      if (lambdaMax > lambdaMin) {
        // A tenth of the range per step; reflecting at the ends keeps the density even.
        moves.push(() => {
          let lambda = e.lambda + 0.1 * (lambdaMax - lambdaMin) * rng.normal();
          if (lambda > lambdaMax) lambda = 2 * lambdaMax - lambda;
          if (lambda < lambdaMin) lambda = 2 * lambdaMin - lambda;
          return make(e.pre, e.reduction, e.transform, roundLambda(lambda, space.lambda));
        });
      }
      return moves.length === 0 ? e : pick(moves, rng)();
    },

    // Whole stages come from one parent or the other; a mask of 1..14 over the four
    // stages (pre, reduction, transform, λ) makes every child take something from both.
    crossover: (a, b, rng) => {
      const mask = 1 + rng.int(14);
      const from = (bit: number): DsaExpression => ((mask >> bit) & 1 ? b : a);
      return make(from(0).pre, from(1).reduction, from(2).transform, from(3).lambda);
    },

    key: (e) => `${e.pre.join(",")}|${e.reduction}|${e.transform.join(",")}|${e.lambda}`,

    decode: (e) => {
      const scores = minmax(clampNonFinite(blockScores(e), 0));
      let mean = 0;
      for (const v of scores) mean += v / scores.length;
      // All-equal scores give Î = 0 everywhere, so s = S: the uniform allocation.
      const raw = scores.map((v) => context.target + 2 * e.lambda * (v - mean));
      return projectToTarget(raw, context.blockParams, context.target, bounds);
    },

    describe: (e) => `${formula(e)} λ=${e.lambda}`,

    encode: (e) => ({ pre: [...e.pre], reduction: e.reduction, transform: [...e.transform], lambda: e.lambda }),

    restore: (json) => {
      const problem = expressionProblem(json, space);
      if (problem !== undefined) throw new RangeError(`invalid DSA genome ${JSON.stringify(json)}: ${problem}`);
      const e = json as DsaExpression;
      return make(e.pre, e.reduction, e.transform, e.lambda);
    },
  };
};

export const plugin: MethodPlugin<DsaSpace> = {
  name: "dsa",
  describe: "DSA: evolved allocation functions pre ops -> reduction -> transform ops over each block's element scores",
  spaceSchema: DsaSpaceSchema,
  defaultSpace: "dsa.json",
  patterns: ["unstructured"],
  needs: ["scores"],
  method: { kind: "evolve", genome: dsaGenome },
};
