/**
 * What a search leaves in its folder besides the best allocation: the history as CSV, the
 * summary as JSON, and two SVG plots. Every file is written atomically.
 */
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import type { GenerationRecord, HistoryRecord } from "../engine/state.ts";
import { writeFileAtomically } from "../files.ts";
import { lineChart } from "../report/svg.ts";

const HISTORY_COLUMNS = ["generation", "index", "evaluation", "genome", "fitness", "error", "cached", "stage", "tokens", "seconds"];

/**
 * One row per individual and stage; `evaluation` counts real (uncached) evaluations, blank
 * for cached ones; `stage` is the stage of staged selection (0 for one-stage strategies),
 * `tokens` the fitness tokens the evaluation spent (0 when cached).
 */
export const historyCsv = (history: readonly HistoryRecord[]): string => {
  let evaluations = 0;
  return stringify(
    history.map((r) => [r.generation, r.index, r.cached ? "" : ++evaluations, r.genome, r.fitness ?? "", r.error ?? "", r.cached ? "true" : "false", r.stage ?? 0, r.tokens, r.seconds]),
    { header: true, columns: HISTORY_COLUMNS },
  );
};

/** Best-so-far and median fitness of every generation, from the history alone. */
export const generationCurve = (history: readonly HistoryRecord[]): Array<Pick<GenerationRecord, "generation" | "best" | "median">> => {
  const byGeneration = new Map<number, number[]>();
  for (const r of history) {
    const values = byGeneration.get(r.generation) ?? [];
    if (r.fitness !== null) values.push(r.fitness);
    byGeneration.set(r.generation, values);
  }
  let best: number | undefined;
  return [...byGeneration.entries()]
    .sort(([a], [b]) => a - b)
    .map(([generation, values]) => {
      const sorted = [...values].sort((a, b) => a - b);
      for (const v of sorted.slice(0, 1)) best = best === undefined ? v : Math.min(best, v);
      const mid = sorted.length >> 1;
      const median = sorted.length === 0 ? undefined : sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
      return { generation, best, median };
    });
};

/**
 * Best-so-far and median fitness per generation. Generations are numbered from 1 here, as in
 * the search's progress line ("generations: 3/6"): generation record g is plotted at x = g + 1.
 * history.csv keeps the engine's own 0-based `generation` column.
 */
export const fitnessChart = (history: readonly HistoryRecord[], title: string, options: { yLabel?: string; references?: ReadonlyArray<{ label: string; y: number }> } = {}): string => {
  const curve = generationCurve(history);
  const series = (pick: (c: (typeof curve)[number]) => number | undefined) =>
    curve.flatMap((c) => {
      const v = pick(c);
      return v === undefined ? [] : [[c.generation + 1, v] as const];
    });
  return lineChart(
    [
      { label: "best so far", points: series((c) => c.best), color: "#1f77b4" },
      { label: "generation median", points: series((c) => c.median), color: "#ff7f0e" },
    ],
    { title, xLabel: "generation", yLabel: options.yLabel ?? "validation perplexity", logY: true, integerX: true, ...(options.references ? { references: options.references } : {}) },
  );
};

/** Sparsity per block (blocks numbered from 0, as in the allocation CSVs), one series per method. */
export const allocationChart = (allocations: ReadonlyArray<{ label: string; sparsities: readonly number[] }>, title: string, target?: number): string => {
  const colors = ["#d62728", "#7f7f7f", "#2ca02c", "#9467bd"];
  return lineChart(
    allocations.map((a, k) => ({ label: a.label, points: a.sparsities.map((s, b) => [b, s] as const), color: colors[k % colors.length]! })),
    { title, xLabel: "block", yLabel: "sparsity", integerX: true, ...(target !== undefined ? { references: [{ label: `target ${target}`, y: target }] } : {}) },
  );
};

export const writeSearchFiles = (
  dir: string,
  files: { history: readonly HistoryRecord[]; summary: unknown; fitnessSvg: string; allocationSvg: string },
): void => {
  writeFileAtomically(join(dir, "history.csv"), historyCsv(files.history));
  writeFileAtomically(join(dir, "fitness.svg"), files.fitnessSvg);
  writeFileAtomically(join(dir, "allocation.svg"), files.allocationSvg);
  // Last: a summary.json means the run finished and every other file is in place.
  writeFileAtomically(join(dir, "summary.json"), JSON.stringify(files.summary, null, 2) + "\n");
};
