/**
 * The pattern of a pruning run, and the per-block sparsities that allocation methods
 * return, expanded to the per-linear allocation everything downstream works on.
 */
import { perBlock, perBlockNM, type Allocation, type Layout } from "./allocation.ts";
import { nmFromSparsities } from "./nm.ts";

/** Unstructured pruning at a sparsity, or an N:M pattern (N zeros in every M inputs). */
export type Pattern = { readonly kind: "unstructured" } | { readonly kind: "nm"; readonly n: number; readonly m: number };

/** Per-block sparsities; for N:M methods every entry is n_l / m exactly. */
export type BlockAllocation = readonly number[];

/** `unstructured` or `N:M`, as the command line writes it. */
export const patternText = (p: Pattern): string => (p.kind === "nm" ? `${p.n}:${p.m}` : "unstructured");

/** The target global sparsity of a run: S, or N/M for an N:M pattern. */
export const targetOf = (pattern: Pattern, sparsity: number | undefined): number =>
  pattern.kind === "nm" ? pattern.n / pattern.m : sparsity!;

/** Every linear of a block at the block's sparsity; under N:M, whole n per block with the mean N kept. */
export const toAllocation = (sparsities: BlockAllocation, layout: Layout, pattern: Pattern): Allocation =>
  pattern.kind === "nm" ? perBlockNM(nmFromSparsities(sparsities, pattern.m, pattern.n), pattern.m, layout) : perBlock(sparsities, layout);
