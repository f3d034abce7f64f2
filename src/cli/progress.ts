import cliProgress from "cli-progress";

export interface Progress {
  update(done: number, extra?: Record<string, string | number>): void;
  stop(): void;
}

/**
 * A bar with ETA on a terminal; on a pipe or in CI, a plain log line every few seconds
 * (and at the end), so logs stay readable.
 */
export const startProgress = (label: string, total: number, options: { quiet?: boolean } = {}): Progress => {
  if (options.quiet) return { update: () => {}, stop: () => {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: `${label} [{bar}] {value}/{total} | ETA {eta_formatted} | {info}`, hideCursor: true, stream: process.stderr },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { info: "" });
    return {
      update: (done, extra) => bar.update(done, { info: formatExtra(extra) }),
      stop: () => bar.stop(),
    };
  }
  const start = Date.now();
  let lastLog = 0;
  const first = { done: -1 };
  return {
    update: (done, extra) => {
      const now = Date.now();
      // The first update sets the baseline (a resumed run starts part-way), so the ETA
      // counts only the work done in this process.
      if (first.done < 0) first.done = done;
      if (now - lastLog < 5000 && done < total) return;
      lastLog = now;
      const elapsed = (now - start) / 1000;
      const rate = (done - first.done) / elapsed;
      const eta = rate > 0 ? (total - done) / rate : NaN;
      process.stderr.write(
        `${label}: ${done}/${total} (${elapsed.toFixed(0)} s elapsed, ETA ${Number.isFinite(eta) ? eta.toFixed(0) + " s" : "?"})${extra ? " " + formatExtra(extra) : ""}\n`,
      );
    },
    // Plain logs end with the line printed at done == total; nothing to clear.
    stop: () => {},
  };
};

const formatExtra = (extra?: Record<string, string | number>): string =>
  extra ? Object.entries(extra).map(([k, v]) => `${k} ${typeof v === "number" ? v.toPrecision(5) : v}`).join(" | ") : "";
