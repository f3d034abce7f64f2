import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import type { Allocation, AllocationEntry, Layout } from "../src/allocation/allocation.ts";
import {
  allocationColumns,
  formatAllocationCsv,
  parseAllocationCsv,
  readAllocationCsv,
  writeAllocationCsv,
} from "../src/allocation/csv.ts";
import { DataError } from "../src/errors.ts";

const runs = { numRuns: 150 };
const directory = mkdtempSync(join(tmpdir(), "allocation-csv-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

/** Two blocks of three linears with distinct sizes, so params mismatches are visible. */
const layout: Layout = [0, 1].flatMap((block) => [
  { block, linear: "q", params: 64 },
  { block, linear: "up", params: 96 },
  { block, linear: "down", params: 96 },
]);

const header = allocationColumns.join(",");
const rowsOf = (sparsities: number[]): string[] =>
  layout.map((e, i) => `${e.block},${e.linear},${e.params},${sparsities[i]},,`);
const csvOf = (rows: string[]): string => [header, ...rows].join("\n") + "\n";
const valid = rowsOf([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);

/** The DataError thrown by parsing `text`, or a failure if it parses. */
const errorOf = (text: string, target?: number): DataError => {
  try {
    parseAllocationCsv(text, "alloc.csv", layout, { target });
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error("expected a DataError");
};

describe("allocation CSV", () => {
  const layouts = fc
    .array(fc.array(fc.integer({ min: 1, max: 1_000_000 }), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 5 })
    .map((blocks): Layout => blocks.flatMap((params, block) => params.map((p, i) => ({ block, linear: `blk.${i},"x"`, params: p }))));
  const entryFor = (e: Layout[number]): fc.Arbitrary<AllocationEntry> =>
    fc.oneof(
      fc.double({ min: 0, max: 0.99, noNaN: true, noDefaultInfinity: true }).map((s) => ({ ...e, sparsity: s === 0 ? 0 : s })),
      fc
        .integer({ min: 1, max: 16 })
        .chain((m) => fc.tuple(fc.integer({ min: 0, max: m - 1 }), fc.constant(m)))
        .map(([n, m]) => ({ ...e, sparsity: n / m, n, m })),
    );

  it("reads back exactly what it wrote, in layout order", () => {
    fc.assert(
      fc.property(
        layouts.chain((l) => fc.tuple(fc.constant(l), fc.tuple(...l.map(entryFor)))),
        fc.integer({ min: 0, max: 1000 }),
        ([model, entries], seed) => {
          const file = join(directory, `roundtrip-${seed}.csv`);
          writeAllocationCsv(file, entries);
          expect(readAllocationCsv(file, model)).toEqual(entries);
          // Row order in the file does not matter (names hold commas and quotes, not newlines).
          const [head, ...rows] = readFileSync(file, "utf8").trimEnd().split("\n");
          expect(parseAllocationCsv([head, ...rows.reverse()].join("\n"), file, model)).toEqual(entries);
        },
      ),
      runs,
    );
  });

  it("writes the documented columns, with n and m empty for unstructured rows", () => {
    const text = formatAllocationCsv([
      { block: 0, linear: "q", params: 64, sparsity: 0.25 },
      { block: 0, linear: "up", params: 96, sparsity: 0.5, n: 2, m: 4 },
    ]);
    expect(text).toBe("block,linear,params,sparsity,n,m\n0,q,64,0.25,,\n0,up,96,0.5,2,4\n");
  });

  it("replaces files whole and leaves no temporary file behind", () => {
    const file = join(directory, "atomic.csv");
    const first: Allocation = layout.map((e) => ({ ...e, sparsity: 0.5 }));
    const second: Allocation = layout.map((e) => ({ ...e, sparsity: e.block === 0 ? 0.4 : 0.6 }));
    writeAllocationCsv(file, first);
    writeAllocationCsv(file, second);
    expect(readAllocationCsv(file, layout, { target: 0.5 })).toEqual(second);
    expect(readdirSync(directory).filter((name) => name.includes("atomic"))).toEqual(["atomic.csv"]);
    expect(() => writeAllocationCsv(join(directory, "no-such-dir", "x.csv"), first)).toThrow(DataError);
  });

  it("accepts a valid file and checks the target only when given", () => {
    const skewed = csvOf(rowsOf([0.4, 0.4, 0.4, 0.6, 0.6, 0.6]));
    expect(parseAllocationCsv(skewed, "alloc.csv", layout, { target: 0.5 })).toHaveLength(6);
    const off = csvOf(rowsOf([0.4, 0.4, 0.4, 0.4, 0.4, 0.4]));
    expect(parseAllocationCsv(off, "alloc.csv", layout)).toHaveLength(6);
    expect(errorOf(off, 0.5).message).toMatch(/alloc\.csv: global sparsity .* is 0\.4.*, not the target 0\.5/);
    // Within the 1e-6 tolerance is fine.
    expect(parseAllocationCsv(csvOf(rowsOf([0.5000004, 0.5, 0.5, 0.5, 0.5, 0.5])), "a", layout, { target: 0.5 })).toHaveLength(6);
  });

  it("names the file, the line and the problem", () => {
    const cases: [string, RegExp][] = [
      ["", /alloc\.csv: is empty; expected the header "block,linear,params,sparsity,n,m"/],
      [csvOf(valid).replace("sparsity", "ratio"), /line 1: header is "block,linear,params,ratio,n,m"/],
      [csvOf([...valid.slice(0, 5), "2,q,64,0.5,,"]), /line 7: block 2 does not exist \(the model has blocks 0\.\.1\)/],
      [csvOf([...valid.slice(0, 5), "1,k,64,0.5,,"]), /line 7: block 1 has no prunable linear "k" \(it has q, up, down\)/],
      [csvOf([...valid.slice(0, 5), "x,q,64,0.5,,"]), /line 7: block "x" is not a non-negative integer/],
      [csvOf([valid[0].replace(",64,", ",65,"), ...valid.slice(1)]), /line 2: params "65" for block 0 linear q; the model has 64/],
      [csvOf([valid[0].replace("0.5", "half"), ...valid.slice(1)]), /line 2: sparsity "half" is not a number/],
      [csvOf([valid[0].replace("0.5", ""), ...valid.slice(1)]), /line 2: sparsity "" is not a number/],
      [csvOf([valid[0].replace("0.5", "1"), ...valid.slice(1)]), /line 2: sparsity 1 is outside \[0, 1\)/],
      [csvOf([valid[0].replace("0.5", "-0.1"), ...valid.slice(1)]), /line 2: sparsity -0\.1 is outside \[0, 1\)/],
      [csvOf([...valid, valid[2]]), /line 8: block 0 linear down already appeared on line 4/],
      [csvOf(valid.slice(0, 4)), /misses 2 of the model's 6 rows: block 1 linear up, block 1 linear down/],
      [csvOf([valid[0].replace(",,", ",2,"), ...valid.slice(1)]), /line 2: n "2" and m "" must both be empty/],
      [csvOf([valid[0].replace(",,", ",4,4"), ...valid.slice(1)]), /line 2: n "4" and m "4" must both be empty .* 0 <= n < m/],
      [csvOf([valid[0].replace(",,", ",1.5,4"), ...valid.slice(1)]), /line 2: n "1\.5" and m "4"/],
      [csvOf([valid[0].replace(",,", ",1,4"), ...valid.slice(1)]), /line 2: sparsity 0\.5 does not match the 1:4 pattern/],
      [csvOf([valid[0] + ",extra", ...valid.slice(1)]), /line 2: has 7 fields; expected 6/],
      [`${header}\n0,"q,64,0.5,,\n`, /alloc\.csv: cannot be parsed as CSV: .*[Qq]uote/],
    ];
    for (const [text, pattern] of cases) {
      const error = errorOf(text);
      expect(error.file).toBe("alloc.csv");
      expect(error.message).toMatch(pattern);
    }
  });

  it("takes N:M rows at their exact pattern ratio", () => {
    const rows = layout.map((e) => `${e.block},${e.linear},${e.params},0.333333,1,3`);
    const allocation = parseAllocationCsv(csvOf(rows), "alloc.csv", layout, { target: 1 / 3 });
    expect(allocation.every((e) => e.sparsity === 1 / 3 && e.n === 1 && e.m === 3)).toBe(true);
  });

  it("tolerates a BOM, CRLF line ends, blank lines and spaces around fields", () => {
    const text = "\uFEFF" + [header, "", ...valid.map((r) => r.replace(",", " , "))].join("\r\n") + "\r\n\r\n";
    expect(parseAllocationCsv(text, "alloc.csv", layout, { target: 0.5 })).toHaveLength(6);
  });

  it("reports a missing file as a DataError", () => {
    expect(() => readAllocationCsv(join(directory, "absent.csv"), layout)).toThrow(DataError);
  });

  const onlyDataErrors = (text: string): void => {
    try {
      const allocation = parseAllocationCsv(text, "fuzz.csv", layout, { target: 0.5 });
      expect(allocation).toHaveLength(layout.length);
    } catch (e) {
      if (!(e instanceof DataError)) throw e;
      expect(e.message.startsWith("fuzz.csv: ")).toBe(true);
    }
  };

  it("never throws anything but DataError on arbitrary text", () => {
    const csvish = fc
      .array(fc.constantFrom(",", '"', "\n", "\r", " ", "0", "1", ".", "5", "e", "-", "q", "up", header, "\uFEFF"), {
        maxLength: 60,
      })
      .map((parts) => parts.join(""));
    fc.assert(fc.property(fc.oneof(fc.string({ unit: "binary" }), csvish), onlyDataErrors), runs);
  });

  it("never throws anything but DataError on damaged valid files", () => {
    const text = csvOf(valid);
    const edits = fc.array(
      fc.tuple(fc.nat({ max: text.length }), fc.nat({ max: 3 }), fc.string({ maxLength: 3, unit: "grapheme-ascii" })),
      { minLength: 1, maxLength: 4 },
    );
    fc.assert(
      fc.property(edits, (changes) => {
        let damaged = text;
        for (const [at, removed, inserted] of changes) {
          damaged = damaged.slice(0, at) + inserted + damaged.slice(at + removed);
        }
        onlyDataErrors(damaged);
      }),
      runs,
    );
  });

  it("reads a file written by hand", () => {
    const file = join(directory, "hand.csv");
    writeFileSync(file, csvOf(valid));
    expect(readAllocationCsv(file, layout, { target: 0.5 }).map((e) => e.sparsity)).toEqual([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
  });
});
