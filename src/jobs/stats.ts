/**
 * The stats command's job: checkpoint -> calibration -> dense statistics per block and
 * linear -> a CSV table (written when asked).
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { stringify } from "csv-stringify/sync";
import { Effect } from "effect";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { attempt, attemptPromise, DataError } from "../errors.ts";
import { writeFileAtomically } from "../files.ts";
import { checkOutputFile } from "../output/folder.ts";
import { DenseStatistics, type DensePass, type LinearStatistics } from "../prune/dense-statistics.ts";
import { openCalibratedModel } from "../prune/setup.ts";
import { planOrRefuse, planRun } from "./memory.ts";

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
  /** MiB the run may use, and the leanest plan whatever fits (never change the table). */
  readonly memoryMib?: number;
  readonly streamed?: boolean;
  readonly log?: (line: string) => void;
  /** Each pass over the dense model as it goes (calibration statistics, scores, Fisher traces), from `(pass, 0, blocks)`. */
  readonly onPass?: (pass: DensePass, done: number, total: number) => void;
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
        yield* attempt(() => checkOutputFile(out, { flag: "--out", overwrite: request.overwrite ?? false, inputs: [request.model, request.tokenizer, request.calib] }));
      }
      const backend = yield* initBackendEffect(request.backend);
      const memoryOptions = { ...(request.memoryMib !== undefined ? { memoryMib: request.memoryMib } : {}), ...(request.streamed ? { streamed: true } : {}) };
      const workloadOf = (seqlen: number, windows: number) => ({ forward: { seqlen, batch: 1 }, calibration: { windows, sparsegpt: false, keepHessians: false } });
      const model = yield* Effect.acquireRelease(
        attempt(() => openCalibratedModel({ ...request, beforeDrawing: (cp, seqlen) => void planOrRefuse(cp, backend.name, workloadOf(seqlen, request.nsamples), memoryOptions) })),
        (m) => Effect.sync(() => m.close()),
      );
      const { checkpoint, seqlen, calibration: windows } = model;
      request.log?.(`backend: ${describeBackend(backend)}; ${windows.length} calibration windows of ${seqlen} tokens`);
      const plan = yield* planRun(checkpoint, backend.name, workloadOf(seqlen, windows.length), memoryOptions, request.log);
      const statistics = yield* Effect.acquireRelease(
        Effect.sync(
          () =>
            new DenseStatistics(checkpoint, {
              metric: request.metric,
              calibration: windows,
              resident: !plan.streamed,
              activations: plan.activations,
              ...(request.onPass ? { onPass: request.onPass } : {}),
            }),
        ),
        (s) => Effect.sync(() => s.dispose()),
      );
      const rows = yield* attemptPromise(() => statistics.table());
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
