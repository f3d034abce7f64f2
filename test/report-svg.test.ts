import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { HistoryRecord } from "../src/engine/state.ts";
import { lineChart, type Series } from "../src/report/svg.ts";
import { allocationChart, fitnessChart, historyCsv } from "../src/search/report.ts";

// A small reader of the SVG text the chart writer produces: elements with their attributes,
// and text elements with their content. Enough to check what a viewer would draw.
interface Element {
  readonly tag: string;
  readonly attrs: Record<string, string>;
  readonly text?: string;
}

const KNOWN = new Set(["svg", "rect", "text", "line", "polyline", "circle", "path"]);

const attrsOf = (s: string): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const [, name, value] of s.matchAll(/([a-zA-Z-:]+)="([^"]*)"/g)) out[name!] = value!;
  return out;
};

const unescape = (s: string) => s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&amp;/g, "&");

const parse = (svg: string): Element[] => {
  const out: Element[] = [];
  for (const [, tag, attrs, selfClosing, text] of svg.matchAll(/<([a-z]+)\b([^<>]*?)(\/?)>(?:([^<]*)<\/\1>)?/g)) {
    out.push({ tag: tag!, attrs: attrsOf(attrs!), ...(selfClosing === "" && text !== undefined ? { text: unescape(text) } : {}) });
  }
  return out;
};

/** Every `<` opens or closes a known element, tags balance, and nothing non-finite was written. */
const expectWellFormed = (svg: string) => {
  expect(svg).not.toMatch(/NaN|Infinity|undefined/);
  const stack: string[] = [];
  const tags = [...svg.matchAll(/<(\/?)([a-z]+)\b[^<>]*?(\/?)>/g)];
  expect(tags.length).toBe((svg.match(/</g) ?? []).length);
  for (const [, close, tag, selfClosing] of tags) {
    expect(KNOWN.has(tag!)).toBe(true);
    if (close) expect(stack.pop()).toBe(tag);
    else if (!selfClosing) stack.push(tag!);
  }
  expect(stack).toEqual([]);
  expect(svg.trim().startsWith("<svg")).toBe(true);
  expect(svg.trim().endsWith("</svg>")).toBe(true);
};

const num = (e: Element, a: string) => Number(e.attrs[a]);
const markersOf = (els: Element[], k: number) => els.filter((e) => e.attrs.class === "marker" && e.attrs["data-series"] === String(k));
const legendOf = (els: Element[], k: number) => els.filter((e) => e.attrs.class === "legend" && e.attrs["data-series"] === String(k));
const linesOf = (els: Element[], k: number) => els.filter((e) => e.tag === "polyline" && e.attrs["data-series"] === String(k));

/** Centre of a marker element, from its geometry (circle, rect, or the mean of a path's points). */
const centre = (e: Element): [number, number] => {
  if (e.tag === "circle") return [num(e, "cx"), num(e, "cy")];
  if (e.tag === "rect") return [num(e, "x") + num(e, "width") / 2, num(e, "y") + num(e, "height") / 2];
  const pts = [...e.attrs.d!.matchAll(/(-?[\d.]+),(-?[\d.]+)/g)].map(([, x, y]) => [Number(x), Number(y)] as const);
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => y);
  return [(Math.min(...xs) + Math.max(...xs)) / 2, (Math.min(...ys) + Math.max(...ys)) / 2];
};

/** Size of a marker element (its bounding box's width). */
const size = (e: Element): number => {
  if (e.tag === "circle") return 2 * num(e, "r");
  if (e.tag === "rect") return num(e, "width");
  const xs = [...e.attrs.d!.matchAll(/(-?[\d.]+),(-?[\d.]+)/g)].map(([, x]) => Number(x));
  return Math.max(...xs) - Math.min(...xs);
};

/** Two markers centred on the same point, up to the SVG's two-decimal rounding. */
const expectSameCentre = (a: Element, b: Element) => {
  const [[ax, ay], [bx, by]] = [centre(a), centre(b)];
  expect(Math.abs(ax - bx)).toBeLessThan(0.05);
  expect(Math.abs(ay - by)).toBeLessThan(0.05);
};

const ticks = (els: Element[], cls: "x-tick" | "y-tick") =>
  els.filter((e) => e.tag === "text" && e.attrs.class === cls).map((e) => ({ label: e.text!, value: Number(e.text), x: num(e, "x"), y: num(e, "y") }));

const record = (generation: number, index: number, fitness: number | null): HistoryRecord => ({
  generation,
  index,
  genome: `g${generation}.${index}`,
  key: `k${generation}.${index}`,
  fitness,
  cached: false,
  seconds: 1,
  tokens: 0,
});

describe("fitness chart", () => {
  it("draws a visible mark for each series of a one-generation search", () => {
    const svg = fitnessChart([record(0, 0, 120), record(0, 1, 150), record(0, 2, 300)], "one generation");
    expectWellFormed(svg);
    const els = parse(svg);
    for (const k of [0, 1]) {
      const marks = markersOf(els, k);
      expect(marks).toHaveLength(1);
      expect(size(marks[0]!)).toBeGreaterThanOrEqual(4);
      const [x, y] = centre(marks[0]!);
      // Inside the plot area.
      expect(x).toBeGreaterThan(70);
      expect(x).toBeLessThan(720 - 150);
      expect(y).toBeGreaterThan(40);
      expect(y).toBeLessThan(420 - 50);
    }
    // Best (120) is drawn higher on the page than the median (150): smaller y.
    expect(centre(markersOf(els, 0)[0]!)[1]).toBeGreaterThan(centre(markersOf(els, 1)[0]!)[1]);
    // The x axis labels the only generation as 1.
    expect(ticks(els, "x-tick").map((t) => t.label)).toEqual(["1"]);
  });

  it("numbers generations from 1: generation records 0..2 are plotted at x = 1..3", () => {
    const history = [0, 1, 2].flatMap((g) => [record(g, 0, 200 - 50 * g), record(g, 1, 400 - 50 * g), record(g, 2, null)]);
    const els = parse(fitnessChart(history, "three generations"));
    const xt = ticks(els, "x-tick");
    expect(xt.map((t) => t.value)).toEqual([1, 2, 3]);
    const xAt = new Map(xt.map((t) => [t.value, t.x]));
    for (const k of [0, 1]) {
      const xs = markersOf(els, k).map((e) => centre(e)[0]);
      expect(xs).toHaveLength(3);
      xs.forEach((x, g) => expect(x).toBeCloseTo(xAt.get(g + 1)!, 0));
    }
    // And the line joins them.
    expect(linesOf(els, 0)).toHaveLength(1);
    expect(linesOf(els, 0)[0]!.attrs.points!.split(" ")).toHaveLength(3);
  });

  it("keeps history.csv's 0-based generation column", () => {
    const csv = historyCsv([record(0, 0, 100), record(1, 0, 90)]).trim().split("\n");
    expect(csv[0]).toBe("generation,index,evaluation,genome,fitness,error,cached,stage,tokens,seconds");
    expect(csv.slice(1).map((l) => l.split(",")[0])).toEqual(["0", "1"]);
  });

  it("keeps best and median apart when they coincide", () => {
    // One individual per generation: best-so-far equals the median at every generation.
    const els = parse(fitnessChart([record(0, 0, 100), record(1, 0, 100)], "equal"));
    const [a, b] = [markersOf(els, 0), markersOf(els, 1)];
    expect(a).toHaveLength(2);
    expect(b).toHaveLength(2);
    a.forEach((e, i) => expectSameCentre(e, b[i]!));
    expect(a[0]!.attrs["data-shape"]).not.toBe(b[0]!.attrs["data-shape"]);
    // The later series, painted on top, is the smaller one, so the earlier shows around it.
    expect(size(b[0]!)).toBeLessThan(size(a[0]!));
  });
});

describe("coinciding series", () => {
  it("stay distinguishable: both drawn, different marker shapes and dashes, a legend entry each", () => {
    const sparsities = [0.7, 0.7, 0.7, 0.7];
    const svg = allocationChart([{ label: "uniform", sparsities }, { label: "dsa <best>", sparsities }], "equal allocations");
    expectWellFormed(svg);
    const els = parse(svg);
    const [la, lb] = [linesOf(els, 0), linesOf(els, 1)];
    expect(la).toHaveLength(1);
    expect(lb).toHaveLength(1);
    expect(la[0]!.attrs.points).toBe(lb[0]!.attrs.points);
    // Different dash patterns (solid underneath, dashed on top) and the lower one wider.
    expect(la[0]!.attrs["stroke-dasharray"] ?? "").not.toBe(lb[0]!.attrs["stroke-dasharray"] ?? "");
    expect(lb[0]!.attrs["stroke-dasharray"]).toBeTruthy();
    expect(Number(la[0]!.attrs["stroke-width"])).toBeGreaterThan(Number(lb[0]!.attrs["stroke-width"]));
    // Markers at every block for both, of different shapes, the later ones smaller.
    const [ma, mb] = [markersOf(els, 0), markersOf(els, 1)];
    expect(ma).toHaveLength(4);
    expect(mb).toHaveLength(4);
    expect(new Set(ma.map((e) => `${e.tag}:${e.attrs["data-shape"]}`)).size).toBe(1);
    expect(`${ma[0]!.tag}:${ma[0]!.attrs["data-shape"]}`).not.toBe(`${mb[0]!.tag}:${mb[0]!.attrs["data-shape"]}`);
    ma.forEach((e, i) => {
      expectSameCentre(e, mb[i]!);
      expect(size(mb[i]!)).toBeLessThan(size(e));
    });
    // Markers are drawn after every line, so no line hides them.
    const lastLine = Math.max(...els.map((e, i) => (e.tag === "polyline" ? i : -1)));
    const firstMarker = els.findIndex((e) => e.attrs.class === "marker");
    expect(firstMarker).toBeGreaterThan(lastLine);
    // The legend shows each series' dash and marker shape, and its label.
    for (const [k, label, line, marks] of [[0, "uniform", la[0]!, ma], [1, "dsa <best>", lb[0]!, mb]] as const) {
      const legend = legendOf(els, k);
      expect(legend.find((e) => e.tag === "text")?.text).toBe(label);
      const sample = legend.find((e) => e.tag === "line")!;
      expect(sample.attrs["stroke-dasharray"]).toBe(line.attrs["stroke-dasharray"]);
      expect(sample.attrs.stroke).toBe(line.attrs.stroke);
      const mark = legend.find((e) => e.attrs["data-shape"] !== undefined)!;
      expect(mark.tag).toBe(marks[0]!.tag);
      expect(mark.attrs["data-shape"]).toBe(marks[0]!.attrs["data-shape"]);
    }
  });

  it("every series of many gets its own shape and dash", () => {
    const series: Series[] = Array.from({ length: 7 }, (_, k) => ({ label: `s${k}`, points: [[0, 1], [1, 2]], color: "#000" }));
    const els = parse(lineChart(series, { title: "t", xLabel: "x", yLabel: "y" }));
    const styles = series.map((_, k) => `${markersOf(els, k)[0]!.attrs["data-shape"]}|${linesOf(els, k)[0]!.attrs["stroke-dasharray"] ?? ""}`);
    expect(new Set(styles).size).toBe(7);
  });
});

describe("log y axis", () => {
  const logChart = (lo: number, hi: number) =>
    lineChart([{ label: "v", points: [[0, lo], [1, Math.sqrt(lo * hi)], [2, hi]], color: "#000" }], { title: "t", xLabel: "x", yLabel: "perplexity", logY: true });

  it("labels at least two ticks in data units, increasing upward, over [90, 4000]", () => {
    const svg = logChart(90, 4000);
    expectWellFormed(svg);
    const els = parse(svg);
    const yt = ticks(els, "y-tick");
    expect(yt.length).toBeGreaterThanOrEqual(2);
    for (const t of yt) {
      expect(Number.isFinite(t.value)).toBe(true);
      expect(t.value).toBeGreaterThanOrEqual(90 * 0.5);
      expect(t.value).toBeLessThanOrEqual(4000 * 2);
    }
    // Page y grows downward: a larger value sits higher, so y decreases as the value increases.
    const byValue = [...yt].sort((a, b) => a.value - b.value);
    for (let i = 1; i < byValue.length; i++) expect(byValue[i]!.y).toBeLessThan(byValue[i - 1]!.y);
    expect(yt.map((t) => t.value)).toEqual(expect.arrayContaining([100, 1000]));
    // Ticks are placed on the log scale: the data points at 90, 600, 4000 and tick 1000 line up.
    const marks = markersOf(els, 0).map((e) => centre(e)[1]);
    const y1000 = yt.find((t) => t.value === 1000)!.y - 4; // the label sits 4 px below its tick
    const y100 = yt.find((t) => t.value === 100)!.y - 4;
    const perDecade = y100 - y1000;
    expect(marks[2]).toBeCloseTo(y1000 - perDecade * Math.log10(4), 0);
    expect(marks[0]).toBeCloseTo(y100 + perDecade * (2 - Math.log10(90)), 0);
    // The axis title says it is a log scale.
    expect(els.some((e) => e.tag === "text" && /perplexity.*log scale/.test(e.text ?? ""))).toBe(true);
  });

  it("labels at least two ticks over any positive range, narrow or wide", () => {
    for (const [lo, hi] of [[100, 100], [100, 104], [0.9, 1.1], [7, 9], [1e-3, 1e6], [1e-200, 1e200], [3e-320, 1e308], [0.5, 0.51]]) {
      const svg = logChart(lo!, hi!);
      expectWellFormed(svg);
      const yt = ticks(parse(svg), "y-tick");
      expect(yt.length, `${lo}..${hi}`).toBeGreaterThanOrEqual(2);
      expect(new Set(yt.map((t) => t.label)).size, `${lo}..${hi}: distinct labels`).toBe(yt.length);
      const byValue = [...yt].sort((a, b) => a.value - b.value);
      for (let i = 1; i < byValue.length; i++) expect(byValue[i]!.y).toBeLessThan(byValue[i - 1]!.y);
      expect(byValue.every((t) => t.value > 0)).toBe(true);
    }
  });

  it("skips non-positive values on a log axis", () => {
    const els = parse(lineChart([{ label: "v", points: [[0, 10], [1, 0], [2, -5], [3, 100]], color: "#000" }], { title: "t", xLabel: "x", yLabel: "y", logY: true }));
    expect(markersOf(els, 0)).toHaveLength(2);
  });
});

describe("non-finite values", () => {
  it("break the line and are not drawn", () => {
    const svg = lineChart([{ label: "v", points: [[0, 1], [1, 2], [2, Number.NaN], [3, 3], [4, Infinity], [5, 5], [6, 6]], color: "#000" }], { title: "t", xLabel: "x", yLabel: "y" });
    expectWellFormed(svg);
    const els = parse(svg);
    expect(linesOf(els, 0).map((l) => l.attrs.points!.split(" ").length)).toEqual([2, 2]);
    // The lone point at x = 3 is still visible as a marker.
    expect(markersOf(els, 0)).toHaveLength(5);
  });

  it("an empty or all-non-finite chart is still a well-formed SVG", () => {
    expectWellFormed(lineChart([], { title: "t", xLabel: "x", yLabel: "y" }));
    expectWellFormed(lineChart([{ label: "v", points: [[Number.NaN, 1], [1, Infinity]], color: "#000" }], { title: "t", xLabel: "x", yLabel: "y", logY: true }));
  });

  it("never reach the SVG text, whatever the values (property)", () => {
    const value = fc.oneof(
      fc.double(),
      fc.double({ min: -1e6, max: 1e6, noNaN: true }),
      fc.constantFrom(Number.NaN, Infinity, -Infinity, 0, -0, Number.MAX_VALUE, -Number.MAX_VALUE, Number.MIN_VALUE, 1e-310),
    );
    const series = fc.record({
      label: fc.string({ maxLength: 8 }),
      points: fc.array(fc.tuple(value, value), { maxLength: 60 }),
      markers: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(series, { maxLength: 5 }), fc.boolean(), fc.boolean(), (ss, logY, integerX) => {
        const svg = lineChart(
          ss.map((s) => ({ ...s, color: "#123456" })),
          { title: "t <&>", xLabel: "x", yLabel: "y", logY, integerX },
        );
        expectWellFormed(svg);
        const els = parse(svg);
        // Every usable point is drawn as a marker (few points) or lies on a line.
        ss.forEach((s, k) => {
          const usable = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(logY ? Math.log10(y) : y));
          if (usable.length > 0 && usable.length <= 40) expect(markersOf(els, k)).toHaveLength(usable.length);
        });
      }),
      { numRuns: 300 },
    );
  });
});

describe("ticks and reference lines", () => {
  const ticksOf = (svg: string, cls: string): number[] => [...svg.matchAll(new RegExp(`class="${cls}"[^>]*>([^<]+)<`, "g"))].map((m) => Number(m[1]));

  it("the ticks cover the data: the first at or below the smallest value, the last at or above the largest", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 2, maxLength: 30 }), fc.array(fc.integer({ min: 0, max: 200 }), { minLength: 2, maxLength: 30 }), (ys, xs) => {
        const n = Math.min(ys.length, xs.length);
        const points = Array.from({ length: n }, (_, i) => [xs[i]!, ys[i]!] as const);
        const svg = lineChart([{ label: "s", points, color: "#000" }], { title: "t", xLabel: "x", yLabel: "y", integerX: true });
        const y = ticksOf(svg, "y-tick");
        const x = ticksOf(svg, "x-tick");
        expect(Math.min(...y)).toBeLessThanOrEqual(Math.min(...ys.slice(0, n)) + 1e-9 * Math.max(1, Math.abs(Math.min(...ys.slice(0, n)))));
        expect(Math.max(...y)).toBeGreaterThanOrEqual(Math.max(...ys.slice(0, n)) - 1e-9 * Math.max(1, Math.abs(Math.max(...ys.slice(0, n)))));
        expect(Math.min(...x)).toBeLessThanOrEqual(Math.min(...xs.slice(0, n)));
        expect(Math.max(...x)).toBeGreaterThanOrEqual(Math.max(...xs.slice(0, n)));
      }),
      { numRuns: 200 },
    );
  });

  it("a reference line spans the plot at its value, inside the range even beyond the data, and is named in the legend", () => {
    const svg = lineChart([{ label: "best", points: [[1, 50], [2, 48]], color: "#000" }], {
      title: "t", xLabel: "generation", yLabel: "ppl", integerX: true, references: [{ label: "uniform", y: 60 }],
    });
    const line = /<line class="reference" data-reference="0" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"/.exec(svg)!;
    expect(line[2]).toBe(line[4]);
    expect(Math.max(...ticksOf(svg, "y-tick"))).toBeGreaterThanOrEqual(60);
    expect(svg).toMatch(/<text class="legend reference"[^>]*>uniform</);
  });
});
