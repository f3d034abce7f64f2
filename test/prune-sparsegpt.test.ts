import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DataError } from "../src/errors.ts";
import { applyMask, countPruned, unstructuredMask, type Shape2 } from "../src/prune/masks.ts";
import { wandaScores } from "../src/prune/scores.ts";
import { sparseGptFactor, sparseGptPrune as sparseGptPruneWith } from "../src/prune/sparsegpt.ts";
import { HessianAccumulator, InputNormAccumulator } from "../src/prune/stats.ts";
import { mulberry32 } from "./helpers/random-model.ts";
import { nativeCase, skipNotice } from "./helpers/backends.ts";

// ---------------------------------------------------------------------------------------
// An independent transcription of sparsegpt.py's fasterprune, statement by statement, in
// the reference's own layout: W is [out][in] (rows = output neurons, columns = inputs).
// H^-1 comes from Gauss-Jordan elimination rather than the Cholesky route of the code
// under test; the two agree up to rounding.
// ---------------------------------------------------------------------------------------
type Matrix = number[][];

const cholesky = (a: Matrix): Matrix => {
  const n = a.length;
  const l: Matrix = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i][j];
      for (let k = 0; k < j; k++) s -= l[i][k] * l[j][k];
      l[i][j] = i === j ? Math.sqrt(s) : s / l[j][j];
    }
  }
  return l;
};

const gaussJordanInverse = (a: Matrix): Matrix => {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
    [m[c], m[p]] = [m[p], m[c]];
    const pivot = m[c][c];
    for (let j = 0; j < 2 * n; j++) m[c][j] /= pivot;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r][c];
      for (let j = 0; j < 2 * n; j++) m[r][j] -= f * m[c][j];
    }
  }
  return m.map((row) => row.slice(n));
};

const referenceFasterprune = (
  weight: Matrix,
  hessian: Matrix,
  sparsity: number,
  prunen: number,
  prunem: number,
  blocksize: number,
  percdamp = 0.01,
): { W: Matrix; mask: boolean[][] } => {
  const W = weight.map((r) => r.slice());
  const H = hessian.map((r) => r.slice());
  const rows = W.length;
  const columns = W[0].length;
  for (let c = 0; c < columns; c++) {
    if (H[c][c] === 0) {
      H[c][c] = 1;
      for (let r = 0; r < rows; r++) W[r][c] = 0;
    }
  }
  let mean = 0;
  for (let c = 0; c < columns; c++) mean += H[c][c] / columns;
  for (let c = 0; c < columns; c++) H[c][c] += percdamp * mean;
  const lower = cholesky(gaussJordanInverse(H));
  const Hinv: Matrix = lower.map((_, i) => lower.map((row) => row[i])); // upper = L^T
  const mask: boolean[][] = W.map((r) => r.map(() => false));
  for (let i1 = 0; i1 < columns; i1 += blocksize) {
    const i2 = Math.min(i1 + blocksize, columns);
    const count = i2 - i1;
    const W1 = W.map((r) => r.slice(i1, i2));
    const Q1 = W1.map((r) => r.map(() => 0));
    const Err1 = W1.map((r) => r.map(() => 0));
    const d1 = Array.from({ length: count }, (_, i) => Hinv[i1 + i][i1 + i]);
    let mask1: boolean[][];
    if (prunen === 0) {
      const tmp = W1.map((r) => r.map((v, i) => v ** 2 / d1[i] ** 2));
      const thresh = tmp.flat().sort((a, b) => a - b)[Math.floor(rows * count * sparsity)];
      mask1 = tmp.map((r) => r.map((v) => v <= thresh));
    } else {
      mask1 = W1.map((r) => r.map(() => false));
    }
    for (let i = 0; i < count; i++) {
      const d = d1[i];
      if (prunen !== 0 && i % prunem === 0) {
        for (let r = 0; r < rows; r++) {
          const tmp = Array.from({ length: prunem }, (_, g) => ({ g, v: W1[r][i + g] ** 2 / d1[i + g] ** 2 }));
          tmp.sort((a, b) => a.v - b.v || a.g - b.g);
          for (const { g } of tmp.slice(0, prunen)) mask1[r][i + g] = true;
        }
      }
      for (let r = 0; r < rows; r++) {
        const w = W1[r][i];
        const q = mask1[r][i] ? 0 : w;
        Q1[r][i] = q;
        const err1 = (w - q) / d;
        for (let j = i; j < count; j++) W1[r][j] -= err1 * Hinv[i1 + i][i1 + j];
        Err1[r][i] = err1;
      }
    }
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < count; i++) {
        W[r][i1 + i] = Q1[r][i];
        mask[r][i1 + i] = mask1[r][i];
      }
      for (let c = i2; c < columns; c++) {
        let s = 0;
        for (let i = 0; i < count; i++) s += Err1[r][i] * Hinv[i1 + i][c];
        W[r][c] -= s;
      }
    }
  }
  return { W, mask };
};

// ---------------------------------------------------------------------------------------

interface Layer {
  readonly shape: Shape2;
  readonly weight: Float32Array;
  readonly x: Float32Array;
  readonly tokens: number;
  readonly hessian: Float64Array;
}

/** A random linear [in, out] with calibration activations; `dead` inputs are always zero. */
const randomLayer = (seed: number, inFeatures: number, outFeatures: number, tokens: number, dead: number[] = []): Layer => {
  const rand = mulberry32(seed);
  const x = new Float32Array(tokens * inFeatures).map(() => rand() * 2 - 1);
  for (const j of dead) for (let t = 0; t < tokens; t++) x[t * inFeatures + j] = 0;
  const weight = new Float32Array(inFeatures * outFeatures).map(() => rand() * 2 - 1);
  const acc = new HessianAccumulator(inFeatures);
  acc.add(x);
  return { shape: [inFeatures, outFeatures], weight, x, tokens, hessian: acc.hessian() };
};

const toReferenceLayout = ({ shape: [inFeatures, outFeatures], weight }: Layer): Matrix =>
  Array.from({ length: outFeatures }, (_, o) => Array.from({ length: inFeatures }, (_, i) => weight[i * outFeatures + o]));

const square = (h: Float64Array, n: number): Matrix => Array.from({ length: n }, (_, a) => Array.from(h.subarray(a * n, (a + 1) * n)));

/** ||X W - X W'||^2 on the calibration tokens. */
const reconstructionError = ({ x, tokens, shape: [inFeatures, outFeatures], weight }: Layer, pruned: Float32Array): number => {
  let total = 0;
  for (let t = 0; t < tokens; t++) {
    for (let o = 0; o < outFeatures; o++) {
      let y = 0;
      for (let i = 0; i < inFeatures; i++) y += x[t * inFeatures + i] * (weight[i * outFeatures + o] - pruned[i * outFeatures + o]);
      total += y * y;
    }
  }
  return total;
};

const layerCase = fc.record({
  seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  inFeatures: fc.integer({ min: 4, max: 48 }),
  outFeatures: fc.integer({ min: 4, max: 48 }),
  tokensPerInput: fc.integer({ min: 2, max: 4 }),
  blocksize: fc.integer({ min: 1, max: 64 }),
  sparsity: fc.double({ min: 0, max: 0.95, noNaN: true }),
});

// Both float64 routes: this file's loops, and LAPACK/BLAS through the native kernel.
const LINALG = [
  { linalg: "js" as const, missing: undefined },
  { linalg: "native" as const, missing: nativeCase.missing },
];

describe.each(LINALG)("sparseGptPrune with $linalg linear algebra", ({ linalg, missing }) => {
  const skip = skipNotice("SparseGPT on the native kernel", missing);
  const sparseGptPrune = (...args: Parameters<typeof sparseGptPruneWith>) =>
    sparseGptPruneWith(args[0], args[1], args[2], args[3], { ...args[4], linalg });
  it.skipIf(skip)("matches a literal transcription of sparsegpt.py (unstructured, several blocks, dead inputs)", () => {
    fc.assert(
      fc.property(layerCase, fc.boolean(), ({ seed, inFeatures, outFeatures, tokensPerInput, blocksize, sparsity }, withDead) => {
        const layer = randomLayer(seed, inFeatures, outFeatures, tokensPerInput * inFeatures, withDead ? [1, inFeatures - 1] : []);
        const ours = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { blocksize });
        const ref = referenceFasterprune(toReferenceLayout(layer), square(layer.hessian, inFeatures), sparsity, 0, 0, blocksize);
        let scale = 0;
        for (const row of ref.W) for (const v of row) scale = Math.max(scale, Math.abs(v));
        for (let i = 0; i < inFeatures; i++) {
          for (let o = 0; o < outFeatures; o++) {
            const e = i * outFeatures + o;
            expect(ours.keep[e]).toBe(ref.mask[o][i] ? 0 : 1);
            expect(Math.abs(ours.weight[e] - ref.W[o][i])).toBeLessThanOrEqual(1e-6 * scale);
          }
        }
        if (withDead) for (let o = 0; o < outFeatures; o++) expect(ours.weight[1 * outFeatures + o]).toBe(0);
      }),
      { numRuns: 25 },
    );
  });

  it.skipIf(skip)("matches the transcription for N:M, and every group of M inputs of every output keeps M - N", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 8 }).chain((m) =>
          fc.record({
            m: fc.constant(m),
            n: fc.integer({ min: 1, max: m - 1 }),
            groups: fc.integer({ min: 1, max: 6 }),
            blockGroups: fc.integer({ min: 1, max: 4 }),
            outFeatures: fc.integer({ min: 4, max: 32 }),
            seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
          }),
        ),
        ({ m, n, groups, blockGroups, outFeatures, seed }) => {
          const inFeatures = m * groups;
          const layer = randomLayer(seed, inFeatures, outFeatures, 3 * inFeatures);
          const blocksize = m * blockGroups;
          const ours = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { n, m }, { blocksize });
          const ref = referenceFasterprune(toReferenceLayout(layer), square(layer.hessian, inFeatures), 0, n, m, blocksize);
          for (let o = 0; o < outFeatures; o++) {
            for (let start = 0; start < inFeatures; start += m) {
              let pruned = 0;
              for (let r = 0; r < m; r++) {
                const e = (start + r) * outFeatures + o;
                expect(ours.keep[e]).toBe(ref.mask[o][start + r] ? 0 : 1);
                if (!ours.keep[e]) {
                  pruned++;
                  expect(ours.weight[e]).toBe(0);
                }
              }
              expect(pruned).toBe(n);
            }
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  it.skipIf(skip)("property: one factor serves every sparsity: each prune from it is the prune from the Hessian, bit for bit, dead inputs included", () => {
    fc.assert(
      fc.property(layerCase, fc.array(fc.double({ min: 0, max: 0.95, noNaN: true }), { minLength: 1, maxLength: 4 }), fc.boolean(), ({ seed, inFeatures, outFeatures, tokensPerInput, blocksize }, sparsities, withDead) => {
        const layer = randomLayer(seed, inFeatures, outFeatures, tokensPerInput * inFeatures, withDead ? [0, inFeatures - 2] : []);
        const hessian = layer.hessian.slice();
        const factor = sparseGptFactor(hessian, inFeatures, { linalg });
        // The Hessian is not modified when not consumed.
        expect(hessian).toEqual(layer.hessian);
        if (withDead) expect(factor.dead).toEqual([0, inFeatures - 2]);
        for (const sparsity of sparsities) {
          for (const threshold of ["reference", "exact"] as const) {
            const fromFactor = sparseGptPrune(layer.weight, layer.shape, factor, { sparsity }, { blocksize, threshold });
            const fromHessian = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { blocksize, threshold });
            expect(Buffer.from(fromFactor.weight.buffer).equals(Buffer.from(fromHessian.weight.buffer))).toBe(true);
            expect(fromFactor.keep).toEqual(fromHessian.keep);
            expect(fromFactor.loss).toBe(fromHessian.loss);
            expect(fromFactor.damping).toBe(fromHessian.damping);
          }
        }
        expect(() => sparseGptPrune(layer.weight, [inFeatures + 1, outFeatures], factor, { sparsity: 0.5 })).toThrow(/a factor of \d+ input features/);
      }),
      { numRuns: 25 },
    );
  });

  it.skipIf(skip)("reports sparsegpt.py's error, which equals 1/2 sum_o dW_o^T H dW_o for the damped H", () => {
    // The OBS updates make the final change dW = -U^T E with H^-1 = U^T U, so dW^T H dW = |E|^2:
    // this checks the Cholesky factors and both the in-block and the lazy updates. The weights
    // come back as float32, so each output's quadratic is only known up to the rounding r
    // (|r_i| <= 2^-24 |w_i|): |q(dW + r) - q(dW)| <= 2 sqrt(q(dW) q(r)) + q(r), q(r) <= tr(H) |r|^2.
    fc.assert(
      fc.property(layerCase, ({ seed, inFeatures, outFeatures, tokensPerInput, blocksize, sparsity }) => {
        const layer = randomLayer(seed, inFeatures, outFeatures, tokensPerInput * inFeatures);
        const result = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { blocksize });
        let trace = 0;
        for (let a = 0; a < inFeatures; a++) trace += layer.hessian[a * inFeatures + a] + result.damping;
        let quadratic = 0;
        let roundingBound = 0;
        for (let o = 0; o < outFeatures; o++) {
          let q = 0;
          let r2 = 0;
          for (let a = 0; a < inFeatures; a++) {
            const da = result.weight[a * outFeatures + o] - layer.weight[a * outFeatures + o];
            r2 += (2 ** -24 * result.weight[a * outFeatures + o]) ** 2;
            for (let b = 0; b < inFeatures; b++) {
              const db = result.weight[b * outFeatures + o] - layer.weight[b * outFeatures + o];
              q += da * (layer.hessian[a * inFeatures + b] + (a === b ? result.damping : 0)) * db;
            }
          }
          quadratic += q;
          roundingBound += 2 * Math.sqrt(q * trace * r2) + trace * r2;
        }
        expect(Math.abs(result.loss - quadratic / 2)).toBeLessThanOrEqual(roundingBound / 2 + 1e-9 * quadratic);
      }),
      { numRuns: 30 },
    );
  });

  it.skipIf(skip)("prunes per column block: floor(numel * s) + 1 entries (reference rule) or floor(numel * s) (exact)", () => {
    // sparsegpt.py thresholds the whole block (every output x the block's inputs) at the
    // value of rank floor(numel * s) and prunes everything <= it, so the ratio is met per
    // block overall, one entry above the floor, while single output neurons vary.
    fc.assert(
      fc.property(layerCase, ({ seed, inFeatures, outFeatures, blocksize, sparsity }) => {
        const layer = randomLayer(seed, inFeatures, outFeatures, 2 * inFeatures);
        const reference = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { blocksize });
        const exact = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { blocksize, threshold: "exact" });
        for (let i1 = 0; i1 < inFeatures; i1 += blocksize) {
          const block = (keep: Uint8Array) => keep.subarray(i1 * outFeatures, Math.min(i1 + blocksize, inFeatures) * outFeatures);
          const numel = block(reference.keep).length;
          expect(countPruned(block(reference.keep))).toBe(Math.floor(numel * sparsity) + 1);
          expect(countPruned(block(exact.keep))).toBe(Math.floor(numel * sparsity));
        }
        for (let e = 0; e < layer.weight.length; e++) if (!exact.keep[e]) expect(exact.weight[e]).toBe(0);
      }),
      { numRuns: 30 },
    );
  });

  it.skipIf(skip)("has a lower reconstruction error than Wanda at the same pruned count on realistic layers", () => {
    // Not a theorem: on random layers (tokens >= 4 x inputs, up to 70% sparsity) SparseGPT
    // lost to Wanda in about 0.15% of layers with equally scaled inputs, and in about 5%
    // when input scales spread over e^-2..e^2, where 1% damping over-regularises the small
    // inputs. So this asserts what holds robustly: it wins on almost every layer of a batch
    // and in total. s = (k * out + 0.5) / (in * out) makes both prune exactly k per output
    // on average: Wanda k of each output neuron, SparseGPT k * out of the single block.
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (batchSeed) => {
        const rand = mulberry32(batchSeed);
        let wins = 0;
        let sparseGptTotal = 0;
        let wandaTotal = 0;
        const layers = 12;
        for (let l = 0; l < layers; l++) {
          const inFeatures = 8 + Math.floor(rand() * 41);
          const outFeatures = 4 + Math.floor(rand() * 45);
          const tokens = Math.ceil((4 + 4 * rand()) * inFeatures);
          const k = 1 + Math.floor(rand() * Math.floor(0.7 * inFeatures));
          const sparsity = (k * outFeatures + 0.5) / (inFeatures * outFeatures);
          const layer = randomLayer(Math.floor(rand() * 2 ** 31), inFeatures, outFeatures, tokens);
          const norms = new InputNormAccumulator(inFeatures);
          norms.add(layer.x);
          const wandaKeep = unstructuredMask(wandaScores(layer.weight, layer.shape, norms.norms()), layer.shape, "output", sparsity);
          const sparseGpt = sparseGptPrune(layer.weight, layer.shape, layer.hessian, { sparsity }, { threshold: "exact" });
          expect(countPruned(sparseGpt.keep)).toBe(countPruned(wandaKeep));
          const wandaError = reconstructionError(layer, applyMask(layer.weight, wandaKeep));
          const sparseGptError = reconstructionError(layer, sparseGpt.weight);
          if (sparseGptError <= wandaError * (1 + 1e-9)) wins++;
          sparseGptTotal += sparseGptError;
          wandaTotal += wandaError;
        }
        expect(wins).toBeGreaterThanOrEqual(layers - 1);
        expect(sparseGptTotal).toBeLessThan(wandaTotal);
      }),
      { numRuns: 4, seed: 20240601 },
    );
  });

  it.skipIf(skip)("retries with more damping when H + damp I is not positive definite, then fails clearly", () => {
    // Indefinite: eigenvalues 6 and -4; positive definite once the damping exceeds 4.
    const indefinite = Float64Array.from([1, 5, 5, 1]);
    const result = sparseGptPrune(Float32Array.from([1, 2, 3, 4]), [2, 2], indefinite, { sparsity: 0.5 }, { threshold: "exact" });
    expect(result.damping).toBeCloseTo(10, 12);
    expect(countPruned(result.keep)).toBe(2);
    expect(() => sparseGptPrune(new Float32Array(4), [2, 2], Float64Array.from([1, 50, 50, 1]), { sparsity: 0.5 })).toThrow(DataError);
    expect(() => sparseGptPrune(new Float32Array(4), [2, 2], Float64Array.from([-1, 0, 0, -1]), { sparsity: 0.5 }, { source: "block 0 q" })).toThrow(
      /block 0 q: the Hessian is not positive definite/,
    );
    expect(() => sparseGptPrune(new Float32Array(4), [2, 2], Float64Array.from([1, NaN, NaN, 1]), { sparsity: 0.5 })).toThrow(DataError);
  });

  it.skipIf(skip)("rejects inconsistent arguments with RangeError", () => {
    const w = new Float32Array(8);
    const h = Float64Array.from({ length: 16 }, (_, e) => (e % 5 === 0 ? 1 : 0));
    expect(() => sparseGptPrune(w, [4, 2], h, { sparsity: 1 })).toThrow(RangeError);
    expect(() => sparseGptPrune(w, [4, 3], h, { sparsity: 0.5 })).toThrow(RangeError);
    expect(() => sparseGptPrune(w, [4, 2], h.subarray(0, 9), { sparsity: 0.5 })).toThrow(RangeError);
    expect(() => sparseGptPrune(w, [4, 2], h, { n: 2, m: 4 }, { blocksize: 6 })).toThrow(/multiple of M/);
    expect(() => sparseGptPrune(w, [4, 2], h, { n: 1, m: 3 })).toThrow(/not divisible/);
    expect(() => sparseGptPrune(w, [4, 2], h, { sparsity: 0.5 }, { blocksize: 0 })).toThrow(RangeError);
  });
});

describe.skipIf(skipNotice("SparseGPT on the native kernel", nativeCase.missing))("SparseGPT's native route", () => {
  it("gives the JavaScript route's masks and weights on a layer of several 128-input blocks", () => {
    const layer = randomLayer(31, 520, 40, 600, [7]);
    for (const target of [{ sparsity: 0.6 }, { n: 2, m: 4 }] as const) {
      const js = sparseGptPruneWith(layer.weight, layer.shape, layer.hessian, target, { linalg: "js" });
      const native = sparseGptPruneWith(layer.weight, layer.shape, layer.hessian, target, { linalg: "native" });
      expect(native.keep).toEqual(js.keep);
      let scale = 0;
      let worst = 0;
      for (let e = 0; e < js.weight.length; e++) {
        scale = Math.max(scale, Math.abs(js.weight[e]));
        worst = Math.max(worst, Math.abs(js.weight[e] - native.weight[e]));
      }
      expect(worst).toBeLessThanOrEqual(1e-6 * scale);
      expect(Math.abs(native.loss - js.loss)).toBeLessThanOrEqual(1e-9 * js.loss);
    }
  });
});
