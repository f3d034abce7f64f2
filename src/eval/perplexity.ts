import type { Window } from "../data/windows.ts";
import type { WindowGroup } from "../model/decoder.ts";
import { passesOf } from "./passes.ts";

/** What the perplexity loop needs of a model: summed next-token NLL of groups of same-length windows, in passes. */
export interface NllScorer {
  /** Tokens one pass may hold (activations of every window of the pass are alive at once). */
  readonly passTokens: number;
  nllGroups(groups: readonly WindowGroup[]): Promise<{ nll: number; count: number }[]>;
}

export interface PerplexityResult {
  readonly ppl: number;
  /** Mean negative log-likelihood per scored token, in nats. */
  readonly nll: number;
  readonly tokens: number;
  readonly windows: number;
  readonly seconds: number;
  readonly tokensPerSecond: number;
}

export interface PerplexityOptions {
  /** Windows of equal length run together as one [batch * seqlen] pass. */
  readonly batch?: number;
  readonly onProgress?: (windowsDone: number, windowsTotal: number) => void;
}

/** Each window's summed next-token NLL and scored tokens, one window per group, in window order. */
export const windowLosses = async (model: NllScorer, windows: readonly Window[]): Promise<{ nll: number; tokens: number }[]> => {
  const groups: WindowGroup[] = windows.map((w) => ({ ids: Int32Array.from(w.ids), targets: Int32Array.from(w.targets), batch: 1, seqlen: w.ids.length }));
  const out: { nll: number; tokens: number }[] = [];
  for (const pass of passesOf(groups, model.passTokens)) for (const r of await model.nllGroups(pass)) out.push({ nll: r.nll, tokens: r.count });
  return out;
};

/** ppl = exp(total NLL / scored tokens), summed over windows on the backend. */
export const perplexity = async (model: NllScorer, windows: readonly Window[], options: PerplexityOptions = {}): Promise<PerplexityResult> => {
  const start = performance.now();
  const maxBatch = Math.max(1, options.batch ?? 1);
  const groups: WindowGroup[] = [];
  for (let i = 0; i < windows.length; ) {
    const len = windows[i]!.ids.length;
    let j = i + 1;
    while (j < windows.length && j - i < maxBatch && windows[j]!.ids.length === len) j++;
    const group = windows.slice(i, j);
    const ids = new Int32Array(group.length * len);
    const targets = new Int32Array(group.length * len);
    group.forEach((w, k) => {
      ids.set(w.ids, k * len);
      targets.set(w.targets, k * len);
    });
    groups.push({ ids, targets, batch: group.length, seqlen: len });
    i = j;
  }
  let total = 0;
  let count = 0;
  let done = 0;
  for (const pass of passesOf(groups, model.passTokens)) {
    // Summed group by group in window order, as one group at a time would.
    for (const r of await model.nllGroups(pass)) {
      total += r.nll;
      count += r.count;
    }
    done += pass.reduce((n, g) => n + g.batch, 0);
    options.onProgress?.(done, windows.length);
  }
  const seconds = (performance.now() - start) / 1000;
  const nll = count > 0 ? total / count : NaN;
  return { ppl: Math.exp(nll), nll, tokens: count, windows: windows.length, seconds, tokensPerSecond: count / seconds };
};
