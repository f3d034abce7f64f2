/**
 * `evosparse prune --structured KIND`: checkpoint -> calibration -> group evidence (the
 * calibration gradient) -> per-block ratios (an allocation method or file, restricted to
 * the selected blocks) -> group scores (HyWIA learns its fusion) -> removal of whole
 * key/value head groups and MLP channels -> evaluation -> optional LoRA recovery and its
 * evaluation -> a Hugging Face folder with the new tensor shapes (per-block shapes in
 * config.json when blocks differ; see docs/methods.md).
 */
import { existsSync } from "node:fs";
import { Effect } from "effect";
import { blockSparsities, layoutOf, perBlock } from "../allocation/allocation.ts";
import { parseBlockList, restrictToBlocks } from "../allocation/block-selection.ts";
import { formatAllocationCsv, readAllocationCsv } from "../allocation/csv.ts";
import { describeBackend, initBackendEffect, type BackendChoice } from "../backend/backend.ts";
import { exportHuggingFaceEffect } from "../checkpoint/export.ts";
import { readJsonlDocuments, readTextFile, type TextFormat } from "../data/text-source.ts";
import { scoredTokens, type Window } from "../data/windows.ts";
import { attempt, attemptPromise, UsageError } from "../errors.ts";
import { checkFiniteLoss, evaluationWindows } from "../eval/inputs.ts";
import { perplexity } from "../eval/perplexity.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostGlobals, ModelSpec } from "../model/spec.ts";
import { blockShape } from "../model/spec.ts";
import { checkOutputFolder } from "../output/folder.ts";
import type { FusionWeights } from "../prune/hywia.ts";
import { DEFAULT_FUSION_LEARNING } from "../prune/hywia.ts";
import { createPruner, openCalibratedModel } from "../prune/setup.ts";
import {
  blockAt,
  blockPrunableParameters,
  groupEvidence,
  groupScores,
  modelPerplexity,
  removeAt,
  type BlockList,
  type FusionTrial,
  type Globals,
  type GroupEvidence,
  type StructuredImportance,
} from "../prune/structured.ts";
import { planRun } from "./memory.ts";
import { fitnessFailed, fitnessOk, type Fitness } from "../engine/genome.ts";
import { methodContext } from "../search/fitness.ts";
import { loadPlugin } from "../search/registry.ts";
import { runFixedMethod } from "../search/run-method.ts";
import { loadSearchSpace } from "../search/space.ts";
import type { BlockAllocation } from "../search/plugin.ts";
import type { FlagTable } from "../settings/flag-table.ts";
import { WHOLE_NON_NEGATIVE, WHOLE_POSITIVE } from "../settings/number-rule.ts";
import { LLM_PRUNER_LORA, loraRecover } from "../train/lora.ts";
import { hasLoraCheckpoint } from "../train/lora-state.ts";
import type { PruneEvaluation, PruneSettings } from "./prune.ts";
import type { DensePass } from "../prune/dense-statistics.ts";

/** Settings of a structured prune beyond the prune command's own. Absent ones take the defaults below. */
export interface StructuredSettings {
  /** Blocks that may lose groups, e.g. "4-29" (default: every block). */
  readonly structuredBlocks?: string;
  readonly fusionSteps?: number;
  readonly recoverSteps?: number;
  readonly recoverRank?: number;
  readonly recoverAlpha?: number;
  readonly recoverLr?: number;
  readonly recoverData?: string;
  readonly recoverBatch?: number;
  readonly recoverCheckpointEvery?: number;
}

export const RECOVERY_DEFAULTS = { steps: 0, rank: LLM_PRUNER_LORA.rank, alpha: LLM_PRUNER_LORA.alpha, lr: LLM_PRUNER_LORA.lr, batch: 4, checkpointEvery: 50 } as const;

export const STRUCTURED_FLAGS: FlagTable<StructuredSettings> = {
  structuredBlocks: { flag: "structured-blocks", kind: "text", describe: "blocks that may lose groups, e.g. 4-29 or 0,2,5-7 (default: every block; the others take up their share)" },
  fusionSteps: { flag: "fusion-steps", kind: "number", rule: WHOLE_NON_NEGATIVE, describe: `hywia: steps learning the fusion weights (default ${DEFAULT_FUSION_LEARNING.steps})` },
  recoverSteps: { flag: "recover-steps", kind: "number", rule: WHOLE_NON_NEGATIVE, describe: "LoRA recovery steps after structured pruning (default 0: none)" },
  recoverRank: { flag: "recover-rank", kind: "number", rule: WHOLE_POSITIVE, describe: `LoRA rank (default ${RECOVERY_DEFAULTS.rank})` },
  recoverAlpha: { flag: "recover-alpha", kind: "number", rule: { min: 0, minExclusive: true }, describe: `LoRA alpha; the update is scaled by alpha / rank (default ${RECOVERY_DEFAULTS.alpha})` },
  recoverLr: { flag: "recover-lr", kind: "number", rule: { min: 0, minExclusive: true }, describe: `LoRA learning rate (default ${RECOVERY_DEFAULTS.lr})` },
  recoverData: { flag: "recover-data", kind: "path", describe: "text LoRA recovery trains on (default: the calibration text; .jsonl: documents from --field)" },
  recoverBatch: { flag: "recover-batch", kind: "number", rule: WHOLE_POSITIVE, describe: `windows per LoRA step (default ${RECOVERY_DEFAULTS.batch})` },
  recoverCheckpointEvery: {
    flag: "recover-checkpoint-every",
    kind: "number",
    rule: WHOLE_NON_NEGATIVE,
    describe: `steps between resumable recovery checkpoints in OUT.recovery (default ${RECOVERY_DEFAULTS.checkpointEvery}; 0: none)`,
  },
};

export interface StructuredPruneRequest extends StructuredSettings {
  readonly importance: StructuredImportance;
  readonly settings: PruneSettings;
  readonly out: string;
  readonly overwrite?: boolean;
  /** Continue the LoRA recovery from OUT.recovery. */
  readonly resume?: boolean;
  readonly backend: BackendChoice;
  /** MiB the run may use, and the leanest plan whatever fits (never change results). */
  readonly memoryMib?: number;
  readonly streamed?: boolean;
  readonly log?: (line: string) => void;
  /**
   * Progress of the long steps, each counted from 0 to its total: blocks of the passes over
   * the dense model a method needs to choose the ratios (statistics, scores, spectra), a
   * grid's candidates cut and scored, blocks whose gradient evidence is taken, HyWIA's
   * fusion steps and its trials, evaluation windows, LoRA recovery steps, blocks written.
   */
  readonly onProgress?: (step: StructuredStep, done: number, total: number) => void;
}

/** The steps a structured prune's progress names, in the order they run (each only where the run has it). */
export type StructuredStep = DensePass | "candidates" | "gradients" | "fusion" | "fusion trials" | "eval pruned" | "recovery" | "eval recovered" | "eval dense" | "export";

export interface RecoveryReport {
  readonly steps: number;
  readonly rank: number;
  readonly alpha: number;
  readonly lr: number;
  readonly batch: number;
  readonly data: string;
  readonly adapterParameters: number;
  readonly firstLoss: number;
  readonly lastLoss: number;
  /** Perplexity on the evaluation text before and after recovery (with --eval). */
  readonly before?: number;
  readonly after?: number;
}

export interface StructuredPruneReport {
  readonly model: string;
  readonly structured: StructuredImportance;
  readonly target: number;
  readonly allocation: string;
  readonly chosen?: string;
  readonly seed: number;
  readonly calibration: { readonly source: string; readonly windows: number; readonly seqlen: number };
  readonly backend: string;
  /** Blocks that could lose groups. */
  readonly prunedBlocks: readonly number[];
  /** Per block: the fraction of its prunable weights asked for. */
  readonly ratios: readonly number[];
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
  /** HyWIA: the fusion weights per block (learned, or the grid point that beat them), and the comparison. */
  readonly fusion?: {
    readonly chosen: string;
    readonly weights: readonly FusionWeights[];
    readonly learned: readonly FusionWeights[];
    readonly trials: readonly FusionTrial[];
    readonly firstLoss?: number;
    readonly lastLoss?: number;
  };
  /** Evaluation of the pruned model (after recovery when there was one). */
  readonly evaluation?: PruneEvaluation;
  readonly recovery?: RecoveryReport;
  readonly out: string;
}

/** `--allocation` names a file when it looks like one (a path or a .csv), a method otherwise. */
const isFile = (allocation: string): boolean => allocation.endsWith(".csv") || allocation.includes("/") || existsSync(allocation);

/** The recovery text, tokenized: a plain text file (or brown:<part>), or a .jsonl file's documents one after another. */
const recoveryText = (source: string, field: string): string =>
  source.endsWith(".jsonl") ? readJsonlDocuments(source, field).join("\n\n") : readTextFile(source);

const scorerOf = (spec: ModelSpec, globals: Globals, blocks: BlockList, streamed: boolean): Decoder =>
  Decoder.create(spec, globals, { numBlocks: spec.numLayers, load: (i) => blockAt(blocks, i) }, { streamed });

export const structuredPruneJob = (request: StructuredPruneRequest) =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = request.log ?? (() => {});
      const progress = request.onProgress;
      const s = request.settings;
      if (s.pattern.kind !== "unstructured") return yield* new UsageError({ problem: "--structured removes whole groups: it takes no --pattern" });
      if (s.sparsity === undefined) return yield* new UsageError({ problem: "--structured needs --sparsity (the fraction of prunable weights to remove)" });
      if (request.fusionSteps !== undefined && request.importance !== "hywia") return yield* new UsageError({ problem: "--fusion-steps applies to --structured hywia" });
      const target = s.sparsity;
      if (!(target >= 0 && target < 1)) return yield* new UsageError({ problem: `--sparsity ${target} is outside [0, 1)` });
      const recover = {
        steps: request.recoverSteps ?? RECOVERY_DEFAULTS.steps,
        rank: request.recoverRank ?? RECOVERY_DEFAULTS.rank,
        alpha: request.recoverAlpha ?? RECOVERY_DEFAULTS.alpha,
        lr: request.recoverLr ?? RECOVERY_DEFAULTS.lr,
        batch: request.recoverBatch ?? RECOVERY_DEFAULTS.batch,
        checkpointEvery: request.recoverCheckpointEvery ?? RECOVERY_DEFAULTS.checkpointEvery,
        data: request.recoverData ?? s.calib,
      };
      const allocationFile = isFile(s.allocation) ? s.allocation : undefined;
      yield* attempt(() =>
        checkOutputFolder(request.out, {
          flag: "--out",
          overwrite: request.overwrite ?? false,
          inputs: [s.model, s.tokenizer, s.calib, s.eval, s.valid, s.space, allocationFile, request.recoverData],
        }),
      );
      const recoveryDir = `${request.out}.recovery`;
      if (recover.steps > 0 && recover.checkpointEvery > 0 && hasLoraCheckpoint(recoveryDir) && !request.resume) {
        return yield* new UsageError({ problem: `${recoveryDir} holds a stopped LoRA recovery: continue it with --resume, or remove that folder to start afresh` });
      }
      const backend = yield* initBackendEffect(request.backend);
      const model = yield* Effect.acquireRelease(
        attempt(() => openCalibratedModel({ ...s, field: s.field ?? "text" })),
        (m) => Effect.sync(() => m.close()),
      );
      const { checkpoint, tokenizer, seqlen, calibration } = model;
      const spec = checkpoint.spec;
      const selected = yield* attempt(() => {
        try {
          return request.structuredBlocks === undefined ? Array.from({ length: spec.numLayers }, (_, i) => i) : parseBlockList(request.structuredBlocks, spec.numLayers);
        } catch (e) {
          throw new UsageError({ problem: `--structured-blocks ${request.structuredBlocks}: ${(e as Error).message}` });
        }
      });
      log(`backend: ${describeBackend(backend)}`);
      log(`${calibration.length} calibration windows of ${seqlen} tokens from ${s.calib}`);
      // HyWIA learns its fusion, and LoRA recovery trains, through the whole model at once.
      const wholeModel = request.importance === "hywia" || recover.steps > 0;
      const plan = yield* planRun(
        checkpoint,
        backend.name,
        {
          forward: { seqlen, batch: s.batch ?? 1 },
          calibration: { windows: calibration.length, sparsegpt: false, keepHessians: false },
          ...(request.importance === "l2" || request.importance === "random" ? {} : { gradients: { windows: calibration.length, resident: wholeModel } }),
        },
        { ...(request.memoryMib !== undefined ? { memoryMib: request.memoryMib } : {}), ...(request.streamed ? { streamed: true } : {}) },
        log,
      );
      const streamed = plan.streamed;
      if (streamed && wholeModel && !request.streamed) {
        return yield* new UsageError({
          problem: `${s.model}: ${request.importance === "hywia" ? "HyWIA learns its fusion" : "LoRA recovery trains"} through the whole model at once, which does not fit here; use --structured element, vector, l2 or random${recover.steps > 0 ? " without --recover-steps" : ""}`,
        });
      }
      // Blocks are read from the checkpoint as they are needed when streamed, never all held.
      const globals: Globals = streamed && !wholeModel ? checkpoint.globalSource() : checkpoint.readGlobals();
      const dense: BlockList = streamed ? { numBlocks: spec.numLayers, load: (i: number) => checkpoint.readBlock(i) } : Array.from({ length: spec.numLayers }, (_, i) => checkpoint.readBlock(i));
      const params = blockPrunableParameters(spec);
      const validation = (): Window[] => evaluationWindows({ data: s.valid, format: "text", maxWindows: s.validWindows }, tokenizer, seqlen);
      let validationWindows: Window[] | undefined;

      // Taken once, when first needed: after the allocation has been read and checked.
      let evidence: GroupEvidence | undefined;
      const evidenceOf = Effect.suspend(() =>
        evidence
          ? Effect.succeed(evidence)
          : Effect.sync(() => log(`group evidence: ${request.importance}${request.importance === "l2" || request.importance === "random" ? "" : ` (loss gradient over ${calibration.length} windows)`}`)).pipe(
              Effect.flatMap(() =>
                attemptPromise(() => {
                  // l2 and random read the weights only: no pass to follow.
                  const counted = progress && request.importance !== "l2" && request.importance !== "random" ? progress : undefined;
                  counted?.("gradients", 0, spec.numLayers);
                  return groupEvidence(spec, globals, dense, request.importance, calibration, s.seed, streamed, counted ? (done, total) => counted("gradients", done, total) : undefined);
                }),
              ),
              Effect.tap((e) => Effect.sync(() => (evidence = e))),
            ),
      );
      const fusion = { ...DEFAULT_FUSION_LEARNING, ...(request.fusionSteps !== undefined ? { steps: request.fusionSteps } : {}) };
      const scoresAt = (ratios: readonly number[], quiet = false) =>
        Effect.gen(function* () {
          if (request.importance === "hywia") validationWindows ??= yield* attempt(validation);
          const e = yield* evidenceOf;
          return yield* attemptPromise(() =>
            groupScores(
              spec,
              globals,
              dense,
              e,
              { ratios, calibration, fusion, ...(validationWindows ? { validation: validationWindows } : {}) },
              {
                onStep: (step, loss) => {
                  if (step === 1) progress?.("fusion", 0, fusion.steps);
                  progress?.("fusion", step, fusion.steps);
                  if (!quiet && (step === 1 || step % 8 === 0 || step === fusion.steps)) log(`  fusion step ${step}/${fusion.steps}: calibration loss ${loss.toFixed(4)}`);
                },
                ...(progress ? { onTrial: (done: number, total: number) => progress("fusion trials", done, total) } : {}),
              },
              streamed,
            ),
          );
        });
      const restrict = (ratios: readonly number[]) =>
        attempt(() => {
          try {
            return restrictToBlocks(ratios, params, selected);
          } catch (e) {
            throw new UsageError({ problem: `--structured-blocks ${request.structuredBlocks}: ${(e as Error).message}` });
          }
        });

      // Per-block ratios: uniform, a method's allocation, or a file's block sparsities.
      let ratios: number[];
      let chosen: string | undefined;
      if (allocationFile) {
        const allocation = yield* attempt(() => readAllocationCsv(allocationFile, layoutOf(spec), { target }));
        ratios = blockSparsities(allocation);
        // A per-linear allocation (from an unstructured search) has no meaning per group:
        // whole groups go at one ratio per block, so each block takes its weighted mean. Said, not silent.
        const mixed = ratios.flatMap((r, block) => (allocation.some((e) => e.block === block && Math.abs(e.sparsity - r) > 1e-9) ? [block] : []));
        if (mixed.length > 0) {
          log(
            `${allocationFile}: the linears of ${mixed.length === 1 ? `block ${mixed[0]}` : `${mixed.length} blocks`} have different sparsities; structured pruning removes whole groups at one ratio per block, so each block takes the weighted mean of its linears (${mixed.slice(0, 4).map((b) => `block ${b}: ${ratios[b]!.toFixed(4)}`).join(", ")}${mixed.length > 4 ? ", ..." : ""})`,
          );
        }
      } else if (s.allocation === "uniform") {
        ratios = Array.from({ length: spec.numLayers }, () => target);
      } else {
        const plugin = yield* attemptPromise(() => loadPlugin(s.allocation));
        if (plugin.method.kind === "evolve") {
          return yield* new UsageError({ problem: `allocation ${plugin.name} is evolutionary: run evosparse search --structured ${request.importance} --method ${plugin.name}` });
        }
        const space = yield* attempt(() => loadSearchSpace(plugin, s.space));
        // The method sees the dense model's statistics under the run's metric, as for unstructured pruning.
        // Its passes over the dense model are followed (a grid's candidates are cut from the
        // dense blocks here, not pruned by the pruner).
        const pruner = yield* Effect.acquireRelease(
          Effect.sync(() => createPruner(model, { metric: s.metric, mode: "dense" }, progress ? { onPass: progress } : {})),
          (p) => Effect.sync(() => p.dispose()),
        );
        const context = yield* attemptPromise(() => methodContext(pruner, target, s.pattern, [plugin]));
        // A grid's candidates are compared with the scores at the uniform ratios (HyWIA's
        // fusion is learned once there), each cut at its own ratios.
        let base: Awaited<ReturnType<typeof groupScores>> | undefined;
        const result = yield* runFixedMethod(plugin, context, space, (batch: readonly BlockAllocation[]) =>
          Effect.gen(function* () {
            validationWindows ??= yield* attempt(validation);
            base ??= yield* scoresAt(Array.from({ length: spec.numLayers }, () => target), true);
            const windows = validationWindows;
            const scores = base.scores;
            progress?.("candidates", 0, batch.length);
            return yield* Effect.forEach(batch, (candidate, k) =>
              restrict(candidate).pipe(
                Effect.flatMap((r) => Effect.promise(() => cutFitness(spec, globals, dense, scores, r, windows, streamed))),
                Effect.tap((f) =>
                  Effect.sync(() => {
                    log(`  candidate ${k + 1}/${batch.length}: ${f.ok ? `validation perplexity ${f.value.toFixed(4)}` : `failed: ${f.error}`}`);
                    progress?.("candidates", k + 1, batch.length);
                  }),
                ),
              ),
            );
          }),
        );
        ratios = [...result.allocation];
        chosen = result.label;
      }
      ratios = yield* restrict(ratios);
      log(`ratios: ${ratios.map((r) => r.toFixed(4)).join(" ")}${selected.length < spec.numLayers ? ` (blocks ${request.structuredBlocks} pruned)` : ""}`);

      log(`scoring groups by ${request.importance} importance`);
      const { scores, fusion: fused } = yield* scoresAt(ratios);
      if (fused) log(`fusion: ${fused.chosen}${fused.trials.length ? ` (validation perplexity ${fused.trials.map((t) => `${t.label} ${t.ppl.toFixed(3)}`).join(", ")})` : ""}`);
      const cut = yield* attempt(() => {
        try {
          return removeAt(spec, dense, scores, ratios);
        } catch (e) {
          throw new UsageError({ problem: (e as Error).message });
        }
      });
      let blocks = cut.blocks;

      // A perplexity's options: its batch, and its windows counted as the step's progress from 0.
      const scored = (step: StructuredStep, windows: readonly Window[]) => {
        progress?.(step, 0, windows.length);
        return { batch: s.batch ?? 1, ...(progress ? { onProgress: (done: number, total: number) => progress(step, done, total) } : {}) };
      };
      const evaluate = (format: TextFormat, windows: Window[], label: string, step: StructuredStep, b: BlockList) =>
        Effect.acquireUseRelease(
          Effect.sync(() => scorerOf(cut.spec, globals, b, streamed)),
          (d) => attemptPromise(() => perplexity(d, windows, scored(step, windows))),
          (d) => Effect.sync(() => d.dispose()),
        ).pipe(
          Effect.tap((r) => checkFiniteLoss(r, s.model, s.eval!)),
          Effect.tap((r) => Effect.sync(() => log(`perplexity ${label}: ${r.ppl.toFixed(4)} (${format})`))),
        );
      let evalWindows: Window[] | undefined;
      let prunedPpl: number | undefined;
      if (s.eval) {
        evalWindows = yield* attempt(() => evaluationWindows({ data: s.eval!, format: s.evalFormat ?? "text", ...(s.evalWindows ? { maxWindows: s.evalWindows } : {}) }, tokenizer, seqlen));
        log(`evaluating on ${evalWindows.length} windows of ${s.eval}`);
        prunedPpl = (yield* evaluate(s.evalFormat ?? "text", evalWindows, "pruned", "eval pruned", blocks)).ppl;
      }

      let recovery: RecoveryReport | undefined;
      if (recover.steps > 0) {
        const tokens = yield* attempt(() => Int32Array.from(tokenizer.encode(recoveryText(recover.data, s.field ?? "text"))));
        log(`LoRA recovery: ${recover.steps} steps, rank ${recover.rank}, alpha ${recover.alpha}, lr ${recover.lr}, ${recover.batch} windows of ${seqlen} from ${recover.data}`);
        // Recovery trains the cut model resident (refused above when it would not fit).
        const held = Array.from({ length: cut.spec.numLayers }, (_, i) => blockAt(blocks, i));
        const result = yield* attemptPromise(() =>
          loraRecover(cut.spec, globals as HostGlobals, held, {
            rank: recover.rank,
            alpha: recover.alpha,
            steps: recover.steps,
            lr: recover.lr,
            batch: recover.batch,
            seqlen,
            tokens,
            seed: s.seed,
            ...(recover.checkpointEvery > 0 ? { checkpoint: { dir: recoveryDir, every: recover.checkpointEvery } } : {}),
            resume: request.resume ?? false,
            ...(progress ? { onStart: (step: number) => progress("recovery", step, recover.steps) } : {}),
            onStep: (l) => {
              progress?.("recovery", l.step, recover.steps);
              if (l.step === 1 || l.step % 25 === 0 || l.step === recover.steps) log(`  recovery step ${l.step}/${recover.steps}: loss ${l.loss.toFixed(4)}`);
            },
          }),
        );
        blocks = result.blocks;
        const after = evalWindows ? (yield* evaluate(s.evalFormat ?? "text", evalWindows, "after recovery", "eval recovered", blocks)).ppl : undefined;
        recovery = {
          steps: recover.steps,
          rank: recover.rank,
          alpha: recover.alpha,
          lr: recover.lr,
          batch: recover.batch,
          data: recover.data,
          adapterParameters: result.parameters,
          firstLoss: result.log[0]!.loss,
          lastLoss: result.log.at(-1)!.loss,
          ...(prunedPpl !== undefined ? { before: prunedPpl } : {}),
          ...(after !== undefined ? { after } : {}),
        };
      }

      let evaluation: PruneEvaluation | undefined;
      if (s.eval && evalWindows) {
        const denseResult = yield* Effect.acquireUseRelease(
          Effect.sync(() => scorerOf(spec, globals, dense, streamed)),
          (d) => attemptPromise(() => perplexity(d, evalWindows!, scored("eval dense", evalWindows!))),
          (d) => Effect.sync(() => d.dispose()),
        );
        const final = recovery?.after ?? prunedPpl!;
        const tokens = scoredTokens(evalWindows);
        evaluation = { data: s.eval, format: s.evalFormat ?? "text", seqlen, windows: evalWindows.length, tokens, dense: denseResult.ppl, pruned: final };
        log(`perplexity: dense ${denseResult.ppl.toFixed(4)}, pruned ${final.toFixed(4)}`);
      }

      const report: StructuredPruneReport = {
        model: s.model,
        structured: request.importance,
        target,
        allocation: s.allocation,
        ...(chosen ? { chosen } : {}),
        seed: s.seed,
        calibration: { source: s.calib, windows: calibration.length, seqlen },
        backend: backend.name,
        prunedBlocks: selected,
        ratios,
        parameters: cut.parameters,
        blocks: cut.removals.map((r, i) => ({
          block: i,
          kvHeadsRemoved: [...r.kvHeads].sort((a, b) => a - b),
          channelsRemoved: r.channels.length,
          ...blockShape(cut.spec, i),
        })),
        ...(fused
          ? {
              fusion: {
                chosen: fused.chosen,
                weights: fused.weights,
                learned: fused.learned,
                trials: fused.trials,
                ...(fused.losses.length ? { firstLoss: fused.losses[0]!, lastLoss: fused.losses.at(-1)! } : {}),
              },
            }
          : {}),
        ...(evaluation ? { evaluation } : {}),
        ...(recovery ? { recovery } : {}),
        out: request.out,
      };
      // The ratios as an allocation file: the same cut again with --allocation FILE.
      const layoutAllocation = perBlock(ratios, layoutOf(spec));
      // Blocks are read once each, in the file's name order (block 10 before block 2): counted as read.
      const written = blocks;
      let blocksWritten = 0;
      yield* exportHuggingFaceEffect(
        request.out,
        checkpoint,
        {
          count: cut.spec.numLayers,
          read: (i: number) => {
            progress?.("export", blocksWritten++, cut.spec.numLayers);
            return blockAt(written, i);
          },
        },
        { "allocation.csv": formatAllocationCsv(layoutAllocation), "report.json": JSON.stringify(report, null, 2) + "\n" },
        { overwrite: request.overwrite ?? false, command: "prune", spec: cut.spec },
      );
      progress?.("export", cut.spec.numLayers, cut.spec.numLayers);
      return report;
    }),
  );

/** Validation perplexity of the dense model cut at `ratios` by `scores`; a failure is the candidate's, recorded. */
const cutFitness = async (
  spec: ModelSpec,
  globals: Globals,
  dense: BlockList,
  scores: Parameters<typeof removeAt>[2],
  ratios: readonly number[],
  windows: readonly Window[],
  streamed: boolean,
): Promise<Fitness> => {
  try {
    const cut = removeAt(spec, dense, scores, ratios);
    return fitnessOk(await modelPerplexity(cut.spec, globals, cut.blocks, windows, 4, streamed));
  } catch (error) {
    return fitnessFailed((error as Error)?.message ?? String(error));
  }
};
