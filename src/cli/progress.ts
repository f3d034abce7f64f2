/**
 * Progress of long work on stderr. On a terminal, one line redrawn in place that never
 * wraps: it fits the terminal (80 columns at most), dropping the fields of least priority
 * first; anything else printed meanwhile goes through `log`, which ends the line first. On
 * a pipe or in CI, a plain log line every few seconds (and at the end), so logs stay
 * readable.
 */
export interface Progress {
  /** `extra` fields in priority order: the first is the last to be dropped for width. */
  update(done: number, extra?: Record<string, string | number>): void;
  /** Prints a line of its own, above the progress line. */
  log(line: string): void;
  /** Ends the progress line. */
  stop(): void;
}

/** Columns the progress line may take: the terminal's, at most 80, one left free so it never wraps. */
export const PROGRESS_WIDTH = 80;

const formatValue = (v: string | number): string => (typeof v === "number" ? (Number.isFinite(v) ? v.toPrecision(5) : "-") : v);

const formatSeconds = (s: number): string =>
  !Number.isFinite(s) ? "?" : s < 60 ? `${Math.round(s)}s` : s < 3600 ? `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, "0")}m`;

/**
 * The progress line at most `width` columns wide: "label done/total", then the extra fields
 * in their order and the ETA, as many as fit; a bar takes what room is left (at least 10).
 */
export const progressLine = (label: string, done: number, total: number, extra: Record<string, string | number>, etaSeconds: number, width: number): string => {
  const head = `${label} ${done}/${total}`;
  const fields = [...Object.entries(extra).map(([k, v]) => `${k} ${formatValue(v)}`), `ETA ${formatSeconds(etaSeconds)}`];
  let line = head;
  for (const field of fields) {
    if (line.length + 3 + field.length > width) break;
    line += ` | ${field}`;
  }
  const room = width - line.length - 3;
  if (room >= 10 && total > 0) {
    const inner = room - 2;
    const filled = Math.round((Math.min(done, total) / total) * inner);
    line = `${head} [${"#".repeat(filled)}${"-".repeat(inner - filled)}]${line.slice(head.length)}`;
  }
  return line.slice(0, width);
};

/** The progress line drawn now, if any: an error printed meanwhile ends it first. */
let active: Progress | undefined;

/** Ends the progress line being drawn, if any, so the next line starts on its own. */
export const endProgressLine = (): void => active?.stop();

export const startProgress = (label: string, expected: number, options: { quiet?: boolean } = {}): Progress => {
  if (options.quiet) return { update: () => {}, log: () => {}, stop: () => {} };
  // A budget's count of generations is an estimate: a run that goes past it shows its
  // count as the total, not 39/38 with a negative ETA.
  let total = expected;
  const grow = (done: number): void => {
    if (done > total) total = done;
  };
  const out = process.stderr;
  const start = Date.now();
  // The first update sets the baseline (a resumed run starts part-way), so the ETA counts
  // only the work done in this process.
  let first = -1;
  const eta = (done: number): number => {
    if (first < 0) first = done;
    const rate = (done - first) / ((Date.now() - start) / 1000);
    return rate > 0 ? (total - done) / rate : NaN;
  };
  if (out.isTTY) {
    let drawn = "";
    const draw = (): void => {
      if (drawn !== "") out.write(`\r${drawn}\x1b[K`);
    };
    const progress: Progress = {
      update: (done, extra = {}) => {
        grow(done);
        const width = Math.min(PROGRESS_WIDTH, (out.columns || PROGRESS_WIDTH) - 1);
        drawn = progressLine(label, done, total, extra, eta(done), width);
        draw();
      },
      log: (line) => {
        out.write(drawn !== "" ? `\r\x1b[K${line}\n` : `${line}\n`);
        draw();
      },
      stop: () => {
        if (drawn !== "") out.write("\n");
        drawn = "";
        if (active === progress) active = undefined;
      },
    };
    active?.stop();
    active = progress;
    return progress;
  }
  let lastLog = 0;
  return {
    update: (done, extra) => {
      grow(done);
      const now = Date.now();
      const seconds = eta(done);
      if (now - lastLog < 5000 && done < total) return;
      lastLog = now;
      const elapsed = (now - start) / 1000;
      const fields = extra ? Object.entries(extra).map(([k, v]) => `${k} ${formatValue(v)}`).join(" | ") : "";
      out.write(`${label}: ${done}/${total} (${elapsed.toFixed(0)} s elapsed, ETA ${Number.isFinite(seconds) ? seconds.toFixed(0) + " s" : "?"})${fields ? " " + fields : ""}\n`);
    },
    log: (line) => void out.write(`${line}\n`),
    // Plain logs end with the line printed at done == total; nothing to clear.
    stop: () => {},
  };
};

/** What the passes over the dense model are called on their progress lines. */
export const PASS_LABELS = { statistics: "statistics (blocks)", scores: "scores (blocks)", spectra: "spectra (blocks)", fisher: "fisher (blocks)" } as const;

/**
 * A job's progress drawn one bar a step. A step that counts from the start again (another
 * pass over the blocks while an allocation is chosen) starts a bar of its own; lines
 * logged meanwhile end the bar first. Nothing is drawn when `json` (the report alone).
 */
export const stepBars = <S extends string>(labels: Readonly<Record<S, string>>, json: boolean) => {
  let progress: Progress | undefined;
  let step: S | undefined;
  let last = 0;
  return {
    log: json ? undefined : (line: string) => (progress ? progress.log(line) : void process.stderr.write(line + "\n")),
    onProgress: (now: S, done: number, total: number) => {
      if (now !== step || done < last) {
        progress?.stop();
        progress = startProgress(labels[now], total, { quiet: json });
        step = now;
      }
      last = done;
      progress!.update(done);
    },
    stop: () => progress?.stop(),
  };
};
