/**
 * Group importances (src/prune/group-importance.ts) against an independent route: a
 * group's weights are exactly what zeroing it (groups.ts) changes, so its l2 norm, Taylor
 * sums and |Taylor sum| are computed here from that difference, on every architecture.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { HostBlock, HostTensor } from "../src/model/spec.ts";
import { blockShape, linearShapes } from "../src/model/spec.ts";
import { groupCounts, groupImportance, groupParameters, removalOf, GROUP_IMPORTANCE_KINDS } from "../src/prune/group-importance.ts";
import { NO_REMOVAL, zeroGroups, type GroupRemoval } from "../src/prune/groups.ts";
import { FAMILY_CASES, mulberry32, randomModel } from "./helpers/random-model.ts";

/** A block of the same shapes with random values: stands in for the loss gradient. */
const randomLike = (b: HostBlock, seed: number): HostBlock => {
  const random = mulberry32(seed);
  const like = (t: HostTensor): HostTensor => ({ shape: t.shape, data: t.data.map(() => 2 * random() - 1) });
  return {
    ...b,
    linears: Object.fromEntries(Object.entries(b.linears).map(([n, l]) => [n, { weight: like(l.weight), ...(l.bias ? { bias: like(l.bias) } : {}) }])),
  };
};

/** Over every weight and bias the zeroing changed: sum |d·g|, sum d·g and sum d², with d the original value. */
const changedBy = (before: HostBlock, after: HostBlock, gradient: HostBlock) => {
  let abs = 0;
  let signed = 0;
  let squares = 0;
  for (const [name, l] of Object.entries(before.linears)) {
    const parts: Array<[HostTensor, HostTensor, HostTensor]> = [[l.weight, after.linears[name]!.weight, gradient.linears[name]!.weight]];
    if (l.bias) parts.push([l.bias, after.linears[name]!.bias!, gradient.linears[name]!.bias!]);
    for (const [w, z, g] of parts) {
      for (let e = 0; e < w.data.length; e++) {
        const d = w.data[e]! - z.data[e]!;
        abs += Math.abs(d * g.data[e]!);
        signed += d * g.data[e]!;
        squares += d * d;
      }
    }
  }
  return { abs, signed: Math.abs(signed), squares: Math.sqrt(squares) };
};

describe("group importance", () => {
  it.each(FAMILY_CASES)("%s: element, vector and l2 are the Taylor sums and norm of exactly the weights zeroing the group changes", (family) => {
    const model = randomModel(family, 600 + FAMILY_CASES.indexOf(family));
    const block = 1;
    const weights = model.blocks[block]!;
    const gradient = randomLike(weights, 9);
    const shape = blockShape(model.spec, block);
    const [element, vector, l2] = (["element", "vector", "l2"] as const).map((kind) => groupImportance(model.spec, block, weights, gradient, kind));
    const check = (removal: GroupRemoval, at: number, kindOf: "kvHeads" | "channels") => {
      const removals = model.blocks.map((_, i) => (i === block ? removal : NO_REMOVAL));
      const zeroed = zeroGroups(model.spec, model.blocks, removals)[block]!;
      const want = changedBy(weights, zeroed, gradient);
      expect(element![kindOf][at]).toBeCloseTo(want.abs, 9);
      expect(vector![kindOf][at]).toBeCloseTo(want.signed, 9);
      expect(l2![kindOf][at]).toBeCloseTo(want.squares, 9);
      expect(element![kindOf][at]).toBeGreaterThanOrEqual(vector![kindOf][at]! - 1e-12);
    };
    // A block's only key/value head cannot be removed (nor zeroed as a removal): nothing to compare then.
    if (shape.numKvHeads > 1) for (let g = 0; g < shape.numKvHeads; g++) check({ kvHeads: [g], channels: [] }, g, "kvHeads");
    for (const c of [0, 3, shape.intermediateSize - 1]) check({ kvHeads: [], channels: [c] }, c, "channels");
  });

  it("random is fixed by the seed; the Taylor kinds refuse to run without gradients", () => {
    const model = randomModel("llama-gqa", 3);
    const a = groupImportance(model.spec, 0, model.blocks[0]!, undefined, "random", 5);
    expect(groupImportance(model.spec, 0, model.blocks[0]!, undefined, "random", 5)).toEqual(a);
    expect(groupImportance(model.spec, 0, model.blocks[0]!, undefined, "random", 6)).not.toEqual(a);
    expect(() => groupImportance(model.spec, 0, model.blocks[0]!, undefined, "element")).toThrow(/needs the gradients/);
    expect(GROUP_IMPORTANCE_KINDS).toContain("vector");
  });

  it("removalOf takes the lowest-scoring groups of each kind, ties to the lower index, and never empties a kind", () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 40 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (heads, channels, share) => {
          const scores = { kvHeads: Float64Array.from(heads), channels: Float64Array.from(channels) };
          const counts = { kvHeads: Math.floor(share * (heads.length - 1)), channels: Math.floor(share * (channels.length - 1)) };
          const removal = removalOf(scores, counts);
          for (const [removed, all, count] of [[removal.kvHeads, heads, counts.kvHeads], [removal.channels, channels, counts.channels]] as const) {
            expect(removed.length).toBe(count);
            const cut = Math.max(...removed.map((i) => all[i]!), -Infinity);
            all.forEach((v, i) => {
              if (!removed.includes(i)) expect(v).toBeGreaterThanOrEqual(cut);
            });
          }
        },
      ),
    );
    expect(() => removalOf({ kvHeads: new Float64Array(2), channels: new Float64Array(2) }, { kvHeads: 2, channels: 0 })).toThrow(/leave a kind empty/);
  });

  it("groupCounts: floor(ratio x heads) head groups, then channels up to the block's share, within one channel of it (property)", () => {
    const models = [randomModel("llama-gqa", 3), randomModel("gpt2", 3), randomModel("opt-pre", 3)];
    fc.assert(
      fc.property(fc.constantFrom(...models), fc.double({ min: 0, max: 0.999, noNaN: true }), (model, ratio) => {
        const spec = model.spec;
        const shape = blockShape(spec, 0);
        const counts = groupCounts(spec, 0, ratio);
        const size = groupParameters(spec, 0);
        const blockWeights = Object.values(linearShapes(spec, 0)).reduce((n, [i, o]) => n + i * o, 0);
        // The group sizes add up to the block's prunable weights.
        expect(shape.numKvHeads * size.kvHead + shape.intermediateSize * size.channel).toBe(blockWeights);
        expect(counts.kvHeads).toBe(Math.min(Math.floor(shape.numKvHeads * ratio + 1e-9), shape.numKvHeads - 1));
        const removed = counts.kvHeads * size.kvHead + counts.channels * size.channel;
        expect(removed).toBeLessThanOrEqual(ratio * blockWeights + 1e-6);
        if (counts.channels < shape.intermediateSize - 1) expect(removed).toBeGreaterThan(ratio * blockWeights - size.channel - 1e-6);
      }),
    );
    expect(() => groupCounts(models[0]!.spec, 0, 1)).toThrow(/outside \[0, 1\)/);
    expect(() => groupCounts(models[0]!.spec, 0, -0.1)).toThrow(/outside \[0, 1\)/);
  });
});
