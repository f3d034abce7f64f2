import * as tf from "@tensorflow/tfjs";
import type { Checkpoint } from "../checkpoint/types.ts";
import { Decoder } from "../model/decoder.ts";
import { collectBlockStats } from "./collect.ts";
import { fisherTraces } from "./fisher.ts";
import { nonOutlierRatio, OWL_M, outlierShare } from "./outliers.ts";
import { magnitudeScores, wandaScores } from "./scores.ts";
import type { Shape2 } from "./masks.ts";

export interface LinearStatistics {
  readonly block: number;
  readonly linear: string;
  readonly params: number;
  /** Share of this linear's scores above M times their mean. */
  readonly outlierShare: number;
  /** OWL's D of the whole block (all its linears' scores together). */
  readonly blockOutlierShare: number;
  /** MRP's non-outlier ratio of the block, on the dense weights. */
  readonly blockNonOutlierRatio: number;
  /** Mean over calibration windows of the sum of squared loss gradients over the weights. */
  readonly fisherTrace: number;
}

/**
 * The per-block and per-linear statistics that OWL, MRP and MSP start from, measured on
 * the dense model: element scores from calibration inputs (Wanda or magnitude), their
 * outlier shares, and Fisher traces from the same calibration windows.
 */
export const layerStatistics = (
  checkpoint: Checkpoint,
  calibration: readonly Int32Array[],
  options: { readonly metric: "wanda" | "magnitude"; readonly m?: number; readonly onBlock?: (block: number) => void },
): LinearStatistics[] => {
  const spec = checkpoint.spec;
  const source = { numBlocks: spec.numLayers, load: (i: number) => checkpoint.readBlock(i) };
  const decoder = Decoder.create(spec, checkpoint.readGlobals(), source, { trainable: true });
  const m = options.m ?? OWL_M;
  try {
    const seqlen = calibration[0]!.length;
    let inputs = calibration.map((w) => decoder.embed(w, 1, seqlen));
    const rows: Omit<LinearStatistics, "fisherTrace">[] = [];
    for (let b = 0; b < spec.numLayers; b++) {
      const { stats, outputs } = collectBlockStats(decoder, b, inputs, calibration.map(() => 1), seqlen, { hessian: false });
      tf.dispose(inputs);
      inputs = outputs;
      const host = checkpoint.readBlock(b);
      const scores = spec.linears.map((name) => {
        const w = host.linears[name]!.weight;
        return options.metric === "wanda"
          ? wandaScores(w.data, w.shape as unknown as Shape2, stats.get(name)!.norms.norms())
          : magnitudeScores(w.data);
      });
      const blockD = outlierShare(scores, m);
      const blockNor = nonOutlierRatio(scores, scores.map((s) => new Uint8Array(s.length).fill(1)), m);
      spec.linears.forEach((name, k) => {
        rows.push({ block: b, linear: name, params: scores[k]!.length, outlierShare: outlierShare([scores[k]!], m), blockOutlierShare: blockD, blockNonOutlierRatio: blockNor });
      });
      options.onBlock?.(b);
    }
    tf.dispose(inputs);
    const traces = fisherTraces(decoder, calibration);
    return rows.map((r) => ({ ...r, fisherTrace: traces.get(`${r.block}.${r.linear}`)! }));
  } finally {
    decoder.dispose();
  }
};
