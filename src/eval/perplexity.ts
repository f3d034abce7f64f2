import type { Window } from "../data/windows.ts";
import type { WindowGroup } from "../model/decoder.ts";
import { passesOf } from "./passes.ts";

/** What the perplexity loop needs of a model: summed next-token NLL of groups of same-length windows, in passes. */
export interface NllScorer {
  /** Tokens one pass may hold (activations of every window of the pass are alive at once). */
  readonly passTokens: number;
  /** Blocks every pass runs through in turn; with it, progress moves inside a pass too. */
  readonly numBlocks?: number;
  nllGroups(groups: readonly WindowGroup[], onBlock?: (block: number) => void): Promise<{ nll: number; count: number }[]>;
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
  /**
   * Windows scored so far. A pass scores all its windows together, block after block (one
   * pass can be every window of a small model's test text), so inside a pass its windows are
   * counted in equal parts as its blocks finish, and all of them when the pass ends.
   */
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
  const progress = options.onProgress;
  const blocks = model.numBlocks ?? 0;
  for (const pass of passesOf(groups, model.passTokens)) {
    const size = pass.reduce((n, g) => n + g.batch, 0);
    let shown = 0;
    const onBlock =
      progress && blocks > 0
        ? (block: number) => {
            const part = Math.floor((size * (block + 1)) / blocks);
            // The head is still to run after the last block: a pass's windows count as done when it ends.
            if (part > shown && part < size) progress(done + (shown = part), windows.length);
          }
        : undefined;
    // Summed group by group in window order, as one group at a time would.
    for (const r of await model.nllGroups(pass, onBlock)) {
      total += r.nll;
      count += r.count;
    }
    done += size;
    progress?.(done, windows.length);
  }
  const seconds = (performance.now() - start) / 1000;
  const nll = count > 0 ? total / count : NaN;
  return { ppl: Math.exp(nll), nll, tokens: count, windows: windows.length, seconds, tokensPerSecond: count / seconds };
};
