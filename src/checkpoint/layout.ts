import { linearShapes, type HostBlock, type HostGlobals, type HostNorm, type HostTensor, type ModelSpec } from "../model/spec.ts";
import type { Architecture, NormNames, TensorBinding } from "./architectures/architecture.ts";

/** One weight of the model: its name in the file, whether the file stores it transposed, its model-side shape. */
export interface Slot {
  readonly name: string;
  readonly transposed: boolean;
  readonly shape: readonly number[];
}

export interface NormSlots {
  readonly weight: Slot;
  readonly bias?: Slot;
}

export interface BlockSlots {
  readonly attnNorm: NormSlots;
  readonly mlpNorm: NormSlots;
  readonly linears: Readonly<Record<string, { readonly weight: Slot; readonly bias?: Slot }>>;
}

export interface GlobalSlots {
  readonly embed: Slot;
  readonly positions?: Slot;
  readonly finalNorm?: NormSlots;
  readonly lmHead?: Slot;
  readonly projectIn?: Slot;
  readonly projectOut?: Slot;
}

const plain = (name: string, shape: readonly number[]): Slot => ({ name, transposed: false, shape });
const bound = (b: TensorBinding, shape: readonly number[]): Slot => ({ name: b.name, transposed: b.transposed, shape });
const norm = (n: NormNames, dim: number): NormSlots => ({
  weight: plain(n.weight, [dim]),
  ...(n.bias ? { bias: plain(n.bias, [dim]) } : {}),
});

/** The shape a slot has in the file (reversed when the file stores it transposed). */
export const fileShape = (s: Slot): readonly number[] => (s.transposed ? [...s.shape].reverse() : s.shape);

export const globalSlots = (arch: Architecture, spec: ModelSpec, prefix: string): GlobalSlots => {
  const g = arch.globalNames(spec, prefix);
  const pos = spec.positions;
  return {
    embed: plain(g.embed, [spec.vocabSize, spec.embedDim]),
    ...(g.positions && pos.kind === "learned"
      ? { positions: plain(g.positions, [spec.maxPositions + pos.offset, spec.hiddenSize]) }
      : {}),
    ...(g.finalNorm ? { finalNorm: norm(g.finalNorm, spec.hiddenSize) } : {}),
    ...(g.lmHead ? { lmHead: bound(g.lmHead, [spec.embedDim, spec.vocabSize]) } : {}),
    ...(g.projectIn ? { projectIn: bound(g.projectIn, [spec.embedDim, spec.hiddenSize]) } : {}),
    ...(g.projectOut ? { projectOut: bound(g.projectOut, [spec.hiddenSize, spec.embedDim]) } : {}),
  };
};

export const blockSlots = (arch: Architecture, spec: ModelSpec, prefix: string, block: number): BlockSlots => {
  const b = arch.blockNames(spec, prefix, block);
  const shapes = linearShapes(spec, block);
  const linears: Record<string, { weight: Slot; bias?: Slot }> = {};
  for (const name of spec.linears) {
    const names = b.linears[name];
    const shape = shapes[name];
    if (!names || !shape) throw new Error(`architecture table lacks linear ${name}`);
    linears[name] = {
      weight: bound(names.weight, shape),
      ...(names.bias ? { bias: plain(names.bias, [shape[1]]) } : {}),
    };
  }
  return { attnNorm: norm(b.attnNorm, spec.hiddenSize), mlpNorm: norm(b.mlpNorm, spec.hiddenSize), linears };
};

/** Every slot of the model, for completeness checks against a file's tensor list. */
export const allSlots = (g: GlobalSlots, blocks: readonly BlockSlots[]): Slot[] => {
  const out: Slot[] = [];
  const addNorm = (n?: NormSlots) => {
    if (!n) return;
    out.push(n.weight);
    if (n.bias) out.push(n.bias);
  };
  out.push(g.embed);
  for (const s of [g.positions, g.lmHead, g.projectIn, g.projectOut]) if (s) out.push(s);
  addNorm(g.finalNorm);
  for (const b of blocks) {
    addNorm(b.attnNorm);
    addNorm(b.mlpNorm);
    for (const l of Object.values(b.linears)) {
      out.push(l.weight);
      if (l.bias) out.push(l.bias);
    }
  }
  return out;
};

/** Every slot of a block, in the order blockEntries pairs them. */
export const slotList = (slots: BlockSlots): Slot[] => {
  const out: Slot[] = [];
  const addNorm = (s: NormSlots) => {
    out.push(s.weight);
    if (s.bias) out.push(s.bias);
  };
  addNorm(slots.attnNorm);
  addNorm(slots.mlpNorm);
  for (const s of Object.values(slots.linears)) {
    out.push(s.weight);
    if (s.bias) out.push(s.bias);
  }
  return out;
};

/** Pairs every slot of a block with the host tensor that fills it (for writers). */
export const blockEntries = (slots: BlockSlots, block: HostBlock): Array<[Slot, HostTensor]> => {
  const out: Array<[Slot, HostTensor]> = [];
  const addNorm = (s: NormSlots, n: HostNorm) => {
    out.push([s.weight, n.weight]);
    if (s.bias && n.bias) out.push([s.bias, n.bias]);
  };
  addNorm(slots.attnNorm, block.attnNorm);
  addNorm(slots.mlpNorm, block.mlpNorm);
  for (const [name, s] of Object.entries(slots.linears)) {
    const l = block.linears[name];
    if (!l) throw new Error(`block lacks linear ${name}`);
    out.push([s.weight, l.weight]);
    if (s.bias && l.bias) out.push([s.bias, l.bias]);
  }
  return out;
};

export const globalEntries = (slots: GlobalSlots, g: HostGlobals): Array<[Slot, HostTensor]> => {
  const out: Array<[Slot, HostTensor]> = [[slots.embed, g.embed]];
  const pairs: Array<[Slot | undefined, HostTensor | undefined]> = [
    [slots.positions, g.positions],
    [slots.lmHead, g.lmHead],
    [slots.projectIn, g.projectIn],
    [slots.projectOut, g.projectOut],
    [slots.finalNorm?.weight, g.finalNorm?.weight],
    [slots.finalNorm?.bias, g.finalNorm?.bias],
  ];
  for (const [s, t] of pairs) if (s && t) out.push([s, t]);
  return out;
};
