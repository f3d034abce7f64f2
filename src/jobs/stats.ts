/**
 * The stats command's job: checkpoint -> calibration -> dense statistics per block and
 * linear -> a CSV table (written when asked).
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { openCheckpoint } from "../checkpoint/open.ts";
import { calibrationWindows } from "../data/calibration.ts";
import { DataError, TokenizerError, UsageError } from "../errors.ts";
import { tokenizerFor } from "../eval/inputs.ts";
import { writeFileAtomically } from "../files.ts";
import { checkOutputFile } from "../output/folder.ts";
import { layerStatistics, type LinearStatistics } from "../prune/layer-stats.ts";

export interface StatsRequest {
  readonly model: string;
  readonly tokenizer?: string;
  readonly calib: string;
  readonly field: string;
  readonly nsamples: number;
  readonly seqlen?: number;
  readonly seed: number;
  readonly metric: "wanda" | "magnitude";
  /** A CSV file to write the table to. */
  readonly out?: string;
  readonly overwrite?: boolean;
  readonly backend: BackendChoice;
  readonly log?: (line: string) => void;
  readonly onBlock?: (done: number, total: number) => void;
}

const COLUMNS = ["block", "linear", "params", "outlier_share", "block_outlier_share", "block_non_outlier_ratio", "fisher_trace"];

export const statsCsv = (rows: readonly LinearStatistics[]): string =>
  stringify(
    rows.map((r) => [r.block, r.linear, r.params, r.outlierShare, r.blockOutlierShare, r.blockNonOutlierRatio, r.fisherTrace]),
    { header: true, columns: COLUMNS },
  );

export const statsJob = (request: StatsRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const out = request.out;
      if (out !== undefined) {
        yield* Effect.try({
          try: () => checkOutputFile(out, { flag: "--out", overwrite: request.overwrite ?? false, inputs: [request.model, request.tokenizer, request.calib] }),
          catch: (e) => e as UsageError | DataError,
        });
      }
      const backend = yield* initBackendEffect(request.backend);
      const checkpoint = yield* openCheckpoint(request.model, request.tokenizer ? { tokenizer: request.tokenizer } : {});
      const spec = checkpoint.spec;
      const seqlen = request.seqlen ?? spec.maxPositions;
      if (seqlen > spec.maxPositions) return yield* new UsageError({ problem: `--seqlen ${seqlen} exceeds the model's context of ${spec.maxPositions}` });
      const windows = yield* Effect.try({
        try: () => calibrationWindows({ source: request.calib, field: request.field, samples: request.nsamples, seqlen, seed: request.seed }, tokenizerFor(checkpoint)),
        catch: (e) => e as DataError | TokenizerError,
      });
      request.log?.(`backend: ${describeBackend(backend)}; ${windows.length} calibration windows of ${seqlen} tokens`);
      const rows = layerStatistics(checkpoint, windows, { metric: request.metric, onBlock: (b) => request.onBlock?.(b + 1, spec.numLayers) });
      if (out !== undefined) {
        yield* Effect.try({
          try: () => {
            mkdirSync(dirname(out), { recursive: true });
            writeFileAtomically(out, statsCsv(rows));
          },
          catch: (e) => (e instanceof DataError ? e : new DataError({ file: out, problem: `cannot be written (${(e as Error).message})` })),
        });
      }
      return rows;
    }),
  );
