/**
 * The pattern of a pruning run, and the per-block sparsities that allocation methods
 * return, expanded to the per-linear allocation everything downstream works on.
 */
import { Schema } from "effect";
import { UsageError } from "../errors.ts";
import { blockCount, perBlock, perBlockNM, perLinear, type Allocation, type Layout } from "./allocation.ts";
import { nmFromSparsities } from "./nm.ts";

/** Unstructured pruning at a sparsity, or an N:M pattern (N zeros in every M inputs). */
export type Pattern = { readonly kind: "unstructured" } | { readonly kind: "nm"; readonly n: number; readonly m: number };

/** A pattern as saved in settings files and sent to queue workers. */
export const PatternSchema = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("unstructured") }),
  Schema.Struct({ kind: Schema.Literal("nm"), n: Schema.Int, m: Schema.Int }),
]);

/**
 * The sparsities a method chooses: one per block (length = blocks; for N:M methods every
 * entry is n_l / m exactly), or one per prunable linear (length = the layout's, in layout
 * order: block-major, then the spec's linear order) for methods that work per linear.
 */
export type BlockAllocation = readonly number[];

/** `unstructured` or `N:M`, as the command line writes it. */
export const patternText = (p: Pattern): string => (p.kind === "nm" ? `${p.n}:${p.m}` : "unstructured");

/** The target global sparsity of a run: S, or N/M for an N:M pattern. */
export const targetOf = (pattern: Pattern, sparsity: number | undefined): number =>
  pattern.kind === "nm" ? pattern.n / pattern.m : sparsity!;

/** A per-block choice holds one sparsity per block; a per-linear one, one per prunable linear. */
export const isPerLinear = (sparsities: BlockAllocation, layout: Layout): boolean => sparsities.length === layout.length && layout.length !== blockCount(layout);

/**
 * The allocation of a method's choice. Per block: every linear of a block at the block's
 * sparsity, and under N:M whole n per block with the mean N kept. Per linear: each linear
 * at its own sparsity (unstructured only; N:M allocations are chosen per block).
 */
export const toAllocation = (sparsities: BlockAllocation, layout: Layout, pattern: Pattern): Allocation => {
  if (isPerLinear(sparsities, layout)) {
    if (pattern.kind === "nm") throw new RangeError("an N:M allocation is chosen per block, not per linear");
    return perLinear(sparsities, layout);
  }
  return pattern.kind === "nm" ? perBlockNM(nmFromSparsities(sparsities, pattern.m, pattern.n), pattern.m, layout) : perBlock(sparsities, layout);
};

/** `unstructured` or `N:M` with 1 <= N < M (N = 0 would prune nothing). */
export const parsePattern = (text: string): Pattern => {
  if (text === "unstructured") return { kind: "unstructured" };
  const match = /^(\d+):(\d+)$/.exec(text);
  const n = match ? Number(match[1]) : NaN;
  const m = match ? Number(match[2]) : NaN;
  if (!match || !(m >= 2) || !(n >= 1 && n < m) || !Number.isSafeInteger(m)) {
    throw new UsageError({ problem: `--pattern ${text} is neither "unstructured" nor N:M with 1 <= N < M (e.g. 2:4)` });
  }
  return { kind: "nm", n, m };
};

/** A pattern as the command line writes it ("2:4", "unstructured") or already parsed. */
export const patternOf = (pattern: string | Pattern): Pattern => (typeof pattern === "string" ? parsePattern(pattern) : pattern);
