/**
 * Schema pieces that several search-space files share: sparsity bounds, closed ranges,
 * and how a space's own bounds combine with the run's. Each check reports the field it
 * is about, so a broken file is explained by one line naming the file and the field.
 */
import { Schema } from "effect";
import { UsageError } from "../errors.ts";
import type { Bounds } from "./project.ts";

/**
 * Sparsity bounds of one block, inside [0, 1): a block may stay dense, never be emptied
 * (an empty linear would cut the residual stream's contribution of the block entirely).
 */
export const BoundsSchema = Schema.Struct({ lo: Schema.Finite, hi: Schema.Finite }).check(
  Schema.makeFilter(({ lo, hi }: { readonly lo: number; readonly hi: number }) => {
    const issues: Schema.FilterIssue[] = [];
    if (!(lo >= 0 && lo < 1)) issues.push({ path: ["lo"], issue: `${lo} is outside [0, 1)` });
    if (!(hi >= 0 && hi < 1)) issues.push({ path: ["hi"], issue: `${hi} is outside [0, 1)` });
    if (issues.length === 0 && lo > hi) issues.push(`lo ${lo} > hi ${hi}`);
    return issues;
  }),
);

const inside = (v: number, min: number, max: number): boolean => v >= min && v <= max;

/** A `[min, max]` pair of finite numbers with `floor <= min <= max <= ceiling`. */
export const RangeSchema = (floor: number, ceiling: number) =>
  Schema.Tuple([Schema.Finite, Schema.Finite]).check(
    Schema.makeFilter(([min, max]: readonly [number, number]) => {
      if (!inside(min, floor, ceiling) || !inside(max, floor, ceiling)) {
        return `[${min}, ${max}] leaves [${floor}, ${ceiling}]`;
      }
      return min <= max || `min ${min} > max ${max}`;
    }),
  );

/** A `[min, max]` pair of whole numbers with `floor <= min <= max <= ceiling`. */
export const IntRangeSchema = (floor: number, ceiling: number) =>
  Schema.Tuple([Schema.Int, Schema.Int]).check(
    Schema.makeFilter(([min, max]: readonly [number, number]) => {
      if (!inside(min, floor, ceiling) || !inside(max, floor, ceiling)) {
        return `[${min}, ${max}] leaves ${floor}..${ceiling}`;
      }
      return min <= max || `min ${min} > max ${max}`;
    }),
  );

/** A finite number in [min, max]. */
export const BetweenSchema = (min: number, max: number) =>
  Schema.Finite.check(Schema.makeFilter((v: number) => inside(v, min, max) || `${v} is outside [${min}, ${max}]`));

/**
 * The bounds a method works in: the run's bounds, narrowed by the space's own when it
 * gives some, so both the command line and the space file are honoured.
 */
export const effectiveBounds = (run: Bounds, space: Bounds | undefined, target: number): Bounds => {
  const bounds = space === undefined ? run : { lo: Math.max(run.lo, space.lo), hi: Math.min(run.hi, space.hi) };
  if (!(bounds.lo <= target && target <= bounds.hi)) {
    const spaceText = space === undefined ? "" : ` narrowed by the space's [${space.lo}, ${space.hi}]`;
    throw new UsageError({
      problem: `target sparsity ${target} is outside the bounds [${run.lo}, ${run.hi}]${spaceText}`,
    });
  }
  return bounds;
};
