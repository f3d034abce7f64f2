/**
 * Allocation files: one CSV row per block and prunable linear, so a user can read, edit
 * or hand-write an allocation and have it checked against the model before pruning.
 */
import { readBoundedUtf8 } from "../reads.ts";
import { parse } from "csv-parse/sync";
import { stringify } from "csv-stringify/sync";
import { DataError } from "../errors.ts";
import { writeFileAtomically } from "../files.ts";
import { globalSparsity } from "./allocation.ts";
import type { Allocation, AllocationEntry, Layout } from "./allocation.ts";
import type { Bounds } from "./project.ts";

export const allocationColumns = ["block", "linear", "params", "sparsity", "n", "m"] as const;

/** docs/methods.md: a valid allocation meets its target within 1e-6 before rounding to whole weights. */
export const targetTolerance = 1e-6;

export interface ReadOptions {
  /** Required global sparsity; checked only when given. */
  readonly target?: number;
  /** Per-entry bounds; when absent only [0, 1) is enforced. */
  readonly bounds?: Bounds;
}

/** Numbers are written with JavaScript's shortest round-trip form, so reading gives back the same doubles. */
export const formatAllocationCsv = (allocation: Allocation): string =>
  stringify(
    allocation.map((e) => [e.block, e.linear, e.params, e.sparsity, e.n ?? "", e.m ?? ""]),
    { header: true, columns: [...allocationColumns] },
  );

/** Writes through a temporary file and a rename, so a reader never sees half a file. */
export const writeAllocationCsv = (file: string, allocation: Allocation): void => writeFileAtomically(file, formatAllocationCsv(allocation));

export const readAllocationCsv = (file: string, layout: Layout, options: ReadOptions = {}): Allocation => {
  return parseAllocationCsv(readBoundedUtf8(file, "allocation"), file, layout, options);
};

interface CsvRow {
  readonly record: string[];
  readonly info: { readonly lines: number };
}

const unsignedInteger = /^[0-9]+$/;
const decimal = /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/;

const keyOf = (block: number, linear: string): string => `${block}\u0000${linear}`;

/**
 * Parses and validates an allocation file against the model's layout. Returns the entries
 * in layout order whatever the row order in the file. Every problem is a DataError naming
 * the file and, for a row, its line.
 */
export const parseAllocationCsv = (
  text: string,
  file: string,
  layout: Layout,
  options: ReadOptions = {},
): Allocation => {
  // Annotated so that the compiler narrows after a call, as it does after a throw.
  const fail: (problem: string) => never = (problem) => {
    throw new DataError({ file, problem });
  };
  let rows: CsvRow[];
  try {
    rows = parse(text, {
      bom: true,
      info: true,
      relax_column_count: true,
      skip_empty_lines: true,
      trim: true,
    }) as unknown as CsvRow[];
  } catch (cause) {
    fail(`cannot be parsed as CSV: ${(cause as Error).message}`);
  }
  const expectedHeader = allocationColumns.join(",");
  if (rows.length === 0) fail(`is empty; expected the header "${expectedHeader}"`);
  const header = rows[0].record.join(",");
  if (header !== expectedHeader) {
    fail(`line ${rows[0].info.lines}: header is "${header}"; expected "${expectedHeader}"`);
  }

  const indexOf = new Map<string, number>();
  const linearsOf = new Map<number, string[]>();
  layout.forEach((entry, index) => {
    indexOf.set(keyOf(entry.block, entry.linear), index);
    linearsOf.set(entry.block, [...(linearsOf.get(entry.block) ?? []), entry.linear]);
  });
  const blockCount = linearsOf.size;

  const entries: (AllocationEntry | undefined)[] = new Array(layout.length).fill(undefined);
  const lineOf: number[] = new Array(layout.length).fill(0);
  for (const { record, info } of rows.slice(1)) {
    const at = `line ${info.lines}`;
    if (record.length !== allocationColumns.length) {
      fail(`${at}: has ${record.length} fields; expected ${allocationColumns.length} (${expectedHeader})`);
    }
    const [blockText, linear, paramsText, sparsityText, nText, mText] = record;
    if (!unsignedInteger.test(blockText) || !Number.isSafeInteger(Number(blockText))) {
      fail(`${at}: block "${blockText}" is not a non-negative integer`);
    }
    const block = Number(blockText);
    const linears = linearsOf.get(block);
    if (linears === undefined) {
      fail(`${at}: block ${block} does not exist (the model has blocks 0..${blockCount - 1})`);
    }
    const index = indexOf.get(keyOf(block, linear));
    if (index === undefined) {
      fail(`${at}: block ${block} has no prunable linear "${linear}" (it has ${linears.join(", ")})`);
    }
    if (lineOf[index] !== 0) {
      fail(`${at}: block ${block} linear ${linear} already appeared on line ${lineOf[index]}`);
    }
    const expectedParams = layout[index].params;
    if (!unsignedInteger.test(paramsText) || Number(paramsText) !== expectedParams) {
      fail(`${at}: params "${paramsText}" for block ${block} linear ${linear}; the model has ${expectedParams}`);
    }
    if (!decimal.test(sparsityText)) fail(`${at}: sparsity "${sparsityText}" is not a number`);
    let sparsity = Number(sparsityText);
    if (!(sparsity >= 0 && sparsity < 1)) fail(`${at}: sparsity ${sparsity} is outside [0, 1)`);
    const bounds = options.bounds;
    if (bounds !== undefined && (sparsity < bounds.lo || sparsity > bounds.hi)) {
      fail(`${at}: sparsity ${sparsity} is outside the bounds [${bounds.lo}, ${bounds.hi}]`);
    }
    let pattern: { n: number; m: number } | undefined;
    if (nText !== "" || mText !== "") {
      const n = Number(nText);
      const m = Number(mText);
      const integers =
        unsignedInteger.test(nText) && unsignedInteger.test(mText) && Number.isSafeInteger(n) && Number.isSafeInteger(m);
      if (!integers || n >= m) {
        fail(`${at}: n "${nText}" and m "${mText}" must both be empty (unstructured) or integers with 0 <= n < m`);
      }
      if (Math.abs(sparsity - n / m) > targetTolerance) {
        fail(`${at}: sparsity ${sparsity} does not match the ${n}:${m} pattern (n/m = ${n / m})`);
      }
      // The pattern decides what gets pruned; the written ratio is only a rounded echo of it.
      sparsity = n / m;
      pattern = { n, m };
    }
    entries[index] = { block, linear, params: expectedParams, sparsity, ...pattern };
    lineOf[index] = info.lines;
  }

  const missing = layout.filter((_, index) => entries[index] === undefined);
  if (missing.length > 0) {
    const shown = missing.slice(0, 5).map((e) => `block ${e.block} linear ${e.linear}`);
    const more = missing.length > shown.length ? `, and ${missing.length - shown.length} more` : "";
    fail(`misses ${missing.length} of the model's ${layout.length} rows: ${shown.join(", ")}${more}`);
  }
  const allocation = entries as AllocationEntry[];
  if (options.target !== undefined) {
    const reached = globalSparsity(allocation);
    if (!(Math.abs(reached - options.target) <= targetTolerance)) {
      fail(
        `global sparsity (parameter-weighted mean) is ${reached}, not the target ${options.target} ` +
          `(tolerance ${targetTolerance})`,
      );
    }
  }
  return allocation;
};
