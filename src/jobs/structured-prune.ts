/**
 * `evosparse prune --structured KIND`: checkpoint -> calibration -> group importances ->
 * removal of whole key/value head groups and MLP channels at the allocation's ratios ->
 * evaluation of the smaller model -> a Hugging Face folder with the new tensor shapes
 * (per-block shapes in config.json when blocks differ; see docs/methods.md).
 */
import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { exportHuggingFace } from "../checkpoint/export.ts";
import type { TextFormat } from "../data/text-source.ts";
import { attempt, attemptPromise, DataError, isEvosparseError, UsageError } from "../errors.ts";
import { checkFiniteLoss, evaluationWindows } from "../eval/inputs.ts";
import { perplexity } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, HostGlobals, ModelSpec } from "../model/spec.ts";
import { blockShape } from "../model/spec.ts";
import { checkOutputFolder } from "../output/folder.ts";
import type { GroupImportanceKind } from "../prune/group-importance.ts";
import { openCalibratedModel } from "../prune/setup.ts";
import { structuredPrune } from "../prune/structured.ts";
import type { PruneEvaluation } from "./prune.ts";

export interface StructuredPruneRequest {
  readonly model: string;
  readonly tokenizer?: string;
  readonly importance: GroupImportanceKind;
  /** Fraction of the prunable parameters to remove, the same in every block. */
  readonly sparsity: number;
  readonly calib: string;
  readonly field?: string;
  readonly nsamples: number;
  readonly seed: number;
  readonly seqlen?: number;
  readonly eval?: string;
  readonly evalFormat?: TextFormat;
  readonly evalWindows?: number;
  readonly batch?: number;
  readonly out: string;
  readonly overwrite?: boolean;
  readonly backend: BackendChoice;
  readonly log?: (line: string) => void;
}

export interface StructuredPruneReport {
  readonly model: string;
  readonly structured: GroupImportanceKind;
  readonly target: number;
  readonly seed: number;
  readonly calibration: { readonly source: string; readonly windows: number; readonly seqlen: number };
  readonly backend: string;
  /** Prunable weights before and after, and the fraction removed (at most the target: whole groups). */
  readonly parameters: { readonly before: number; readonly after: number; readonly removed: number };
  readonly blocks: readonly {
    readonly block: number;
    readonly kvHeadsRemoved: readonly number[];
    readonly channelsRemoved: number;
    readonly numHeads: number;
    readonly numKvHeads: number;
    readonly intermediateSize: number;
  }[];
  readonly evaluation?: PruneEvaluation;
  readonly out: string;
}

const scorerOf = (spec: ModelSpec, globals: HostGlobals, blocks: readonly HostBlock[]): Decoder =>
  Decoder.create(spec, globals, { numBlocks: spec.numLayers, load: (i) => blocks[i]! });

export const structuredPruneJob = (request: StructuredPruneRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = request.log ?? (() => {});
      if (!(request.sparsity >= 0 && request.sparsity < 1)) return yield* new UsageError({ problem: `--sparsity ${request.sparsity} is outside [0, 1)` });
      yield* attempt(() =>
        checkOutputFolder(request.out, { flag: "--out", overwrite: request.overwrite ?? false, inputs: [request.model, request.tokenizer, request.calib, request.eval] }),
      );
      const backend = yield* initBackendEffect(request.backend);
      const model = yield* Effect.acquireRelease(
        attempt(() => openCalibratedModel({ ...request, field: request.field ?? "text" })),
        (m) => Effect.sync(() => m.close()),
      );
      const { checkpoint, tokenizer, seqlen, calibration } = model;
      const spec = checkpoint.spec;
      log(`backend: ${describeBackend(backend)}`);
      log(`${calibration.length} calibration windows of ${seqlen} tokens from ${request.calib}`);
      const globals = checkpoint.readGlobals();
      const dense = Array.from({ length: spec.numLayers }, (_, i) => checkpoint.readBlock(i));
      log(`scoring groups by ${request.importance} importance; removing ${request.sparsity} of every block's prunable weights`);
      const result = yield* attemptPromise(() =>
        structuredPrune(spec, globals, dense, {
          importance: request.importance,
          ratios: dense.map(() => request.sparsity),
          calibration,
          seed: request.seed,
        }),
      );

      let evaluation: StructuredPruneReport["evaluation"];
      if (request.eval) {
        const format = request.evalFormat ?? "text";
        const windows = yield* attempt(() => evaluationWindows({ data: request.eval!, format, ...(request.evalWindows ? { maxWindows: request.evalWindows } : {}) }, tokenizer, seqlen));
        log(`evaluating on ${windows.length} windows of ${request.eval}`);
        const score = (s: ModelSpec, blocks: readonly HostBlock[]) =>
          Effect.acquireUseRelease(
            Effect.sync(() => scorerOf(s, globals, blocks)),
            (d) => attemptPromise(() => perplexity(d, windows, { batch: request.batch ?? 1 })),
            (d) => Effect.sync(() => d.dispose()),
          );
        const pruned = yield* score(result.spec, result.blocks);
        yield* checkFiniteLoss(pruned, request.model, request.eval);
        const full = yield* score(spec, dense);
        evaluation = { data: request.eval, format, seqlen, windows: windows.length, tokens: pruned.tokens, dense: full.ppl, pruned: pruned.ppl };
        log(`perplexity: dense ${full.ppl.toFixed(4)}, pruned ${pruned.ppl.toFixed(4)}`);
      }

      const report: StructuredPruneReport = {
        model: request.model,
        structured: request.importance,
        target: request.sparsity,
        seed: request.seed,
        calibration: { source: request.calib, windows: calibration.length, seqlen },
        backend: backend.name,
        parameters: result.parameters,
        blocks: result.removals.map((r, i) => ({
          block: i,
          kvHeadsRemoved: [...r.kvHeads].sort((a, b) => a - b),
          channelsRemoved: r.channels.length,
          ...blockShape(result.spec, i),
        })),
        ...(evaluation ? { evaluation } : {}),
        out: request.out,
      };
      yield* Effect.try({
        try: () =>
          exportHuggingFace(request.out, checkpoint, result.blocks, { "report.json": JSON.stringify(report, null, 2) + "\n" }, {
            overwrite: request.overwrite ?? false,
            command: "prune",
            spec: result.spec,
          }),
        catch: (e) => (isEvosparseError(e) ? e : new DataError({ file: request.out, problem: `cannot be written: ${(e as Error).message}` })),
      });
      return report;
    }),
  );
