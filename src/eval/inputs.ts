/**
 * What an evaluation reads, shared by every command that measures perplexity: the
 * checkpoint's tokenizer, the protocol's windows of a text, and the check that a measured
 * perplexity is a number.
 */
import { Effect } from "effect";
import type { Checkpoint } from "../checkpoint/types.ts";
import { readEvaluationDocuments, readTextPrefix, type TextFormat } from "../data/text-source.ts";
import { contiguousWindows, documentWindows, type Window } from "../data/windows.ts";
import { CheckpointError, DataError, TokenizerError, UsageError } from "../errors.ts";
import { loadTokenizer, type Tokenizer } from "../tokenizer/tokenizer.ts";
import type { PerplexityResult } from "./perplexity.ts";

/** Which windows of which text: the protocol of its format (README, Perplexity protocol). */
export interface WindowRequest {
  readonly data: string;
  readonly format: TextFormat;
  readonly field?: string;
  readonly bos?: boolean;
  readonly maxWindows?: number;
}

/** Bytes of text behind the scored targets, or undefined for tokenizers that cannot say. */
export const scoredBytes = (windows: readonly Window[], tokenizer: Tokenizer): number | undefined => {
  const bytesOf = tokenizer.tokenBytes?.bind(tokenizer);
  if (!bytesOf) return undefined;
  let bytes = 0;
  for (const w of windows) for (const t of w.targets) if (t >= 0) bytes += bytesOf(t);
  return bytes;
};

export const tokenizerFor = (checkpoint: Checkpoint): Tokenizer => {
  if (!checkpoint.tokenizerPath) {
    throw new TokenizerError({
      file: checkpoint.path,
      problem: "no tokenizer found beside the checkpoint (tokenizer.json, tokenizer.bin or tok*.bin): pass --tokenizer FILE",
    });
  }
  return loadTokenizer(checkpoint.tokenizerPath, { vocabSize: checkpoint.spec.vocabSize });
};

/** Tokenizes the evaluation text into windows following the protocol for its format. */
export const evaluationWindows = (
  request: WindowRequest,
  tokenizer: Tokenizer,
  seqlen: number,
): Window[] => {
  if (request.format === "text" && request.maxWindows !== undefined) {
    const textPerWindow = request.bos ? seqlen - 1 : seqlen;
    const tokens = leadingTokens(request.data, tokenizer, request.maxWindows * textPerWindow);
    if (tokens !== undefined) return windowsOfTokens(request, tokenizer, seqlen, tokens);
  }
  const documents = readEvaluationDocuments(request.data, request.format, request.field);
  const bosFor = (why: string): number => {
    if (tokenizer.bosId === undefined) throw new UsageError({ problem: `${why} needs a BOS token, and the tokenizer has none` });
    return tokenizer.bosId;
  };
  if (request.format === "stories") {
    return documentWindows(documents.map((d) => tokenizer.encode(d)), seqlen, bosFor("--format stories"), request.maxWindows);
  }
  return windowsOfTokens(request, tokenizer, seqlen, tokenizer.encode(documents[0]!));
};

const windowsOfTokens = (request: WindowRequest, tokenizer: Tokenizer, seqlen: number, tokens: readonly number[]): Window[] => {
  const bosFor = (why: string): number => {
    if (tokenizer.bosId === undefined) throw new UsageError({ problem: `${why} needs a BOS token, and the tokenizer has none` });
    return tokenizer.bosId;
  };
  const windows = contiguousWindows(tokens, seqlen, {
    ...(request.bos ? { bos: bosFor("--bos") } : {}),
    ...(request.maxWindows !== undefined ? { maxWindows: request.maxWindows } : {}),
  });
  if (windows.length === 0) {
    throw new DataError({ file: request.data, problem: `only ${tokens.length} tokens: not one window of ${seqlen}` });
  }
  return windows;
};

/** First bytes read for a window limit: generous, so one read is usually enough. */
const BYTES_PER_TOKEN_GUESS = 8;

/**
 * The first `count` tokens of a text as tokenising the whole text would give them, reading
 * and tokenising only as much of it as they need (memory and time follow the windows, not
 * the file): prefixes ending at a line break, doubled until two successive ones agree on
 * those tokens (a token never reaches back across the text added after them). Undefined
 * when the prefix would be the whole text: the caller then reads and tokenises it whole,
 * as without a limit.
 */
export const leadingTokens = (file: string, tokenizer: Tokenizer, count: number): number[] | undefined => {
  let bytes = Math.max(64 * 1024, count * BYTES_PER_TOKEN_GUESS);
  let previous: number[] | undefined;
  for (;;) {
    const text = readTextPrefix(file, bytes);
    if (text === undefined) return undefined;
    const tokens = tokenizer.encode(text);
    if (previous !== undefined && tokens.length >= count && previous.every((id, i) => tokens[i] === id)) return previous;
    previous = tokens.length > count ? tokens.slice(0, count) : undefined;
    bytes *= 2;
  }
};

/**
 * A perplexity is a finite number or an error, never a printed NaN: with the weights
 * checked finite on load, a non-finite loss means the model overflows on this text.
 * No scored token at all is the data's fault.
 */
export const checkFiniteLoss = (result: PerplexityResult, model: string, data: string): Effect.Effect<void, CheckpointError | DataError> => {
  if (result.tokens === 0) return Effect.fail(new DataError({ file: data, problem: "no token to score: no window holds a token after its first" }));
  if (Number.isFinite(result.ppl)) return Effect.void;
  const problem = Number.isFinite(result.nll)
    ? `the model's loss of ${result.nll} nats per token on ${data} gives an infinite perplexity`
    : `the model's loss is not finite (${result.nll}) on ${data} although its weights are finite: the computation overflows on this text`;
  return Effect.fail(new CheckpointError({ file: model, problem }));
};

