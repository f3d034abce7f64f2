/**
 * MSP's N:M variant: the gene of block l is N_l, the number of zeros in every group of M
 * consecutive inputs (M of the run's N:M pattern, or the space's m), so block l's
 * sparsity is exactly N_l / M.
 * The mean of N_l / M must equal the target; mutation is a paired +1 / -1 between two
 * blocks, which keeps the sum of N fixed.
 *
 * The project's choice for blocks of unequal size: refused. With whole N's, a weighted
 * mean can hit the target only for special weight ratios, and a repair that trades N
 * between blocks of different sizes would have to solve a subset-sum problem; every
 * decoder family the project loads has identically shaped blocks anyway.
 */
import { Schema } from "effect";
import { fisherSeed, normaliseTraces } from "../../src/allocation/normalise.ts";
import { projectToTarget } from "../../src/allocation/project.ts";
import { BetweenSchema, IntRangeSchema } from "../../src/allocation/space-schema.ts";
import type { Genome } from "../../src/engine/genome.ts";
import type { Rng } from "../../src/rng.ts";
import type { BlockAllocation, MethodContext, MethodPlugin } from "../../src/search/plugin.ts";
import { UsageError } from "../../src/errors.ts";

/** Largest group size a space may ask for; real kernels use M = 4 or 8. */
const maxGroup = 64;

export const MspNmSpaceSchema = Schema.Struct({
  m: Schema.Int.check(Schema.makeFilter((m: number) => (m >= 2 && m <= maxGroup) || `${m} is outside 2..${maxGroup}`)),
  /** Smallest and largest N a block may take. */
  n: IntRangeSchema(0, maxGroup),
  lambdas: Schema.Array(BetweenSchema(0, 1)).check(
    Schema.makeFilter((values: readonly number[]) => values.length > 0 || "empty: list at least one λ"),
  ),
  jitter: BetweenSchema(0, 0.5),
  normalisation: Schema.Literals(["log", "minmax"]),
}).check(
  Schema.makeFilter(({ m, n }: { readonly m: number; readonly n: readonly [number, number] }) =>
    // N = M would zero a whole block: sparsity 1 is outside the [0, 1) of every bound.
    n[1] < m || { path: ["n"], issue: `max ${n[1]} must be below m = ${m}` },
  ),
);

export type MspNmSpace = typeof MspNmSpaceSchema.Type;

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

const mspNmGenome = (context: MethodContext, space: MspNmSpace): Genome<readonly number[], BlockAllocation> => {
  const { blocks, target, bounds } = context;
  // The run's pattern fixes M (its kernels need it); the space's m serves unstructured runs.
  const m = context.pattern.kind === "nm" ? context.pattern.m : space.m;
  if (context.blockParams.some((w) => w !== context.blockParams[0])) {
    throw new UsageError({ problem: "msp-nm needs blocks of equal size: whole N's cannot reach a weighted target in general" });
  }
  // The space's N range, narrowed by the run's sparsity bounds.
  const nLo = Math.max(space.n[0], Math.ceil(bounds.lo * m - 1e-9));
  const nHi = Math.min(space.n[1], Math.floor(bounds.hi * m + 1e-9));
  const exactTotal = target * m * blocks;
  const total = Math.round(exactTotal);
  if (Math.abs(exactTotal - total) > 1e-9 * m * blocks) {
    throw new UsageError({
      problem: `msp-nm cannot reach sparsity ${target} with whole N out of M = ${m} over ${blocks} blocks: the mean of N/M moves in steps of 1/${m * blocks}`,
    });
  }
  if (nLo > nHi || total < nLo * blocks || total > nHi * blocks) {
    throw new UsageError({
      problem: `msp-nm cannot reach sparsity ${target} with N in ${nLo}..${nHi} out of M = ${m} (space n = [${space.n[0]}, ${space.n[1]}], bounds [${bounds.lo}, ${bounds.hi}])`,
    });
  }

  let sensitivity: number[] | undefined;
  const normalised = (): number[] =>
    (sensitivity ??= normaliseTraces(context.statistics.fisherTraces(), space.normalisation));

  /**
   * Whole N's near the continuous `wanted` (in units of N) with sum(N) = total: round,
   * then move the blocks that rounding treated worst, one unit at a time (ties to the
   * lowest index, so seeding is deterministic).
   */
  const roundToTotal = (wanted: readonly number[]): number[] => {
    const ns = wanted.map((x) => Math.min(nHi, Math.max(nLo, Math.round(x))));
    for (let missing = total - sum(ns); missing !== 0; missing = total - sum(ns)) {
      const step = missing > 0 ? 1 : -1;
      let best = -1;
      for (let l = 0; l < blocks; l++) {
        const movable = step > 0 ? ns[l] < nHi : ns[l] > nLo;
        if (movable && (best < 0 || step * (wanted[l] - ns[l]) > step * (wanted[best] - ns[best]))) best = l;
      }
      ns[best] += step;
    }
    return ns;
  };

  /** Repairs the sum after crossover by ±1 on random blocks that still have room. */
  const repairRandomly = (ns: number[], rng: Rng): number[] => {
    for (let missing = total - sum(ns); missing !== 0; missing = total - sum(ns)) {
      const step = missing > 0 ? 1 : -1;
      const movable = ns.flatMap((n, l) => ((step > 0 ? n < nHi : n > nLo) ? [l] : []));
      ns[movable[rng.int(movable.length)]] += step;
    }
    return ns;
  };

  return {
    create: (rng, index) => {
      // Fisher seeding as in msp (more sensitive block, smaller N), on the N grid.
      const seed = fisherSeed(normalised(), target, space.lambdas[index % space.lambdas.length]);
      const noisy = index < space.lambdas.length ? seed : seed.map((v) => v + space.jitter * rng.normal());
      const projected = projectToTarget(noisy, context.blockParams, target, { lo: nLo / m, hi: nHi / m });
      return roundToTotal(projected.map((v) => v * m));
    },

    mutate: (ns, rng) => {
      const up = ns.flatMap((n, l) => (n < nHi ? [l] : []));
      if (up.length === 0) return [...ns];
      const i = up[rng.int(up.length)];
      const down = ns.flatMap((n, l) => (n > nLo && l !== i ? [l] : []));
      if (down.length === 0) {
        // Only block i can give: raise another block instead, if any can rise.
        const others = up.filter((l) => l !== i);
        if (others.length === 0 || !(ns[i] > nLo)) return [...ns];
        const next = [...ns];
        next[others[rng.int(others.length)]] += 1;
        next[i] -= 1;
        return next;
      }
      const next = [...ns];
      next[i] += 1;
      next[down[rng.int(down.length)]] -= 1;
      return next;
    },

    crossover: (a, b, rng) => repairRandomly(a.map((n, l) => (rng.next() < 0.5 ? n : b[l])), rng),

    key: (ns) => ns.join(","),
    decode: (ns) => ns.map((n) => n / m),
    describe: (ns) => `N:${m} = [${ns.join(" ")}]`,
    encode: (ns) => [...ns],
    restore: (json) => {
      if (!Array.isArray(json) || json.length !== blocks) {
        throw new RangeError(`invalid msp-nm genome: expected a list of ${blocks} whole N's`);
      }
      for (const n of json) {
        if (!Number.isInteger(n) || n < nLo || n > nHi) {
          throw new RangeError(`invalid msp-nm genome: ${JSON.stringify(n)} is not a whole N in ${nLo}..${nHi}`);
        }
      }
      if (sum(json as number[]) !== total) {
        throw new RangeError(`invalid msp-nm genome: the N's sum to ${sum(json as number[])}, the target needs ${total}`);
      }
      return [...(json as number[])];
    },
  };
};

export const plugin: MethodPlugin<MspNmSpace> = {
  name: "msp-nm",
  describe: "MSP N:M: evolved per-block N for a fixed M, seeded from Fisher sensitivity",
  spaceSchema: MspNmSpaceSchema,
  defaultSpace: "msp-nm.json",
  patterns: ["nm"],
  needs: ["fisher"],
  method: { kind: "evolve", genome: mspNmGenome },
};
