/**
 * Minimal SVG line charts for run reports: no plotting dependency, readable in any browser.
 *
 * Every series must stay visible and tell itself apart from the others whatever its data:
 *  - a series of one point is still seen, because points get markers (every point when a
 *    series has few, a regular subset when it has many) and a polyline needs two points;
 *  - series that coincide (best = median fitness, two equal allocations) stay apart because
 *    each series index has its own marker shape, dash pattern and width, and earlier series
 *    are drawn wider and with larger markers, so a later series painted on top leaves a rim
 *    of the earlier one showing; the legend shows each series' dash and marker;
 *  - non-finite values (and non-positive ones on a log axis) are skipped: a line breaks there
 *    rather than pretending to join across, and nothing non-finite reaches the SVG text.
 */

export type MarkerShape = "circle" | "square" | "triangle" | "diamond" | "triangle-down" | "plus" | "cross";

export interface Series {
  readonly label: string;
  readonly points: ReadonlyArray<readonly [number, number]>;
  readonly color: string;
  /** Draw markers instead of a line (for per-block bars of allocations, say). */
  readonly markers?: boolean;
  /** Marker shape; by default one per series index, in the order of MARKER_SHAPES. */
  readonly shape?: MarkerShape;
  /** SVG stroke-dasharray of the line ("" for solid); by default one per series index. */
  readonly dash?: string;
}

export interface ChartOptions {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly width?: number;
  readonly height?: number;
  /** Logarithmic y axis; the axis title says so and its labels are in the data's units. */
  readonly logY?: boolean;
  /** The x values are counts (generations, blocks): x ticks only at whole numbers. */
  readonly integerX?: boolean;
  /**
   * Horizontal reference lines (e.g. uniform's fitness, the target sparsity), drawn thin and
   * grey-dashed across the plot, inside its range, and named in the legend.
   */
  readonly references?: ReadonlyArray<{ readonly label: string; readonly y: number }>;
}

export const MARKER_SHAPES: readonly MarkerShape[] = ["circle", "square", "triangle", "diamond", "triangle-down", "plus", "cross"];
/** Solid first, then patterns whose gaps show what lies beneath. */
const DASHES: readonly string[] = ["", "7 4", "2 3", "10 3 2 3", "4 2", "1 3", "12 6"];

/** Up to this many points, every point gets a marker; above it, about MARKER_TARGET spread evenly. */
const MARKER_ALL = 40;
const MARKER_TARGET = 12;

/** Earlier series wider and with bigger markers, so a coinciding later one leaves them showing. */
const lineWidth = (k: number) => Math.max(1.2, 3 - 0.5 * k);
const markerRadius = (k: number) => Math.max(2.5, 6.5 - 1.2 * k);

const escapeXml = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** A coordinate for the SVG text: two decimals are plenty for pixels; never "NaN" or "Infinity". */
const f = (v: number): string => (Number.isFinite(v) ? String(Math.round(v * 100) / 100) : "0");

const MAX = Number.MAX_VALUE;
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/**
 * An axis domain [lo, hi] with lo < hi around finite values, padded a little so that markers
 * at the extremes do not sit on the axis lines. Arithmetic goes through halves so that values
 * near ±Number.MAX_VALUE cannot overflow to Infinity.
 */
const domain = (values: readonly number[], flatHalfWidth: (centre: number) => number, fallback: readonly [number, number], bound = MAX): [number, number] => {
  if (values.length === 0) return [fallback[0], fallback[1]];
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const half = hi / 2 - lo / 2;
  // "Flat": no usable extent (equal values, or an extent too small relative to the values for
  // tick labels of 15 significant digits to tell apart).
  if (!(half > Math.max(Math.abs(lo), Math.abs(hi)) * 1e-12) || half < 1e-300) {
    const centre = lo / 2 + hi / 2;
    const d = flatHalfWidth(centre);
    return [clamp(centre - d, -bound, bound), clamp(centre + d, -bound, bound)];
  }
  const pad = half * 0.1; // 5% of the extent on each side
  lo = clamp(lo - pad, -bound, bound);
  hi = clamp(hi + pad, -bound, bound);
  return [lo, hi];
};

/** Smallest and largest of the values; an empty list has none to cover ([+Inf, -Inf]). */
const extent = (values: readonly number[]): [number, number] =>
  values.reduce<[number, number]>(([lo, hi], v) => [Math.min(lo, v), Math.max(hi, v)], [Infinity, -Infinity]);

/** Fraction of the way from lo to hi, overflow-safe (see `domain`). */
const fraction = (v: number, lo: number, hi: number) => (v / 2 - lo / 2) / (hi / 2 - lo / 2);

/** Label of a linear tick: as many significant digits as the tick step needs, at most 15. */
const tickLabel = (t: number, step: number): string => {
  if (t === 0) return "0";
  const digits = Math.floor(Math.log10(Math.abs(t))) - Math.floor(Math.log10(step)) + 1;
  return String(Number(t.toPrecision(clamp(digits, 1, 15))));
};

interface Tick {
  /** Where it goes, in axis units (log10 of the value on a log axis). */
  readonly at: number;
  readonly label: string;
}

/**
 * The padded domain [lo, hi], widened to whole steps of its nice ticks when its first and last
 * ticks would fall inside the data [dataLo, dataHi] (the values before padding); unchanged
 * when they already cover it or no step fits.
 */
const tickDomain = ([lo, hi]: [number, number], [dataLo, dataHi]: readonly [number, number], count: number, integer = false): [number, number] => {
  let range: [number, number] = [lo, hi];
  // Widening can change the step; a few rounds settle on a range whose own ticks end it.
  for (let round = 0; round < 4; round++) {
    const ticks = niceTicks(range[0], range[1], count, integer);
    if (ticks.length < 2) return range;
    // The step itself, not the difference of two ticks (which can miss it by an ulp and
    // widen the range to just short of a tick).
    const step = niceStep(range[0], range[1], count, integer);
    const a = Math.floor(range[0] / step) * step;
    const b = Math.ceil(range[1] / step) * step;
    if (!(Number.isFinite(a) && Number.isFinite(b) && a < b)) return range;
    if (ticks[0]!.at <= dataLo && ticks[ticks.length - 1]!.at >= dataHi) return range;
    range = [Math.min(a, range[0]), Math.max(b, range[1])];
  }
  return range;
};

/** The step of `niceTicks`: 1, 2 or 5 times a power of ten, about `count` steps over [lo, hi]; 0 when there is no extent. */
const niceStep = (lo: number, hi: number, count: number, integer: boolean): number => {
  const half = hi / 2 - lo / 2;
  if (!(half > 0)) return 0;
  const rough = (half / count) * 2;
  const step = Math.pow(10, Math.floor(Math.log10(rough)));
  const mult = [1, 2, 5, 10].find((m) => half / (step * m) <= count / 2) ?? 10;
  const s = step * mult;
  return integer && s < 1 ? 1 : s;
};

/** Ticks at 1, 2 or 5 times a power of ten, about `count` of them, inside [lo, hi] (lo < hi, both finite). */
const niceTicks = (lo: number, hi: number, count = 5, integer = false): Tick[] => {
  const s = niceStep(lo, hi, count, integer);
  if (!(s > 0) || !Number.isFinite(s)) return [];
  const ticks: Tick[] = [];
  // Integer multiples of the step, not a running sum, so no rounding drift accumulates.
  // A tick within a billionth of a step of an end counts as on it: k * s / s need not give k back.
  const slack = s * 1e-9;
  const first = Math.ceil((lo - slack) / s);
  const last = Math.floor((hi + slack) / s);
  // Far from zero, k + 1 can equal k (beyond 2^53): the loop is bounded by its steps, not by k.
  if (!(last - first <= 4 * count + 1)) return [];
  for (let i = 0; i <= last - first && ticks.length <= 4 * count; i++) {
    const t = (first + i) * s;
    if (t >= lo - slack && t <= hi + slack && Number.isFinite(t)) ticks.push({ at: t, label: tickLabel(t, s) });
  }
  return ticks;
};

/**
 * Ticks of a log axis spanning [a, b] in log10 units, labelled in data units. Sparsest first:
 * powers of ten, then 1-2-5, then every digit, the first that gives three ticks or more; a
 * range too narrow for that gets linear nice ticks over the values (a log axis is nearly
 * linear there), and the two ends of the axis when even those give fewer than two.
 */
const logTicks = (a: number, b: number): Tick[] => {
  const valueTick = (v: number): Tick | undefined => {
    const at = Math.log10(v);
    return Number.isFinite(at) && v > 0 && at >= a && at <= b ? { at, label: String(Number(v.toPrecision(12))) } : undefined;
  };
  const decades: number[] = [];
  for (let k = Math.floor(a); k <= Math.ceil(b); k++) decades.push(k);
  for (const mults of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    let ticks = decades.flatMap((k) => mults.map((m) => valueTick(m * Math.pow(10, k)))).filter((t) => t !== undefined);
    if (mults.length === 1 && ticks.length > 8) {
      // Hundreds of decades: keep every n-th power of ten.
      const every = Math.ceil(ticks.length / 8);
      ticks = ticks.filter((t) => Math.round(t.at) % every === 0);
    }
    if (ticks.length >= 3) return ticks;
  }
  const lo = Math.pow(10, a);
  const hi = Math.pow(10, b);
  if (Number.isFinite(lo) && Number.isFinite(hi) && hi > lo) {
    const linear = niceTicks(lo, hi)
      .filter((t) => t.at > 0)
      .map((t) => ({ at: Math.log10(t.at), label: t.label }))
      .filter((t) => Number.isFinite(t.at) && t.at >= a && t.at <= b);
    if (linear.length >= 2) return linear;
  }
  return [a, b].map((at) => ({ at, label: String(Number(Math.pow(10, at).toPrecision(3))) }));
};

/** One marker: its element, centred on (x, y), `r` about its half-size. */
const marker = (shape: MarkerShape, x: number, y: number, r: number, color: string, attrs: string): string => {
  const fill = `fill="${color}" stroke="white" stroke-width="0.75"`;
  const path = (d: string, style = fill) => `<path ${attrs} d="${d}" ${style}/>`;
  const p = (dx: number, dy: number) => `${f(x + dx)},${f(y + dy)}`;
  switch (shape) {
    case "circle":
      return `<circle ${attrs} cx="${f(x)}" cy="${f(y)}" r="${f(r)}" ${fill}/>`;
    case "square": {
      const h = r * 0.85;
      return `<rect ${attrs} x="${f(x - h)}" y="${f(y - h)}" width="${f(2 * h)}" height="${f(2 * h)}" ${fill}/>`;
    }
    case "triangle":
      return path(`M${p(0, -r)} L${p(r * 0.95, r * 0.7)} L${p(-r * 0.95, r * 0.7)} Z`);
    case "triangle-down":
      return path(`M${p(0, r)} L${p(r * 0.95, -r * 0.7)} L${p(-r * 0.95, -r * 0.7)} Z`);
    case "diamond":
      return path(`M${p(0, -r)} L${p(r, 0)} L${p(0, r)} L${p(-r, 0)} Z`);
    case "plus":
      return path(`M${p(-r, 0)} L${p(r, 0)} M${p(0, -r)} L${p(0, r)}`, `fill="none" stroke="${color}" stroke-width="2"`);
    case "cross": {
      const h = r * 0.8;
      return path(`M${p(-h, -h)} L${p(h, h)} M${p(-h, h)} L${p(h, -h)}`, `fill="none" stroke="${color}" stroke-width="2"`);
    }
  }
};

/** Indices of a run of n points that get markers: all of few, an even spread (ends included) of many. */
const markerIndices = (n: number): number[] => {
  if (n <= MARKER_ALL) return Array.from({ length: n }, (_, i) => i);
  const every = Math.ceil(n / MARKER_TARGET);
  const picked = Array.from({ length: Math.ceil(n / every) }, (_, i) => i * every);
  if (picked[picked.length - 1] !== n - 1) picked.push(n - 1);
  return picked;
};

export const lineChart = (series: readonly Series[], options: ChartOptions): string => {
  const width = options.width ?? 720;
  const height = options.height ?? 420;
  // The legend sits in the right margin: wide enough for the longest label (about 7 px a character).
  const longest = Math.max(0, ...series.map((s) => s.label.length));
  const m = { left: 70, right: Math.min(Math.max(150, 50 + 7 * longest), width / 2), top: 40, bottom: 50 };
  const logY = options.logY ?? false;
  const tr = (y: number) => (logY ? Math.log10(y) : y);
  const usable = ([x, y]: readonly [number, number]) => Number.isFinite(x) && Number.isFinite(tr(y));
  const references = (options.references ?? []).filter((r) => Number.isFinite(tr(r.y)));
  const all = series.flatMap((s) => s.points).filter(usable);

  const xs = all.map(([x]) => x);
  const [x0, x1] = tickDomain(
    domain(xs, (c) => Math.max(Math.abs(c) * 0.1, options.integerX ? 0.5 : 1), [0, 1]),
    extent(xs),
    8,
    options.integerX,
  );
  const ys = [...all.map(([, y]) => y), ...references.map((r) => r.y)];
  // A log axis lives in log10 units, which stay within about ±324 for any finite positive value;
  // bounding it at log10(MAX_VALUE) keeps 10^hi finite for the labels.
  const [y0, y1] = logY
    ? domain(ys.map(tr), () => 0.2, [0, 1], 308.25)
    : tickDomain(domain(ys, (c) => Math.max(Math.abs(c) * 0.1, 1), [0, 1]), extent(ys), 5);

  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const px = (x: number) => m.left + fraction(x, x0, x1) * plotW;
  /** y in axis units (log10 already applied on a log axis). */
  const pyAxis = (t: number) => height - m.bottom - fraction(t, y0, y1) * plotH;
  const py = (y: number) => pyAxis(tr(y));

  const yTitle = logY ? `${options.yLabel} (log scale)` : options.yLabel;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="15">${escapeXml(options.title)}</text>`,
  ];
  for (const t of logY ? logTicks(y0, y1) : niceTicks(y0, y1)) {
    const y = f(pyAxis(t.at));
    parts.push(`<line class="grid" x1="${m.left}" y1="${y}" x2="${width - m.right}" y2="${y}" stroke="#ddd"/>`);
    parts.push(`<text class="y-tick" x="${m.left - 6}" y="${f(pyAxis(t.at) + 4)}" text-anchor="end">${t.label}</text>`);
  }
  for (const t of niceTicks(x0, x1, 8, options.integerX)) {
    const x = f(px(t.at));
    parts.push(`<line class="x-tick-mark" x1="${x}" y1="${height - m.bottom}" x2="${x}" y2="${height - m.bottom + 4}" stroke="black"/>`);
    parts.push(`<text class="x-tick" x="${x}" y="${height - m.bottom + 16}" text-anchor="middle">${t.label}</text>`);
  }
  parts.push(
    `<line x1="${m.left}" y1="${height - m.bottom}" x2="${width - m.right}" y2="${height - m.bottom}" stroke="black"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${height - m.bottom}" stroke="black"/>`,
    `<text x="${(m.left + width - m.right) / 2}" y="${height - 12}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
    `<text transform="translate(16 ${(m.top + height - m.bottom) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yTitle)}</text>`,
  );

  const styles = series.map((s, k) => ({
    color: escapeXml(s.color),
    shape: s.shape ?? MARKER_SHAPES[k % MARKER_SHAPES.length]!,
    dash: s.dash ?? DASHES[k % DASHES.length]!,
    width: lineWidth(k),
    radius: markerRadius(k),
  }));
  const dashAttr = (dash: string) => (dash === "" ? "" : ` stroke-dasharray="${escapeXml(dash)}"`);
  // Runs of consecutive usable points: a skipped value breaks the line.
  const runs = series.map((s) => {
    const out: Array<Array<readonly [number, number]>> = [[]];
    for (const p of s.points) {
      if (usable(p)) out[out.length - 1]!.push(p);
      else if (out[out.length - 1]!.length > 0) out.push([]);
    }
    return out.filter((r) => r.length > 0);
  });

  // Reference lines under the series, across the plot.
  references.forEach((r, k) => {
    const y = f(py(r.y));
    parts.push(`<line class="reference" data-reference="${k}" x1="${m.left}" y1="${y}" x2="${width - m.right}" y2="${y}" stroke="#555" stroke-width="1" stroke-dasharray="3 3"/>`);
  });

  // All lines first, in series order, then all markers, so no line hides a marker.
  series.forEach((s, k) => {
    if (s.markers) return;
    const st = styles[k]!;
    for (const run of runs[k]!) {
      if (run.length < 2) continue;
      const points = run.map(([x, y]) => `${f(px(x))},${f(py(y))}`).join(" ");
      parts.push(
        `<polyline class="line" data-series="${k}" fill="none" stroke="${st.color}" stroke-width="${st.width}"${dashAttr(st.dash)} stroke-linejoin="round" points="${points}"/>`,
      );
    }
  });
  series.forEach((s, k) => {
    const st = styles[k]!;
    for (const run of runs[k]!) {
      const indices = s.markers ? run.map((_, i) => i) : markerIndices(run.length);
      for (const i of indices) {
        const [x, y] = run[i]!;
        parts.push(marker(st.shape, px(x), py(y), st.radius, st.color, `class="marker" data-series="${k}" data-shape="${st.shape}"`));
      }
    }
  });

  series.forEach((s, k) => {
    const st = styles[k]!;
    const ly = m.top + 10 + 18 * k;
    const lx = width - m.right + 10;
    const attrs = `class="legend" data-series="${k}"`;
    if (!s.markers) {
      parts.push(`<line ${attrs} x1="${lx}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="${st.color}" stroke-width="${st.width}"${dashAttr(st.dash)}/>`);
    }
    parts.push(marker(st.shape, lx + 14, ly, st.radius, st.color, `${attrs} data-shape="${st.shape}"`));
    parts.push(`<text ${attrs} x="${lx + 34}" y="${ly + 4}">${escapeXml(s.label)}</text>`);
  });
  references.forEach((r, k) => {
    const ly = m.top + 10 + 18 * (series.length + k);
    const lx = width - m.right + 10;
    parts.push(`<line class="legend reference" x1="${lx}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="#555" stroke-width="1" stroke-dasharray="3 3"/>`);
    parts.push(`<text class="legend reference" x="${lx + 34}" y="${ly + 4}">${escapeXml(r.label)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
};
