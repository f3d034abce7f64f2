import { Rng } from "../rng.ts";
import { linearShapes, type HostBlock, type HostGlobals, type HostTensor, type ModelSpec } from "../model/spec.ts";

const normal = (rng: Rng, shape: readonly number[], std: number): HostTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = rng.normal() * std;
  return { shape, data };
};

const filled = (shape: readonly number[], value: number): HostTensor => ({
  shape,
  data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(value),
});

/**
 * GPT-2 style initialisation: N(0, 0.02) everywhere, the projections that write into the
 * residual stream (attention output, MLP down) scaled by 1/sqrt(2 * layers) so the
 * residual's variance does not grow with depth; norms start at 1.
 */
export const initWeights = (spec: ModelSpec, seed: number): { globals: HostGlobals; blocks: HostBlock[] } => {
  const rng = new Rng(seed);
  const std = 0.02;
  const residualStd = std / Math.sqrt(2 * spec.numLayers);
  const biased = new Set(spec.biasedLinears ?? []);
  const normOf = () => ({
    weight: filled([spec.hiddenSize], 1),
    ...(spec.norm === "layer" ? { bias: filled([spec.hiddenSize], 0) } : {}),
  });
  const blocks = Array.from({ length: spec.numLayers }, (_, i): HostBlock => {
    const r = rng.split(`block${i}`);
    const shapes = linearShapes(spec, i);
    const linears: Record<string, { weight: HostTensor; bias?: HostTensor }> = {};
    for (const name of spec.linears) {
      const shape = shapes[name]!;
      const writesResidual = name === spec.roles.o || name === spec.roles.down;
      linears[name] = {
        weight: normal(r.split(name), shape, writesResidual ? residualStd : std),
        ...(biased.has(name) ? { bias: filled([shape[1]], 0) } : {}),
      };
    }
    return { attnNorm: normOf(), mlpNorm: normOf(), linears };
  });
  const g = rng.split("globals");
  const globals: HostGlobals = {
    embed: normal(g.split("embed"), [spec.vocabSize, spec.embedDim], std),
    ...(spec.finalNorm ? { finalNorm: normOf() } : {}),
    ...(spec.tiedEmbeddings ? {} : { lmHead: normal(g.split("head"), [spec.embedDim, spec.vocabSize], std) }),
    ...(spec.positions.kind === "learned"
      ? { positions: normal(g.split("positions"), [spec.maxPositions + spec.positions.offset, spec.hiddenSize], std) }
      : {}),
  };
  return { globals, blocks };
};
