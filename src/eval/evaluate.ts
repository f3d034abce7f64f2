import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { openCheckpoint } from "../checkpoint/open.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { readEvaluationDocuments, type TextFormat } from "../data/text-source.ts";
import { contiguousWindows, documentWindows, type Window } from "../data/windows.ts";
import { CheckpointError, DataError, TokenizerError, UsageError } from "../errors.ts";
import { Decoder } from "../model/decoder.ts";
import { loadTokenizer, type Tokenizer } from "../tokenizer/tokenizer.ts";
import { perplexity, type PerplexityResult } from "./perplexity.ts";

export interface EvalRequest {
  readonly model: string;
  readonly tokenizer?: string;
  readonly data: string;
  readonly format: TextFormat;
  readonly field?: string;
  readonly seqlen?: number;
  readonly bos?: boolean;
  readonly maxWindows?: number;
  readonly backend: BackendChoice;
  /** Keep only the running block's weights as tensors. */
  readonly streamed?: boolean;
  readonly batch?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** Called once the windows are known, before the (long) scoring starts. */
  readonly onStart?: (info: { windows: number; seqlen: number; backend: string; backendDescription: string }) => void;
}

export interface EvalReport extends PerplexityResult {
  readonly seqlen: number;
  readonly backend: string;
  /** UTF-8 bytes the scored tokens stand for, when the tokenizer can tell. */
  readonly bytes?: number;
  /** exp(total NLL / bytes): comparable across tokenizers. */
  readonly pplPerByte?: number;
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
  request: Pick<EvalRequest, "data" | "format" | "field" | "bos" | "maxWindows">,
  tokenizer: Tokenizer,
  seqlen: number,
): Window[] => {
  const documents = readEvaluationDocuments(request.data, request.format, request.field);
  const bosFor = (why: string): number => {
    if (tokenizer.bosId === undefined) throw new UsageError({ problem: `${why} needs a BOS token, and the tokenizer has none` });
    return tokenizer.bosId;
  };
  if (request.format === "stories") {
    return documentWindows(documents.map((d) => tokenizer.encode(d)), seqlen, bosFor("--format stories"), request.maxWindows);
  }
  const tokens = tokenizer.encode(documents[0]!);
  const windows = contiguousWindows(tokens, seqlen, {
    ...(request.bos ? { bos: bosFor("--bos") } : {}),
    ...(request.maxWindows !== undefined ? { maxWindows: request.maxWindows } : {}),
  });
  if (windows.length === 0) {
    throw new DataError({ file: request.data, problem: `only ${tokens.length} tokens: not one window of ${seqlen}` });
  }
  return windows;
};

/**
 * Runs a step that reads weights or scores text: a CheckpointError or DataError it throws
 * (a non-finite weight, a token outside the vocabulary) is a typed failure, anything else
 * a defect.
 */
const reading = <A>(run: () => A): Effect.Effect<A, CheckpointError | DataError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(run());
    } catch (e) {
      return e instanceof CheckpointError || e instanceof DataError ? Effect.fail(e) : Effect.die(e);
    }
  });

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

/** checkpoint -> tokenizer -> windows -> model -> perplexity. */
export const evaluate = (request: EvalRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const backend = yield* initBackendEffect(request.backend);
      const checkpoint = yield* openCheckpoint(request.model, request.tokenizer ? { tokenizer: request.tokenizer } : {});
      const seqlen = request.seqlen ?? checkpoint.spec.maxPositions;
      if (seqlen > checkpoint.spec.maxPositions) {
        return yield* new UsageError({ problem: `--seqlen ${seqlen} exceeds the model's context of ${checkpoint.spec.maxPositions}` });
      }
      const span = checkpoint.spec.slidingWindow;
      if (span !== undefined && seqlen > span) {
        return yield* new UsageError({ problem: `--seqlen ${seqlen} exceeds the model's sliding attention window of ${span}, which evosparse does not implement` });
      }
      const tokenizer = yield* Effect.try({
        try: () => tokenizerFor(checkpoint),
        catch: (e) => e as TokenizerError,
      });
      const windows = yield* Effect.try({
        try: () => evaluationWindows(request, tokenizer, seqlen),
        catch: (e) => e as DataError | TokenizerError | UsageError,
      });
      // Weights are read (and checked) here, and again block by block when streamed.
      const decoder = yield* Effect.acquireRelease(
        reading(() =>
          Decoder.create(
            checkpoint.spec,
            checkpoint.readGlobals(),
            { numBlocks: checkpoint.spec.numLayers, load: (i) => checkpoint.readBlock(i) },
            { streamed: request.streamed ?? false },
          ),
        ),
        (d) => Effect.sync(() => d.dispose()),
      );
      request.onStart?.({ windows: windows.length, seqlen, backend: backend.name, backendDescription: describeBackend(backend) });
      const result = yield* reading(() =>
        perplexity(decoder, windows, {
          ...(request.batch ? { batch: request.batch } : {}),
          ...(request.onProgress ? { onProgress: request.onProgress } : {}),
        }),
      );
      yield* checkFiniteLoss(result, request.model, request.data);
      const bytes = scoredBytes(windows, tokenizer);
      return {
        ...result,
        seqlen,
        backend: backend.name,
        ...(bytes ? { bytes, pplPerByte: Math.exp((result.nll * result.tokens) / bytes) } : {}),
      } satisfies EvalReport;
    }),
  );
