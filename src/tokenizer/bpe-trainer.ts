import { TokenizerError } from "../errors.ts";
import { BYTE_LEVEL_BOS, BYTE_LEVEL_EOS, BYTE_LEVEL_VOCAB_SIZE, byteLevelBpeVocab, byteLevelTokenizerJson, gpt2ByteToChar } from "./byte-level.ts";
import type { BpeMerge } from "./byte-level.ts";

/** The pre-tokenizer split of GPT-2, as the ByteLevel pre-tokenizer applies it with use_regex. */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
/** The special tokens' literal text is cut out of the input before pre-tokenization, as the tokenizer does with added tokens. */
const SPECIAL_TEXT = new RegExp(`(${[BYTE_LEVEL_BOS, BYTE_LEVEL_EOS].map((s) => s.replace(/[|]/g, "\\|")).join("|")})`);
const SPECIAL_IDS = new Map([
  [BYTE_LEVEL_BOS, BYTE_LEVEL_VOCAB_SIZE - 2],
  [BYTE_LEVEL_EOS, BYTE_LEVEL_VOCAB_SIZE - 1],
]);
/** Pair keys pack two symbol ids into one number; ids stay below this. */
const SYMBOL_LIMIT = 1 << 21;
const TRAINER = "byte-level BPE training";

export interface TrainedBpe {
  readonly merges: BpeMerge[];
  readonly tokenizerJson: object;
}

/**
 * GPT-2 / Hugging Face BPE training on `text` up to `vocabSize` tokens (256 bytes, BOS,
 * EOS, then one token per new merge result). Each step merges, in every word, the
 * adjacent symbol pair that occurs most often in the text; ties go to the pair whose
 * (left, right) strings sort first, so the merges are a pure function of the text.
 * Training stops early when the text has no pair left to merge.
 *
 * Pair counts are kept up to date incrementally: a merge only rewrites the words that
 * hold the pair (found through a pair -> words index), and the best pair comes from a
 * lazily updated heap, so a merge costs the size of the words it touches, not the text.
 */
export function trainByteLevelBpe(text: string, vocabSize: number): TrainedBpe {
  if (!Number.isInteger(vocabSize) || vocabSize < BYTE_LEVEL_VOCAB_SIZE || vocabSize >= SYMBOL_LIMIT) {
    throw new TokenizerError({
      file: TRAINER,
      problem: `the vocabulary size ${vocabSize} must be an integer from ${BYTE_LEVEL_VOCAB_SIZE} (256 bytes and 2 special tokens) to ${SYMBOL_LIMIT - 1}`,
    });
  }
  // Symbol ids are token ids: the special tokens hold 256 and 257 but never occur in a word.
  const symbols = [...gpt2ByteToChar(), BYTE_LEVEL_BOS, BYTE_LEVEL_EOS];
  const symbolIds = new Map(symbols.slice(0, 256).map((symbol, id) => [symbol, id]));
  const counted = countWords(text);
  const words: Int32Array[] = [...counted.keys()].map((word) => Int32Array.from(Buffer.from(word, "utf8")));
  const frequencies = [...counted.values()];

  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const changedPairs = new Set<number>();
  const addPairs = (wordIndex: number, word: Int32Array, sign: 1 | -1): void => {
    for (let i = 0; i + 1 < word.length; i++) {
      const pair = word[i] * SYMBOL_LIMIT + word[i + 1];
      const count = (pairCounts.get(pair) ?? 0) + sign * frequencies[wordIndex];
      changedPairs.add(pair);
      if (count > 0) {
        pairCounts.set(pair, count);
        if (sign > 0) getOrCreate(pairWords, pair).add(wordIndex);
      } else {
        pairCounts.delete(pair);
        pairWords.delete(pair);
      }
    }
  };
  words.forEach((word, index) => addPairs(index, word, 1));

  const heap = new Heap<PairCount>((a, b) => {
    if (a.count !== b.count) return a.count > b.count;
    const [aLeft, aRight] = [symbols[Math.floor(a.pair / SYMBOL_LIMIT)], symbols[a.pair % SYMBOL_LIMIT]];
    const [bLeft, bRight] = [symbols[Math.floor(b.pair / SYMBOL_LIMIT)], symbols[b.pair % SYMBOL_LIMIT]];
    return aLeft !== bLeft ? aLeft < bLeft : aRight < bRight;
  });
  const offerChangedPairs = (): void => {
    for (const pair of changedPairs) {
      const count = pairCounts.get(pair);
      if (count !== undefined) heap.push({ count, pair });
    }
    changedPairs.clear();
  };
  offerChangedPairs();

  const merges: BpeMerge[] = [];
  const listedPairs = new Set<number>();
  while (symbols.length < vocabSize) {
    // A heap entry is stale once its pair's count has changed; a fresher entry was pushed then.
    let best = heap.pop();
    while (best !== undefined && pairCounts.get(best.pair) !== best.count) best = heap.pop();
    if (best === undefined) break;
    const left = Math.floor(best.pair / SYMBOL_LIMIT);
    const right = best.pair % SYMBOL_LIMIT;
    const mergedText = symbols[left] + symbols[right];
    let merged = symbolIds.get(mergedText);
    if (merged === undefined) {
      merged = symbols.length;
      symbols.push(mergedText);
      symbolIds.set(mergedText, merged);
    }
    // A pair can come back only when a later merge rebuilds one of its tokens; encoding
    // already applies it at its first rank, so it is merged again but listed once.
    if (!listedPairs.has(best.pair)) merges.push([symbols[left], symbols[right]]);
    listedPairs.add(best.pair);

    for (const wordIndex of pairWords.get(best.pair) ?? []) {
      const word = words[wordIndex];
      const rewritten = mergePair(word, left, right, merged);
      if (rewritten === word) continue;
      addPairs(wordIndex, word, -1);
      addPairs(wordIndex, rewritten, 1);
      words[wordIndex] = rewritten;
    }
    offerChangedPairs();
  }
  return { merges, tokenizerJson: byteLevelTokenizerJson(merges) };
}

/**
 * The token ids that a tokenizer.json made by `byteLevelTokenizerJson(merges)` gives for
 * `text`, computed without the library's per-token overhead. Each distinct word is
 * encoded once: at each step the adjacent pair with the lowest merge rank is merged,
 * the leftmost one on a tie, exactly as the library's BPE does.
 */
export function encodeWithMerges(text: string, merges: readonly BpeMerge[]): Int32Array {
  const vocab = byteLevelBpeVocab(merges);
  if (vocab.size + 2 >= SYMBOL_LIMIT) {
    throw new TokenizerError({ file: TRAINER, problem: `${merges.length} merges make more tokens than the ${SYMBOL_LIMIT - 1} this encoder handles` });
  }
  // A pair listed twice keeps its last rank, as the library's rank map does.
  const ranks = new Map<number, number>();
  const resultIds: number[] = [];
  merges.forEach(([left, right], rank) => {
    const leftId = vocab.get(left);
    const rightId = vocab.get(right);
    if (leftId === undefined || rightId === undefined) {
      throw new TokenizerError({ file: TRAINER, problem: `merge ${rank} (${JSON.stringify([left, right])}) joins a token that no earlier merge made` });
    }
    ranks.set(leftId * SYMBOL_LIMIT + rightId, rank);
    resultIds.push(vocab.get(left + right) as number);
  });
  const encodedWords = new Map<string, Int32Array>();
  const ids = new GrowingIds();
  for (const section of text.split(SPECIAL_TEXT)) {
    const special = SPECIAL_IDS.get(section);
    if (special !== undefined) {
      ids.push(special);
      continue;
    }
    for (const [word] of section.matchAll(GPT2_SPLIT)) {
      let encoded = encodedWords.get(word);
      if (encoded === undefined) {
        encoded = mergeByRank(Int32Array.from(Buffer.from(word, "utf8")), ranks, resultIds);
        encodedWords.set(word, encoded);
      }
      ids.pushAll(encoded);
    }
  }
  return ids.toArray();
}

/** How often each pre-tokenized word occurs, keyed by the raw word; special-token text is left out. */
function countWords(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const section of text.split(SPECIAL_TEXT)) {
    if (SPECIAL_IDS.has(section)) continue;
    for (const [word] of section.matchAll(GPT2_SPLIT)) counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  return counts;
}

/** `word` with every (left, right) replaced by `merged`, left to right; the same array when nothing matched. */
function mergePair(word: Int32Array, left: number, right: number, merged: number): Int32Array {
  const out: number[] = [];
  let found = false;
  for (let i = 0; i < word.length; i++) {
    if (i + 1 < word.length && word[i] === left && word[i + 1] === right) {
      out.push(merged);
      found = true;
      i++;
    } else {
      out.push(word[i]);
    }
  }
  return found ? Int32Array.from(out) : word;
}

/**
 * BPE of one word by merge rank, in O(n log n) so that long runs (of spaces, say) stay
 * cheap. Symbols form a linked list over their starting positions; a heap entry
 * (rank, position) is stale when the pair now starting there has another rank, and
 * every pair a merge creates is pushed, so each pop yields the lowest-rank, leftmost pair.
 */
function mergeByRank(initial: Int32Array, ranks: ReadonlyMap<number, number>, resultIds: readonly number[]): Int32Array {
  const count = initial.length;
  if (count < 2) return initial;
  const ids = initial.slice();
  const next = new Int32Array(count).map((_, i) => (i + 1 < count ? i + 1 : -1));
  const prev = new Int32Array(count).map((_, i) => i - 1);
  const alive = new Uint8Array(count).fill(1);
  const rankAt = (position: number): number | undefined =>
    next[position] < 0 ? undefined : ranks.get(ids[position] * SYMBOL_LIMIT + ids[next[position]]);
  // rank * count + position orders by (rank, position) and stays an exact integer for any real merge list and word.
  const heap = new Heap<number>((a, b) => a < b);
  const offer = (position: number): void => {
    const rank = rankAt(position);
    if (rank !== undefined) heap.push(rank * count + position);
  };
  for (let i = 0; i + 1 < count; i++) offer(i);
  for (let entry = heap.pop(); entry !== undefined; entry = heap.pop()) {
    const position = entry % count;
    const rank = Math.floor(entry / count);
    if (!alive[position] || rankAt(position) !== rank) continue;
    const absorbed = next[position];
    ids[position] = resultIds[rank];
    alive[absorbed] = 0;
    next[position] = next[absorbed];
    if (next[position] >= 0) prev[next[position]] = position;
    if (prev[position] >= 0) offer(prev[position]);
    offer(position);
  }
  const out: number[] = [];
  for (let at = 0; at >= 0; at = next[at]) out.push(ids[at]);
  return Int32Array.from(out);
}

function getOrCreate(map: Map<number, Set<number>>, key: number): Set<number> {
  let set = map.get(key);
  if (set === undefined) {
    set = new Set();
    map.set(key, set);
  }
  return set;
}

interface PairCount {
  readonly count: number;
  readonly pair: number;
}

/** A binary heap; `before(a, b)` says a comes out first. */
class Heap<T> {
  private readonly entries: T[] = [];
  constructor(private readonly before: (a: T, b: T) => boolean) {}

  push(entry: T): void {
    const entries = this.entries;
    let at = entries.length;
    entries.push(entry);
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!this.before(entries[at], entries[parent])) break;
      [entries[at], entries[parent]] = [entries[parent], entries[at]];
      at = parent;
    }
  }

  pop(): T | undefined {
    const entries = this.entries;
    const top = entries[0];
    const last = entries.pop();
    if (entries.length === 0 || last === undefined) return top;
    entries[0] = last;
    let at = 0;
    for (;;) {
      const left = 2 * at + 1;
      const right = left + 1;
      let first = at;
      if (left < entries.length && this.before(entries[left], entries[first])) first = left;
      if (right < entries.length && this.before(entries[right], entries[first])) first = right;
      if (first === at) return top;
      [entries[at], entries[first]] = [entries[first], entries[at]];
      at = first;
    }
  }
}

/** An id list that grows without the memory of a plain number array. */
class GrowingIds {
  private ids = new Int32Array(1024);
  private length = 0;

  push(id: number): void {
    if (this.length === this.ids.length) this.grow(1);
    this.ids[this.length++] = id;
  }

  pushAll(ids: Int32Array): void {
    if (this.length + ids.length > this.ids.length) this.grow(ids.length);
    this.ids.set(ids, this.length);
    this.length += ids.length;
  }

  toArray(): Int32Array {
    return this.ids.slice(0, this.length);
  }

  private grow(atLeast: number): void {
    const grown = new Int32Array(Math.max(2 * this.ids.length, this.length + atLeast));
    grown.set(this.ids.subarray(0, this.length));
    this.ids = grown;
  }
}
