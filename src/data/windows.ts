/**
 * Evaluation windows: token ids the model reads, and for each position the token it
 * must predict there (-1 where nothing is scored).
 */
export interface Window {
  readonly ids: Int32Array;
  readonly targets: Int32Array;
}

/** Scores every position's next token within the window: all tokens but the first. */
const windowOf = (ids: readonly number[] | Int32Array): Window => {
  const input = Int32Array.from(ids);
  const targets = new Int32Array(input.length).fill(-1);
  for (let t = 0; t + 1 < input.length; t++) targets[t] = input[t + 1]!;
  return { ids: input, targets };
};

/**
 * The standard protocol: cut the token stream into floor(N / seqlen) non-overlapping
 * windows and score every position but the first of each. With a BOS id, each window
 * holds seqlen - 1 text tokens after BOS, so the model still sees seqlen positions and
 * every text token of the window, its first included, is scored.
 */
export const contiguousWindows = (
  tokens: readonly number[],
  seqlen: number,
  options: { readonly bos?: number; readonly maxWindows?: number } = {},
): Window[] => {
  const textPerWindow = options.bos === undefined ? seqlen : seqlen - 1;
  if (textPerWindow < 1 || (options.bos === undefined && seqlen < 2)) throw new RangeError(`seqlen ${seqlen} is too short`);
  const count = Math.min(Math.floor(tokens.length / textPerWindow), options.maxWindows ?? Infinity);
  const windows: Window[] = [];
  for (let w = 0; w < count; w++) {
    const text = tokens.slice(w * textPerWindow, (w + 1) * textPerWindow);
    windows.push(windowOf(options.bos === undefined ? text : [options.bos, ...text]));
  }
  return windows;
};

/** One window per document: BOS, then the document, truncated to seqlen positions. */
export const documentWindows = (
  documents: readonly (readonly number[])[],
  seqlen: number,
  bos: number,
  maxWindows = Infinity,
): Window[] =>
  documents
    .slice(0, maxWindows)
    .filter((d) => d.length > 0)
    .map((d) => windowOf([bos, ...d].slice(0, seqlen)));

export const scoredTokens = (windows: readonly Window[]): number =>
  windows.reduce((n, w) => n + w.targets.reduce((c, t) => c + (t >= 0 ? 1 : 0), 0), 0);
