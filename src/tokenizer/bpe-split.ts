/** Words up to this many UTF-16 units are left whole: the library caches their BPE result. */
const LONG_WORD = 256;

/**
 * Makes a BPE model fast on huge pre-tokens, with identical output.
 *
 * Tokenizers without a splitting pre-tokenizer (Llama-2 style: a "▁" normalizer and no
 * pre-tokenizer) hand the whole text to BPE as one word. The library then runs an
 * uncached heap BPE over the entire text, at about 10 µs per character. Cutting the word
 * into short pieces lets its per-word cache answer almost every piece instead.
 *
 * A cut between two adjacent characters c1 c2 is safe when no merge result contains the
 * pair c1c2. BPE starts from single characters and only ever creates merge results, so
 * no token can then span the cut, no pair across it is ever mergeable, and the merges on
 * either side never interact: at each step the globally best pair is also the best pair
 * on its own side (ranks are global, and ties go leftmost on both sides alike), so by
 * induction each side goes through the same merges alone as it does in the whole word.
 * Unknown-token fusing runs after `encode` over the whole list, so it is unchanged too.
 * Models with word suffixes or `ignore_merges` treat a word's ends specially and are
 * left alone.
 */
export function splitLongWordsSafely(model: unknown): void {
  if (!isBpeModel(model)) return;
  if (model.end_of_word_suffix || model.continuing_subword_suffix || model.ignore_merges) return;
  const joinedPairs = new Set<string>();
  for (const [left, right] of model.merges) {
    const chars = Array.from(left + right);
    for (let i = 0; i + 1 < chars.length; i++) joinedPairs.add(chars[i] + chars[i + 1]);
  }
  const encodeWords = model.encode.bind(model);
  model.encode = (words: string[]): string[] =>
    encodeWords(words.flatMap((word) => (word.length > LONG_WORD ? cutWhereNoMergeSpans(word, joinedPairs) : [word])));
}

function cutWhereNoMergeSpans(word: string, joinedPairs: ReadonlySet<string>): string[] {
  const pieces: string[] = [];
  let start = 0;
  let previous = "";
  let at = 0;
  for (const char of word) {
    if (at > 0 && !joinedPairs.has(previous + char)) {
      pieces.push(word.slice(start, at));
      start = at;
    }
    previous = char;
    at += char.length;
  }
  pieces.push(word.slice(start));
  return pieces;
}

/** The parts of the library's BPE model used here (its published types do not resolve under NodeNext). */
interface BpeModel {
  merges: [string, string][];
  end_of_word_suffix?: string | null;
  continuing_subword_suffix?: string | null;
  ignore_merges?: boolean;
  bpe(word: string): string[];
  encode(words: string[]): string[];
}

function isBpeModel(model: unknown): model is BpeModel {
  if (typeof model !== "function" && typeof model !== "object") return false;
  if (model === null) return false;
  const candidate = model as Partial<BpeModel>;
  return Array.isArray(candidate.merges) && typeof candidate.bpe === "function" && typeof candidate.encode === "function";
}
