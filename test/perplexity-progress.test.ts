/**
 * The perplexity loop's progress: windows counted as passes run, and inside a pass in equal
 * parts as its blocks finish, never past the windows scored, ending at all of them; the
 * perplexity is the same with progress followed or not.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Window } from "../src/data/windows.ts";
import { perplexity, type NllScorer } from "../src/eval/perplexity.ts";
import type { WindowGroup } from "../src/model/decoder.ts";

/** A model whose NLL is a fixed function of the tokens, running `numBlocks` blocks a pass and logging what ran. */
const fakeScorer = (passTokens: number, numBlocks: number | undefined, events: string[]): NllScorer => ({
  passTokens,
  ...(numBlocks !== undefined ? { numBlocks } : {}),
  nllGroups: async (groups: readonly WindowGroup[], onBlock?: (block: number) => void) => {
    const windows = groups.reduce((n, g) => n + g.batch, 0);
    for (let b = 0; b < (numBlocks ?? 1); b++) {
      events.push(`block ${b} of a pass of ${windows}`);
      onBlock?.(b);
    }
    events.push(`pass of ${windows} ends`);
    return groups.map((g) => ({ nll: g.ids.reduce((s, t) => s + (t % 7) / 10, 0), count: g.ids.length }));
  },
});

const windowsOf = (count: number, seqlen: number): Window[] =>
  Array.from({ length: count }, (_, w) => {
    const ids = Int32Array.from({ length: seqlen }, (_, t) => w * 31 + t);
    return { ids, targets: ids } as unknown as Window;
  });

describe("perplexity's progress", () => {
  it("counts windows up to all of them, moving inside a pass as its blocks finish, without changing the perplexity", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 2, max: 8 }),
        fc.integer({ min: 1, max: 12 }),
        fc.option(fc.integer({ min: 1, max: 30 }), { nil: undefined }),
        fc.integer({ min: 1, max: 4 }),
        async (count, seqlen, windowsPerPass, numBlocks, batch) => {
          const windows = windowsOf(count, seqlen);
          const events: string[] = [];
          const seen: number[] = [];
          const followed = await perplexity(fakeScorer(windowsPerPass * seqlen, numBlocks, events), windows, {
            batch,
            onProgress: (done, total) => {
              expect(total).toBe(count);
              seen.push(done);
              events.push(`progress ${done}`);
            },
          });
          const quiet = await perplexity(fakeScorer(windowsPerPass * seqlen, numBlocks, []), windows, { batch });
          expect(followed.ppl).toBe(quiet.ppl);
          // Whole numbers, strictly rising, ending at every window.
          for (const d of seen) expect(Number.isInteger(d) && d > 0 && d <= count).toBe(true);
          for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1]!);
          expect(seen.at(-1)).toBe(count);
          // Never ahead of the work: inside a pass, below the windows of the passes ended
          // plus this one's; at a pass's end, exactly the windows of the passes ended.
          let ended = 0;
          let current = 0;
          let inPass = false;
          let passes = 0;
          for (const e of events) {
            const block = /^block \d+ of a pass of (\d+)$/.exec(e);
            if (block) {
              current = Number(block[1]);
              inPass = true;
            } else if (e.startsWith("pass of")) {
              ended += current;
              inPass = false;
              passes++;
            } else if (inPass) expect(Number(e.split(" ")[1])).toBeLessThan(ended + current);
            else expect(Number(e.split(" ")[1])).toBe(ended);
          }
          // One pass of at least as many windows as blocks: the count moves before it ends.
          if (numBlocks !== undefined && numBlocks >= 2 && passes === 1 && count >= numBlocks) expect(seen.length).toBeGreaterThan(1);
        },
      ),
      { numRuns: 200 },
    );
  });
});
