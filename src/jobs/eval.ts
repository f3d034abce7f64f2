/** The eval command's job: checkpoint -> tokenizer -> windows -> model -> perplexity. */
import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { blockSourceOf, openCheckpoint } from "../checkpoint/open.ts";
import type { TextFormat } from "../data/text-source.ts";
import { attempt, attemptPromise, UsageError } from "../errors.ts";
import { checkFiniteLoss, evaluationWindows, scoredBytes, tokenizerFor } from "../eval/inputs.ts";
import { perplexity, type PerplexityResult } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import { describePlan, memoryReport, type MemoryReport } from "../memory/plan.ts";
import { planRun } from "./memory.ts";

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
  /** Keep only the running block's weights as tensors, whatever the plan would choose. */
  readonly streamed?: boolean;
  /** MiB this run may use (default: what the machine has available). */
  readonly memoryMib?: number;
  readonly batch?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** Called once the windows are known, before the (long) scoring starts. */
  readonly onStart?: (info: { windows: number; seqlen: number; backend: string; backendDescription: string; memory: string }) => void;
}

export interface EvalReport extends PerplexityResult {
  readonly seqlen: number;
  readonly backend: string;
  /** UTF-8 bytes the scored tokens stand for, when the tokenizer can tell. */
  readonly bytes?: number;
  /** exp(total NLL / bytes): comparable across tokenizers. */
  readonly pplPerByte?: number;
  readonly memory: MemoryReport;
}

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
      const tokenizer = yield* attempt(() => tokenizerFor(checkpoint));
      const windows = yield* attempt(() => evaluationWindows(request, tokenizer, seqlen));
      const plan = yield* planRun(
        checkpoint,
        backend.name,
        { forward: { seqlen, batch: request.batch ?? 1, tokens: windows.reduce((n, w) => n + w.ids.length, 0) } },
        { ...(request.memoryMib !== undefined ? { memoryMib: request.memoryMib } : {}), ...(request.streamed ? { streamed: true } : {}) },
      );
      // Weights are read (and checked) as they are uploaded: here, or block by block when streamed.
      const decoder = yield* Effect.acquireRelease(
        attempt(() =>
          Decoder.create(checkpoint.spec, checkpoint.globalSource(), blockSourceOf(checkpoint), {
            streamed: plan.streamed,
            streamedHead: plan.streamedHead,
            passTokens: plan.passTokens,
            source: request.model,
          }),
        ),
        (d) => Effect.sync(() => d.dispose()),
      );
      request.onStart?.({ windows: windows.length, seqlen, backend: backend.name, backendDescription: describeBackend(backend), memory: describePlan(plan) });
      const result = yield* attemptPromise(() =>
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
        memory: memoryReport(plan),
      } satisfies EvalReport;
    }),
  );
