/**
 * The prune command's pipeline: checkpoint -> calibration -> allocation -> masks ->
 * evaluation -> a Hugging Face folder with allocation.csv and report.json.
 */
import { dirname, resolve } from "node:path";
import { existsSync } from "node:fs";
import { Effect } from "effect";
import { globalSparsity, type Allocation } from "../allocation/allocation.ts";
import { formatAllocationCsv, readAllocationCsv } from "../allocation/csv.ts";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { exportHuggingFaceEffect } from "../checkpoint/export.ts";
import type { TextFormat } from "../data/text-source.ts";
import type { Window } from "../data/windows.ts";
import { attempt, attemptPromise, DataError, UsageError } from "../errors.ts";
import { checkOutputFolder, stagingFolder } from "../output/folder.ts";
import type { StorageDtype } from "../checkpoint/types.ts";
import { memoryReport, type MemoryReport } from "../memory/plan.ts";
import { planOrRefuse, planRun } from "./memory.ts";
import type { Checkpoint } from "../checkpoint/types.ts";
import { CALIBRATION_MODES } from "../prune/pipeline.ts";
import { PRUNE_METRICS } from "../prune/prune-linear.ts";
import { TEXT_FORMATS } from "../data/text-source.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import type { FlagTable } from "../settings/flag-table.ts";
import { SEED, SEQLEN, SPARSITY, WHOLE_POSITIVE } from "../settings/number-rule.ts";
import { createPruner, openCalibratedModel } from "../prune/setup.ts";
import { checkFiniteLoss, evaluationWindows } from "../eval/inputs.ts";
import type { BlockAllocation, Pattern } from "../search/plugin.ts";
import { patternText, targetOf, toAllocation } from "../allocation/pattern.ts";
import { allocationFitness, methodContext } from "../search/fitness.ts";
import { loadPlugin } from "../search/registry.ts";
import { MODULE_EXTENSIONS } from "../user-module.ts";
import { runFixedMethod, type Trial } from "../search/run-method.ts";
import { loadSearchSpace } from "../search/space.ts";
import type { CalibrationMode } from "../prune/pipeline.ts";
import type { PruneMetric } from "../prune/prune-linear.ts";
import type { LinearOutcome } from "../prune/pruner.ts";
import type { DensePass } from "../prune/dense-statistics.ts";
import type { StageTimings } from "../prune/timings.ts";

export interface PruneJobRequest {
  readonly model: string;
  readonly tokenizer?: string;
  readonly metric: PruneMetric;
  /** Target global sparsity; implied by an N:M pattern. */
  readonly sparsity?: number;
  /** A method name (uniform, owl, atp, ...) or an allocation CSV file. */
  readonly allocation: string;
  /** Search-space file of the method (its default one when absent). */
  readonly space?: string;
  readonly pattern: Pattern;
  readonly calib: string;
  readonly field?: string;
  readonly nsamples: number;
  readonly seqlen?: number;
  readonly mode: CalibrationMode;
  readonly seed: number;
  readonly out: string;
  /** `out` may be an existing folder evosparse wrote; it is replaced at the end. */
  readonly overwrite?: boolean;
  readonly eval?: string;
  readonly evalFormat?: TextFormat;
  /** Score at most this many evaluation windows (the first ones). */
  readonly evalWindows?: number;
  /** Validation text for methods that choose among candidates (ATP's β grid). */
  readonly valid: string;
  readonly validWindows: number;
  readonly batch?: number;
  /** The dtype of the written weights (and of the pruned model evaluated): auto is the checkpoint's own. */
  readonly dtype?: ExportDtype;
  readonly backend: BackendChoice;
  /** MiB the run may use, and whether to stream where the model would fit. */
  readonly memoryMib?: number;
  readonly streamed?: boolean;
  readonly log?: (line: string) => void;
  /**
   * Progress of the long steps, each counted from 0 to its total: blocks visited while the
   * allocation is chosen (its statistics, a method's candidates), blocks pruned, evaluation
   * windows scored (pruned model, then dense), blocks written.
   */
  readonly onProgress?: (step: PruneStep, done: number, total: number) => void;
}

/**
 * The steps a prune's progress names, in the order they run: the passes over the dense
 * model a method needs (its calibration statistics, its weights' scores, AlphaPruning's
 * spectra), blocks pruned for a grid's candidates, then the prune, its evaluations and the
 * export.
 */
export type PruneStep = DensePass | "allocation" | "prune" | "eval pruned" | "eval dense" | "export";

export const EXPORT_DTYPES = ["auto", "F32", "F16", "BF16"] as const;
export type ExportDtype = (typeof EXPORT_DTYPES)[number];

/** What decides a prune's result: the request without where it goes and how it is run. */
export type PruneSettings = Omit<PruneJobRequest, "out" | "overwrite" | "backend" | "log" | "onProgress" | "memoryMib" | "streamed">;

/** The flag of every prune setting: the command's options and printed commands derive from it. */
export const PRUNE_FLAGS: FlagTable<PruneSettings> = {
  model: { flag: "model", kind: "path", default: defaultModel(), describe: "Hugging Face folder, llama2.c .bin, or a folder holding one" },
  tokenizer: { flag: "tokenizer", kind: "path", describe: "tokenizer file (overrides the one beside the checkpoint)" },
  metric: { flag: "metric", kind: "choice", choices: PRUNE_METRICS, default: "wanda", describe: "pruning metric" },
  sparsity: { flag: "sparsity", kind: "number", rule: SPARSITY, describe: "target global sparsity (implied by an N:M pattern)" },
  pattern: { flag: "pattern", kind: "pattern", default: "unstructured", describe: "unstructured, or N:M (N zeros in every M consecutive inputs)" },
  allocation: { flag: "allocation", kind: "path", default: "uniform", describe: "an allocation CSV file, or a method that needs no search: a built-in (uniform, owl, atp, ...), a .ts/.mts/.mjs file exporting `plugin`, or an installed package's name" },
  space: { flag: "space", kind: "path", describe: "search-space file of the allocation method (default: the method's own)" },
  calib: { flag: "calib", kind: "path", default: defaultData("calibration"), describe: "calibration text (.jsonl: documents from --field)" },
  field: { flag: "field", kind: "text", default: "text", describe: "jsonl field holding the text" },
  nsamples: { flag: "nsamples", kind: "number", rule: WHOLE_POSITIVE, default: 128, describe: "calibration windows" },
  seed: { flag: "seed", kind: "number", rule: SEED, default: 0, describe: "seed of the calibration windows" },
  seqlen: { flag: "seqlen", kind: "number", rule: SEQLEN, describe: "calibration and evaluation window length (default: the model's context)" },
  mode: { flag: "mode", kind: "choice", choices: CALIBRATION_MODES, default: "sequential", describe: "calibration inputs from the already-pruned blocks (sequential) or the dense model" },
  batch: { flag: "batch", kind: "number", rule: WHOLE_POSITIVE, default: 1, describe: "calibration windows per forward pass" },
  eval: { flag: "eval", kind: "path", describe: "evaluation text: report dense and pruned perplexity" },
  evalFormat: { flag: "eval-format", kind: "choice", choices: TEXT_FORMATS, default: "text", describe: "format of the evaluation text" },
  evalWindows: { flag: "eval-windows", kind: "number", rule: WHOLE_POSITIVE, describe: "score at most this many evaluation windows (default: all)" },
  valid: { flag: "valid", kind: "path", default: defaultData("validation"), describe: "validation text for methods that compare candidates (atp)" },
  validWindows: { flag: "valid-windows", kind: "number", rule: WHOLE_POSITIVE, default: 16, describe: "validation windows per candidate" },
  dtype: { flag: "dtype", kind: "choice", choices: EXPORT_DTYPES, default: "auto", describe: "dtype of the written weights, which the reported perplexity is measured on (auto: the checkpoint's own)" },
};

/** Dense and pruned perplexity on the evaluation text, as every prune report gives them. */
export interface PruneEvaluation {
  readonly data: string;
  readonly format: TextFormat;
  readonly seqlen: number;
  readonly windows: number;
  readonly tokens: number;
  readonly dense: number;
  readonly pruned: number;
}

export interface PruneReport {
  readonly model: string;
  readonly metric: PruneMetric;
  readonly mode: CalibrationMode;
  readonly pattern: string;
  readonly allocation: string;
  readonly target: number;
  readonly seed: number;
  readonly calibration: { readonly source: string; readonly windows: number; readonly seqlen: number };
  readonly backend: string;
  /** The dtype the pruned weights were written (and evaluated) in. */
  readonly dtype: StorageDtype;
  /** How the run used memory: the plan, its estimated peak and the measured one. */
  readonly memory: MemoryReport;
  /** Global sparsity of the weights written: zero weights / prunable weights. */
  readonly achievedSparsity: number;
  /** The allocation's own global sparsity (each linear's requested ratio). */
  readonly requestedSparsity: number;
  readonly linears: readonly LinearOutcome[];
  /** Candidates a grid method compared on the validation windows (ATP's β values). */
  readonly trials?: readonly { readonly label: string; readonly ppl: number | null; readonly error?: string }[];
  readonly chosen?: string;
  readonly evaluation?: PruneEvaluation;
  /** Seconds per stage. */
  readonly timings: StageTimings & { readonly calibrationSampling: number; readonly allocation: number; readonly export: number };
  readonly out: string;
}


/** `--allocation` names a file when it looks like one (a path or a .csv), a method otherwise. */
const isFile = (allocation: string): boolean =>
  allocation.endsWith(".csv") || ((allocation.includes("/") || existsSync(allocation)) && !MODULE_EXTENSIONS.some((e) => allocation.endsWith(e)));

export const pruneJob = (request: PruneJobRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = request.log ?? (() => {});
      const { pattern } = request;
      if (pattern.kind === "nm" && request.sparsity !== undefined && Math.abs(request.sparsity - pattern.n / pattern.m) > 1e-12) {
        return yield* new UsageError({ problem: `--sparsity ${request.sparsity} contradicts --pattern ${patternText(pattern)} (sparsity ${pattern.n / pattern.m})` });
      }
      // An allocation file holds its own sparsity: without --sparsity its global mean is the target.
      const targetFromFile = pattern.kind === "unstructured" && request.sparsity === undefined && isFile(request.allocation);
      if (pattern.kind === "unstructured" && request.sparsity === undefined && !targetFromFile) {
        return yield* new UsageError({ problem: "--sparsity is required for unstructured pruning with a method (an allocation CSV gives its own)" });
      }
      let target = targetFromFile ? NaN : targetOf(pattern, request.sparsity);
      if (!targetFromFile && !(target >= 0 && target < 1)) return yield* new UsageError({ problem: `--sparsity ${target} is outside [0, 1)` });
      // The output folder is checked before any work, so a refusal costs nothing.
      yield* attempt(() =>
          checkOutputFolder(request.out, {
            flag: "--out",
            overwrite: request.overwrite ?? false,
            inputs: [request.model, request.tokenizer, request.calib, request.eval, request.valid, request.space, isFile(request.allocation) ? request.allocation : undefined],
          }));

      const backend = yield* initBackendEffect(request.backend);
      const memoryOptions = { scratchNear: dirname(resolve(request.out)), ...(request.memoryMib !== undefined ? { memoryMib: request.memoryMib } : {}), ...(request.streamed ? { streamed: true } : {}) };
      const workloadOf = (cp: Checkpoint, seqlen: number, windows: number) => {
        const dtype: StorageDtype = request.dtype === undefined || request.dtype === "auto" ? cp.storageDtype : request.dtype;
        return {
          forward: { seqlen, batch: request.batch ?? 1 },
          calibration: { windows, sparsegpt: request.metric === "sparsegpt", keepHessians: false, storeBytes: dtype === "F32" ? 4 : 2 },
        };
      };
      const t0 = performance.now();
      const model = yield* Effect.acquireRelease(
        attempt(() => openCalibratedModel({ ...request, field: request.field ?? "text", beforeDrawing: (cp, seqlen) => void planOrRefuse(cp, backend.name, workloadOf(cp, seqlen, request.nsamples), memoryOptions) })),
        (m) => Effect.sync(() => m.close()),
      );
      const { checkpoint, tokenizer, seqlen, calibration } = model;
      const spec = checkpoint.spec;
      const calibrationSampling = (performance.now() - t0) / 1000;
      log(`backend: ${describeBackend(backend)}`);
      log(`${calibration.length} calibration windows of ${seqlen} tokens from ${request.calib}`);
      const dtype: StorageDtype = request.dtype === undefined || request.dtype === "auto" ? checkpoint.storageDtype : request.dtype;
      const plan = yield* planRun(checkpoint, backend.name, workloadOf(checkpoint, seqlen, calibration.length), memoryOptions, log);
      // Pruned blocks the plan keeps on disk wait beside the output, under a name a later run
      // clears if this one is killed (output/folder.ts).
      const scratch = plan.spill ? stagingFolder(request.out) : undefined;
      // The pruner reports each block it prunes, which belongs to the step the job is in
      // (a grid's candidates while the allocation is chosen, then the prune), and its passes
      // over the dense model by name. The other steps start their count before their work,
      // but a candidate is seen only as its first block finishes, and counts from 0.
      let step: PruneStep = "allocation";
      const progress = request.onProgress;
      const onBlock = progress
        ? (block: number) => {
            if (block === 0 && step === "allocation") progress(step, 0, spec.numLayers);
            progress(step, block + 1, spec.numLayers);
          }
        : undefined;

      const pruner = yield* Effect.acquireRelease(
        Effect.sync(() =>
          createPruner(
            model,
            { metric: request.metric, mode: request.mode, ...(request.batch ? { batch: request.batch } : {}) },
            {
              materialise: true,
              dtype,
              streamed: plan.streamed,
              streamedHead: plan.streamedHead,
              passTokens: plan.passTokens,
              activations: plan.activations,
              cacheBytes: plan.cacheBytes,
              ...(scratch ? { scratch } : {}),
              ...(onBlock ? { onBlock } : {}),
              ...(progress ? { onPass: progress } : {}),
            },
          ),
        ),
        (p) => Effect.sync(() => p.dispose()),
      );

      const t1 = performance.now();
      let allocation: Allocation;
      let trials: readonly Trial[] = [];
      let chosen: string | undefined;
      if (isFile(request.allocation)) {
        allocation = yield* attempt(() => readAllocationCsv(request.allocation, pruner.layout, targetFromFile ? {} : { target }));
        if (targetFromFile) target = globalSparsity(allocation);
        const mismatch = allocation.find((e) => (pattern.kind === "nm") !== (e.n !== undefined));
        if (mismatch) {
          return yield* new DataError({
            file: request.allocation,
            problem: `block ${mismatch.block} ${mismatch.linear} is ${mismatch.n !== undefined ? "an N:M entry" : "unstructured"}, but --pattern is ${patternText(pattern)}`,
          });
        }
      } else {
        const plugin = yield* attemptPromise(() => loadPlugin(request.allocation));
        if (!plugin.patterns.includes(pattern.kind)) {
          return yield* new UsageError({ problem: `allocation ${plugin.name} does not support --pattern ${patternText(pattern)}` });
        }
        const space = yield* attempt(() => loadSearchSpace(plugin, request.space));
        const context = yield* attemptPromise(() => methodContext(pruner, target, pattern, [plugin]));
        const validation = (): Window[] => evaluationWindows({ data: request.valid, format: "text", maxWindows: request.validWindows }, tokenizer, seqlen);
        let windows: Window[] | undefined;
        const result = yield* runFixedMethod(plugin, context, space, (batch: readonly BlockAllocation[]) =>
          Effect.gen(function* () {
            windows ??= yield* attempt(validation);
            const score = allocationFitness(pruner, windows, pattern);
            return yield* Effect.forEach(batch, (s, k) =>
              Effect.promise(() => score(s)).pipe(
                Effect.tap((f) => Effect.sync(() => log(`  candidate ${k + 1}/${batch.length}: ${f.ok ? `validation perplexity ${f.value.toFixed(4)}` : `failed: ${f.error}`}`))),
              ),
            );
          }),
        );
        trials = result.trials;
        chosen = result.label;
        allocation = toAllocation(result.allocation, pruner.layout, pattern);
        log(`allocation ${plugin.name}${chosen ? ` (${chosen})` : ""}: block sparsities ${result.allocation.map((s) => s.toFixed(4)).join(" ")}`);
      }
      const allocationSeconds = (performance.now() - t1) / 1000;

      log(`pruning ${spec.numLayers} blocks with ${request.metric} (${request.mode})`);
      step = "prune";
      progress?.(step, 0, spec.numLayers);
      yield* attemptPromise(() => pruner.apply(allocation));
      const linears = pruner.outcomes(allocation);
      let zeros = 0;
      let total = 0;
      for (const o of linears) {
        zeros += o.achieved * o.params;
        total += o.params;
      }

      let evaluation: PruneReport["evaluation"];
      if (request.eval) {
        const format = request.evalFormat ?? "text";
        const windows = yield* attempt(() => evaluationWindows({ data: request.eval!, format, ...(request.evalWindows ? { maxWindows: request.evalWindows } : {}) }, tokenizer, seqlen));
        log(`evaluating on ${windows.length} windows of ${request.eval}`);
        const scored = (which: PruneStep) => {
          progress?.(which, 0, windows.length);
          return progress ? { onProgress: (done: number, total: number) => progress(which, done, total) } : {};
        };
        const pruned = yield* attemptPromise(() => pruner.perplexity(windows, scored("eval pruned")));
        yield* checkFiniteLoss(pruned, request.model, request.eval!);
        pruner.restoreDense();
        const dense = yield* attemptPromise(() => pruner.perplexity(windows, scored("eval dense")));
        yield* checkFiniteLoss(dense, request.model, request.eval!);
        evaluation = { data: request.eval, format, seqlen, windows: windows.length, tokens: pruned.tokens, dense: dense.ppl, pruned: pruned.ppl };
        log(`perplexity: dense ${dense.ppl.toFixed(4)}, pruned ${pruned.ppl.toFixed(4)}`);
      }

      const t2 = performance.now();
      let written: PruneReport | undefined;
      let blocksWritten = 0;
      const report = (exportSeconds: number): PruneReport => ({
        model: request.model,
        metric: request.metric,
        mode: request.mode,
        pattern: patternText(pattern),
        allocation: request.allocation,
        target,
        seed: request.seed,
        calibration: { source: request.calib, windows: calibration.length, seqlen },
        backend: backend.name,
        dtype,
        memory: memoryReport(plan),
        achievedSparsity: zeros / total,
        requestedSparsity: globalSparsity(allocation),
        linears,
        ...(trials.length
          ? { trials: trials.map((t) => ({ label: t.label, ppl: t.fitness.ok ? t.fitness.value : null, ...(t.fitness.ok ? {} : { error: t.fitness.error }) })), chosen: chosen! }
          : {}),
        ...(evaluation ? { evaluation } : {}),
        timings: { ...pruner.timings, calibrationSampling, allocation: allocationSeconds, export: exportSeconds },
        out: request.out,
      });
      yield* exportHuggingFaceEffect(
        request.out,
        checkpoint,
        {
          count: spec.numLayers,
          // Blocks are read once each, in the file's name order (block 10 before block 2): counted as read.
          read: (i) => {
            progress?.("export", blocksWritten++, spec.numLayers);
            return pruner.prunedBlock(i);
          },
        },
        {
          "allocation.csv": formatAllocationCsv(allocation),
          // Written last, with the seconds the export took until then.
          "report.json": () => JSON.stringify((written = report((performance.now() - t2) / 1000)), null, 2) + "\n",
        },
        { overwrite: request.overwrite ?? false, command: "prune", dtype },
      );
      progress?.("export", spec.numLayers, spec.numLayers);
      // The report printed is the one written.
      return written!;
    }),
  );
