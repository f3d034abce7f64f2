/**
 * The dense model's per-block statistics, as the plain numbers plugins see
 * (MethodContext.statistics), measured lazily: a method that never asks for Fisher traces
 * never pays for the gradient passes.
 */
import type { Checkpoint } from "../checkpoint/types.ts";
import { Decoder } from "../model/decoder.ts";
import { blockTraces, fisherTraces } from "../prune/fisher.ts";
import { outlierShare } from "../prune/outliers.ts";
import type { Pruner } from "../prune/pruner.ts";
import type { BlockStatistics } from "./plugin.ts";

export class ModelStatistics implements BlockStatistics {
  private shares: number[] | undefined;
  private traces: number[] | undefined;
  private readonly scores = new Map<number, Float32Array>();

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly pruner: Pruner,
    /** Windows for the Fisher traces (the calibration windows). */
    private readonly calibration: readonly Int32Array[],
  ) {}

  private get blocks(): number {
    return this.checkpoint.spec.numLayers;
  }

  outlierShares(): readonly number[] {
    this.shares ??= Array.from({ length: this.blocks }, (_, b) =>
      outlierShare(this.checkpoint.spec.linears.map((name) => this.pruner.wandaScores(b, name))),
    );
    return this.shares;
  }

  fisherTraces(): readonly number[] {
    if (!this.traces) {
      const spec = this.checkpoint.spec;
      const decoder = Decoder.create(spec, this.checkpoint.readGlobals(), { numBlocks: spec.numLayers, load: (i) => this.checkpoint.readBlock(i) }, { trainable: true });
      try {
        this.traces = blockTraces(fisherTraces(decoder, this.calibration), spec.numLayers);
      } finally {
        decoder.dispose();
      }
    }
    return this.traces;
  }

  elementScores(block: number): Float32Array {
    let all = this.scores.get(block);
    if (!all) {
      const parts = this.checkpoint.spec.linears.map((name) => this.pruner.elementScores(block, name));
      all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let offset = 0;
      for (const p of parts) {
        all.set(p, offset);
        offset += p.length;
      }
      this.scores.set(block, all);
    }
    return all;
  }

  nonOutlierRatio(block: number, sparsity: number, pruned?: "excluded" | "zero"): number {
    return this.pruner.nonOutlierRatio(block, sparsity, pruned);
  }
}
