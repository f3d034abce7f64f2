/**
 * llama2.c's merge loop, in O(n log n) instead of its O(n^2) rescans.
 *
 * run.c repeatedly scans the whole token sequence for the adjacent pair whose merged
 * token has the highest score (strict `>`, so the leftmost pair wins a tie), merges it,
 * and starts over. Here every adjacent pair that can merge sits in a max-heap keyed by
 * (score, then smaller left position); the sequence is a linked list over the initial
 * positions, and a merged token keeps the position of its left part, so list order
 * equals position order and "smaller position" is exactly "further left". A heap entry
 * goes stale when either side changes; it is recognised on pop by checking that its
 * two tokens are still adjacent with the ids it was pushed with. Every adjacency that a
 * merge creates is pushed, so the best valid entry on the heap is always the pair the
 * full rescan would choose, and the merges happen in the same order with the same results.
 */

/** The id of the token for the concatenation of `left` and `right`, or -1 when they do not merge. */
export type MergeLookup = (left: number, right: number) => number;

export function greedyMerge(initial: ArrayLike<number>, mergeOf: MergeLookup, scores: Float32Array): number[] {
  const count = initial.length;
  if (count < 2) return Array.from(initial);
  const ids = Int32Array.from(initial);
  const next = new Int32Array(count);
  const prev = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    next[i] = i + 1 < count ? i + 1 : -1;
    prev[i] = i - 1;
  }
  const heap = new PairHeap(count);
  const offer = (left: number): void => {
    const right = next[left];
    if (right < 0) return;
    const merged = mergeOf(ids[left], ids[right]);
    if (merged >= 0) heap.push(scores[merged], left, ids[left], ids[right], merged);
  };
  for (let i = 0; i + 1 < count; i++) offer(i);

  while (heap.size > 0) {
    heap.pop();
    const left = heap.topLeft;
    const right = next[left];
    // A merged-away node is unlinked from its left neighbour, so `right` being the
    // current successor of a live `left` with unchanged ids means the pair still exists.
    if (prev[left] === -2 || right < 0 || ids[left] !== heap.topLeftId || ids[right] !== heap.topRightId) continue;
    ids[left] = heap.topMerged;
    const after = next[right];
    next[left] = after;
    if (after >= 0) prev[after] = left;
    prev[right] = -2;
    if (prev[left] >= 0) offer(prev[left]);
    offer(left);
  }

  const result: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) result.push(ids[i]);
  return result;
}

/**
 * Binary max-heap of candidate merges, ordered by score then by smaller left position.
 * Entries live in parallel typed arrays; a sequence of n tokens pushes at most n - 1
 * initial pairs and two per merge (at most n - 1 merges), so 3n slots always suffice.
 */
class PairHeap {
  size = 0;
  topLeft = 0;
  topLeftId = 0;
  topRightId = 0;
  topMerged = 0;
  private readonly order: Int32Array;
  private readonly score: Float64Array;
  private readonly left: Int32Array;
  private readonly leftId: Int32Array;
  private readonly rightId: Int32Array;
  private readonly merged: Int32Array;
  private stored = 0;

  constructor(tokenCount: number) {
    const capacity = 3 * tokenCount;
    this.order = new Int32Array(capacity);
    this.score = new Float64Array(capacity);
    this.left = new Int32Array(capacity);
    this.leftId = new Int32Array(capacity);
    this.rightId = new Int32Array(capacity);
    this.merged = new Int32Array(capacity);
  }

  push(score: number, left: number, leftId: number, rightId: number, merged: number): void {
    const entry = this.stored++;
    this.score[entry] = score;
    this.left[entry] = left;
    this.leftId[entry] = leftId;
    this.rightId[entry] = rightId;
    this.merged[entry] = merged;
    let at = this.size++;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!this.before(entry, this.order[parent])) break;
      this.order[at] = this.order[parent];
      at = parent;
    }
    this.order[at] = entry;
  }

  /** Removes the best entry and exposes it through the `top*` fields. */
  pop(): void {
    const entry = this.order[0];
    this.topLeft = this.left[entry];
    this.topLeftId = this.leftId[entry];
    this.topRightId = this.rightId[entry];
    this.topMerged = this.merged[entry];
    const last = this.order[--this.size];
    let at = 0;
    for (;;) {
      let child = 2 * at + 1;
      if (child >= this.size) break;
      if (child + 1 < this.size && this.before(this.order[child + 1], this.order[child])) child++;
      if (!this.before(this.order[child], last)) break;
      this.order[at] = this.order[child];
      at = child;
    }
    this.order[at] = last;
  }

  private before(a: number, b: number): boolean {
    const scoreA = this.score[a];
    const scoreB = this.score[b];
    return scoreA > scoreB || (scoreA === scoreB && this.left[a] < this.left[b]);
  }
}
