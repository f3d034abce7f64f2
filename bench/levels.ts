/**
 * `npm run bench -- levels`: what SparseGPT's levels (src/prune/levels.ts) cost at real
 * linear sizes, TinyLlama-1.1B's down and up projections, with a Hessian of realistic
 * structure (low rank plus the diagonal) and random weights:
 *  - building a linear's levels: pruned from the Hessian at each level (a factorisation a
 *    level) against one factor for all of them (sparseGptFactor), the two interleaved, the
 *    weights compared bit for bit;
 *  - storing a level at 70% in bfloat16: packed bytes against plain, and the unpacking rate
 *    a candidate's upload pays;
 *  - the factor kept on disk for levels made as a search reaches them: its bytes, and reading
 *    it back against making it again.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeFrom } from "../src/checkpoint/convert.ts";
import { nativeBlas } from "../src/backend/native-blas.ts";
import { packLevel, readFactorFile, unpackLevel, writeFactorFile } from "../src/prune/levels.ts";
import { sparseGptFactor, sparseGptPrune } from "../src/prune/sparsegpt.ts";
import { Rng } from "../src/rng.ts";

/** Levels built each way: enough for the factor's share to show, few enough for minutes. */
const LEVELS = [0.62, 0.66, 0.7, 0.74, 0.78];

const seconds = <T>(f: () => T): [T, number] => {
  const t = performance.now();
  const r = f();
  return [r, (performance.now() - t) / 1000];
};

/** H = A A^T + I with A [in, 64]: a Gram matrix with a spread spectrum, as calibration gives. */
const hessianOf = (inFeatures: number, rng: Rng): Float64Array => {
  const rank = 64;
  const a = Float64Array.from({ length: inFeatures * rank }, () => rng.next() - 0.5);
  const h = new Float64Array(inFeatures * inFeatures);
  for (let i = 0; i < inFeatures; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = 0; k < rank; k++) s += a[i * rank + k]! * a[j * rank + k]!;
      h[i * inFeatures + j] = s;
      h[j * inFeatures + i] = s;
    }
    h[i * inFeatures + i]! += 1;
  }
  return h;
};

export const levelsSection = (): void => {
  console.log("\n## SparseGPT's levels: building and storing them\n");
  if (!nativeBlas()) console.log("(the native kernel is not built: SparseGPT runs on JavaScript's float64 loops, far slower)\n");
  console.log(`| linear [in, out] | ${LEVELS.length} levels from the Hessian | factor once + ${LEVELS.length} solves | ratio | factor | same weights |`);
  console.log("|---|---:|---:|---:|---:|---|");
  const rng = new Rng(11);
  let last: Float32Array | undefined;
  let stored: { inFeatures: number; factorSeconds: number; upper: Float64Array } | undefined;
  for (const [inFeatures, outFeatures] of [[5632, 2048], [2048, 5632]] as const) {
    const h = hessianOf(inFeatures, rng);
    const w = Float32Array.from({ length: inFeatures * outFeatures }, () => rng.next() - 0.5);
    let fromHessian = 0;
    let same = true;
    const [factor, factorSeconds] = seconds(() => sparseGptFactor(h, inFeatures));
    let fromFactor = factorSeconds;
    // Interleaved, a level at a time each way, so both see the same machine.
    for (const sparsity of LEVELS) {
      const [a, ta] = seconds(() => sparseGptPrune(w, [inFeatures, outFeatures], h, { sparsity }, { threshold: "exact" }));
      const [b, tb] = seconds(() => sparseGptPrune(w, [inFeatures, outFeatures], factor, { sparsity }, { threshold: "exact" }));
      fromHessian += ta;
      fromFactor += tb;
      same &&= Buffer.from(a.weight.buffer).equals(Buffer.from(b.weight.buffer));
      if (sparsity === 0.7) last = b.weight;
    }
    stored ??= { inFeatures, factorSeconds, upper: factor.upper };
    console.log(`| [${inFeatures}, ${outFeatures}] | ${fromHessian.toFixed(1)} s | ${fromFactor.toFixed(1)} s | ${(fromHessian / fromFactor).toFixed(2)}x faster | ${factorSeconds.toFixed(1)} s | ${same ? "yes" : "NO"} |`);
  }
  const plain = encodeFrom("BF16", last!, 1, last!.length, false);
  const packed = packLevel(plain, 2);
  let pack = Infinity;
  let unpack = Infinity;
  for (let round = 0; round < 3; round++) {
    pack = Math.min(pack, seconds(() => packLevel(plain, 2))[1]);
    unpack = Math.min(unpack, seconds(() => unpackLevel(packed, 2, last!.length, "bench"))[1]);
  }
  const n = last!.length;
  console.log(
    `\nA level at 70% in bfloat16 ([2048, 5632], ${(n / 1e6).toFixed(1)}M weights): packed ${(packed.length / 2 ** 20).toFixed(1)} MiB against ${(plain.length / 2 ** 20).toFixed(1)} MiB plain ` +
      `(${(packed.length / plain.length).toFixed(2)}x, ${(packed.length / n).toFixed(2)} bytes a weight); packing ${(n / pack / 1e6).toFixed(0)}M weights/s, unpacking ${(n / unpack / 1e6).toFixed(0)}M weights/s (best of 3).`,
  );
  // The factor as the levels keep it: its upper triangle in float64, written once, read
  // back whenever a level of its linear is first asked for.
  const { inFeatures, factorSeconds, upper } = stored!;
  const dir = mkdtempSync(join(tmpdir(), "evosparse-bench-levels-"));
  try {
    const file = join(dir, "down.factor");
    writeFactorFile(file, upper, inFeatures);
    let read = Infinity;
    let same = true;
    for (let round = 0; round < 3; round++) {
      const [back, t] = seconds(() => readFactorFile(file, inFeatures));
      read = Math.min(read, t);
      same &&= Buffer.from(back.buffer).equals(Buffer.from(upper.buffer));
    }
    console.log(
      `The factor of [${inFeatures}, *] as stored: ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB (its upper triangle in float64); read back in ${read.toFixed(2)} s (best of 3) against ${factorSeconds.toFixed(1)} s to make it, ${same ? "the same bits" : "NOT the same bits"}.`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};
