/**
 * The native backend: OpenBLAS products under tfjs. The addon's arguments are checked
 * (never a crash, whatever it is handed), its kernels agree with the cpu backend on every
 * shape tfjs can send them. The float64 references of every architecture, the gradients,
 * stories260K's goldens and a prune + eval round trip run on native in model.test.ts,
 * stories260k.test.ts and backend-round-trip.test.ts.
 */
import * as tf from "@tensorflow/tfjs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { blasThreadsFor, nativeBlas } from "../src/backend/native-blas.ts";
import { spawnSync } from "node:child_process";
import { nativeCase, skipNotice } from "./helpers/backends.ts";
import { bin } from "./helpers/embedded.ts";

const skip = skipNotice("the native backend", nativeCase.missing);

describe("without the native kernel", () => {
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [bin, "eval", "--data", "brown:test", "--max-windows", "1", "--seqlen", "64", ...args], {
      encoding: "utf8",
      env: { ...process.env, EVOSPARSE_SKIP_NATIVE: "1" },
    });

  it("auto runs on wasm and its backend line says what would enable the kernel", () => {
    const r = run();
    expect(r.status).toBe(0);
    const line = r.stderr.split("\n").find((l) => l.startsWith("backend:"));
    expect(line).toMatch(/^backend: wasm \(tfjs-backend-wasm; passed over: .*native.*; faster: the native BLAS kernel is switched off/);
  });

  it("--backend native fails in one clear line", () => {
    const r = run("--backend", "native");
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split("\n").filter((l) => l.startsWith("evosparse:"))).toEqual([
      expect.stringMatching(/^evosparse: backend native: .*native BLAS kernel is switched off/),
    ]);
  });
});

describe("the thread policy", () => {
  it("gives one process every core and splits them among workers, at least one each", () => {
    expect(blasThreadsFor(1, 16)).toBe(16);
    expect(blasThreadsFor(4, 16)).toBe(4);
    expect(blasThreadsFor(3, 16)).toBe(5);
    expect(blasThreadsFor(32, 16)).toBe(1);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 256 }), (share, cores) => {
        const t = blasThreadsFor(share, cores);
        expect(t).toBeGreaterThanOrEqual(1);
        if (share <= cores) expect(t * share).toBeLessThanOrEqual(cores);
      }),
    );
  });
});

describe.skipIf(skip)("the native kernel's arguments", () => {
  const blas = nativeBlas()!;

  it("computes op(A) op(B) for every transpose and batch stride, as a plain loop does", () => {
    fc.assert(
      fc.property(
        fc.record({
          m: fc.integer({ min: 1, max: 9 }),
          n: fc.integer({ min: 1, max: 9 }),
          k: fc.integer({ min: 0, max: 9 }),
          batch: fc.integer({ min: 1, max: 3 }),
          ta: fc.boolean(),
          tb: fc.boolean(),
          broadcastA: fc.boolean(),
          broadcastB: fc.boolean(),
          seed: fc.integer({ min: 1, max: 1e6 }),
        }),
        ({ m, n, k, batch, ta, tb, broadcastA, broadcastB, seed }) => {
          let s = seed;
          const next = () => ((s = (s * 16807) % 2147483647) / 2147483647) * 2 - 1;
          const sa = broadcastA ? 0 : m * k;
          const sb = broadcastB ? 0 : k * n;
          const a = Float32Array.from({ length: (broadcastA ? 1 : batch) * m * k }, next);
          const b = Float32Array.from({ length: (broadcastB ? 1 : batch) * k * n }, next);
          const c = new Float32Array(batch * m * n).fill(NaN);
          blas.sgemm(ta, tb, m, n, k, a, b, c, batch, sa, sb);
          for (let i = 0; i < batch; i++) {
            for (let r = 0; r < m; r++) {
              for (let j = 0; j < n; j++) {
                let want = 0;
                for (let q = 0; q < k; q++) {
                  const av = a[i * sa + (ta ? q * m + r : r * k + q)];
                  const bv = b[i * sb + (tb ? j * k + q : q * n + j)];
                  want += av * bv;
                }
                expect(Math.abs(c[i * m * n + r * n + j] - want)).toBeLessThan(1e-5);
              }
            }
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it("refuses arrays too short for the shape, wrong array kinds and bad numbers with an error, never a crash", () => {
    const junk = fc.oneof(
      fc.integer({ min: -3, max: 70 }),
      fc.double(),
      fc.constantFrom(2 ** 31, 2 ** 40, -0, NaN, Infinity),
      fc.string(),
      fc.boolean(),
      fc.constant(undefined),
      fc.integer({ min: 0, max: 40 }).map((n) => new Float32Array(n)),
      fc.integer({ min: 0, max: 40 }).map((n) => new Float64Array(n)),
      fc.integer({ min: 0, max: 40 }).map((n) => new Int32Array(n)),
    );
    fc.assert(
      fc.property(fc.constantFrom("sgemm", "dgemm", "dpotrf", "dpotri", "setThreads"), fc.array(junk, { maxLength: 14 }), (name, args) => {
        const f = (blas as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
        try {
          f(...args);
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
          expect(String((e as Error).message)).toMatch(/evosparse_blas/);
        }
      }),
      { numRuns: 2000 },
    );
    expect(() => blas.sgemm(false, false, 2, 2, 3, new Float32Array(5), new Float32Array(6), new Float32Array(4), 1, 0, 0)).toThrow(
      /a is too short/,
    );
    expect(() => blas.sgemm(false, false, 2, 2, 3, new Float32Array(6), new Float32Array(6), new Float32Array(3), 1, 0, 0)).toThrow(
      /c is too short/,
    );
    expect(() => blas.dgemm(false, false, 2, 2, 2, 1, new Float64Array(4), 1, new Float64Array(4), 2, 0, new Float64Array(4), 2)).toThrow(
      /leading dimension/,
    );
    expect(() => blas.dpotrf("X" as "L", 2, new Float64Array(4))).toThrow(/uplo/);
    expect(blas.dpotrf("L", 2, Float64Array.from([1, 5, 5, 1]))).toBeGreaterThan(0);
  });
});

describe.skipIf(skip)("the native backend's kernels against the cpu backend", () => {
  beforeAll(async () => {
    await initBackend("native");
  });
  afterAll(async () => {
    await initBackend("wasm");
  });

  const on = async (backend: "cpu" | "native", f: () => tf.Tensor): Promise<Float32Array> => {
    await initBackend(backend);
    const t = f();
    const values = (await t.data()) as Float32Array;
    t.dispose();
    return values;
  };

  const close = (got: Float32Array, want: Float32Array): void => {
    expect(got.length).toBe(want.length);
    let scale = 1;
    for (const v of want) scale = Math.max(scale, Math.abs(v));
    for (let e = 0; e < want.length; e++) expect(Math.abs(got[e] - want[e])).toBeLessThan(1e-5 * scale);
  };

  it("matMul: ranks 2 to 4, transpose flags, broadcast batches", async () => {
    const cases = fc.sample(
      fc.record({
        batch: fc.constantFrom<number[][]>([[], []], [[3], [3]], [[3], []], [[], [2]], [[2, 3], [2, 3]], [[1, 3], [2, 1]]),
        m: fc.integer({ min: 1, max: 7 }),
        n: fc.integer({ min: 1, max: 7 }),
        k: fc.integer({ min: 1, max: 7 }),
        ta: fc.boolean(),
        tb: fc.boolean(),
        seed: fc.integer({ min: 0, max: 1000 }),
      }),
      { numRuns: 40, seed: 7 },
    );
    for (const { batch, m, n, k, ta, tb, seed } of cases) {
      const aShape = [...batch[0], ...(ta ? [k, m] : [m, k])];
      const bShape = [...batch[1], ...(tb ? [n, k] : [k, n])];
      const make = () => tf.matMul(tf.randomUniform(aShape, -1, 1, "float32", seed), tf.randomUniform(bShape, -1, 1, "float32", seed + 1), ta, tb);
      close(await on("native", make), await on("cpu", make));
    }
  });

  it("fused matMul with a bias and ReLU (wasm's own kernel adds batched biases wrongly; ours matches cpu)", async () => {
    for (const activation of ["linear", "relu"] as const) {
      const make = () =>
        tf.fused.matMul({
          a: tf.randomUniform([3, 5, 7], -1, 1, "float32", 1),
          b: tf.randomUniform([3, 7, 4], -1, 1, "float32", 2),
          bias: tf.randomUniform([4], -1, 1, "float32", 3),
          activation,
        });
      close(await on("native", make), await on("cpu", make));
    }
  });

  it("gradients through products with transpose flags", async () => {
    const make = () => {
      const a = tf.randomUniform([6, 5], -1, 1, "float32", 4);
      const b = tf.randomUniform([4, 5], -1, 1, "float32", 5);
      const [ga, gb] = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(tf.matMul(x, y, false, true))))([a, b]);
      return tf.concat([ga!.flatten(), gb!.flatten()]);
    };
    close(await on("native", make), await on("cpu", make));
  });
});
