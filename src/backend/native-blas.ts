/**
 * The optional native kernel (native/blas.c, built at `npm ci` against the system
 * OpenBLAS): single-precision products for the "native" tfjs backend and the float64
 * BLAS/LAPACK routines SparseGPT uses. When it was not built, `nativeBlas()` is undefined
 * and `nativeBlasMissing()` says in one line what would enable it.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { availableParallelism } from "node:os";
import { projectRoot } from "../defaults.ts";

export interface NativeBlas {
  /**
   * For each of `batch` products, C_i = op(A_i) op(B_i), row-major and packed: A_i starts at
   * i * strideA (0 broadcasts one matrix), B_i at i * strideB, C_i at i * m * n.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    a: Float32Array,
    b: Float32Array,
    c: Float32Array,
    batch: number,
    strideA: number,
    strideB: number,
  ): void;
  /** C = alpha op(A) op(B) + beta C, row-major with leading dimensions (sub-matrices allowed). */
  dgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float64Array,
    lda: number,
    b: Float64Array,
    ldb: number,
    beta: number,
    c: Float64Array,
    ldc: number,
  ): void;
  /** LAPACK's Cholesky factor of a column-major n x n matrix, in place; returns LAPACK's info (0 = success). */
  dpotrf(uplo: "L" | "U", n: number, a: Float64Array): number;
  /** LAPACK's inverse from a Cholesky factor (dpotrf's output), in place; returns info. */
  dpotri(uplo: "L" | "U", n: number, a: Float64Array): number;
  /** LAPACK's inverse of a non-unit triangular column-major n x n matrix, in place; returns info. */
  dtrtri(uplo: "L" | "U", n: number, a: Float64Array): number;
  /**
   * A tensor's file bytes (dtype 0 F32, 1 F16, 2 BF16; rows x cols in file order) to float32
   * in `dst`, transposed when asked (dst[c * rows + r] = src[r][c]). Returns the index, in
   * file order, of the first NaN or infinity (and then writes nothing), or -1.
   */
  convert(src: Uint8Array, dtype: 0 | 1 | 2, rows: number, cols: number, transpose: boolean, dst: Float32Array): number;
  /** float32 rows x cols to the dtype's little-endian bytes, transposed when asked; rounding as dtype.ts does. */
  encode(src: Float32Array, dtype: 0 | 1 | 2, rows: number, cols: number, transpose: boolean, dst: Uint8Array): void;
  /**
   * keep[e] = 0 for the k lowest scores of each column of a row-major rows x cols matrix
   * (perColumn) or of the whole matrix, 1 elsewhere; equal scores go to the lower index.
   */
  lowest(scores: Float32Array, rows: number, cols: number, perColumn: boolean, k: number, keep: Uint8Array): void;
  /** Each weight's position in its group's order by (score, index): its column's (perColumn) or the matrix's. */
  ranks(scores: Float32Array, rows: number, cols: number, perColumn: boolean, out: Uint16Array | Uint32Array): void;
  setThreads(threads: number): void;
  threads(): number;
  /** OpenBLAS's chosen kernel (e.g. "SkylakeX", "Haswell") and build configuration. */
  describe(): { core: string; config: string };
}

export const NATIVE_ADDON = join(projectRoot, "native", "build", "Release", "evosparse_blas.node");

let loaded: { blas?: NativeBlas; missing?: string } | undefined;

const load = (): { blas?: NativeBlas; missing?: string } => {
  if (loaded) return loaded;
  // As at install (native/build.mjs): run as if the kernel were not built.
  if (process.env.EVOSPARSE_SKIP_NATIVE === "1") {
    loaded = { missing: "the native BLAS kernel is switched off (EVOSPARSE_SKIP_NATIVE=1)" };
    return loaded;
  }
  if (!existsSync(NATIVE_ADDON)) {
    loaded = {
      missing:
        "the native BLAS kernel is not built: install libopenblas-dev and a C compiler, then run `npm run build:native`",
    };
    return loaded;
  }
  try {
    loaded = { blas: createRequire(import.meta.url)(NATIVE_ADDON) as NativeBlas };
  } catch (e) {
    const line = String((e as Error)?.message ?? e).split("\n")[0];
    loaded = { missing: `the native BLAS kernel does not load (${line}); run \`npm run build:native\`` };
  }
  return loaded;
};

/** The native kernel, or undefined when it was not built or does not load. */
export const nativeBlas = (): NativeBlas | undefined => load().blas;

/** Why the native kernel is unavailable (one line), or undefined when it is available. */
export const nativeBlasMissing = (): string | undefined => load().missing;

/**
 * Thread policy: one process uses every core; `share` processes or worker threads that
 * compute at the same time (fitness or training workers) split the cores evenly, at least
 * one each, so that together they never run more BLAS threads than there are cores.
 * OPENBLAS_NUM_THREADS, when the user sets it, wins. Worker threads share the process's
 * one OpenBLAS, so the count is one setting for the process: every worker sets the same
 * value, and the main thread takes all cores back when its workers end. Products under a
 * few MFLOP always run on one thread (native/blas.c).
 */
export const blasThreadsFor = (share: number, cores = availableParallelism()): number =>
  Math.max(1, Math.floor(cores / Math.max(1, share)));

export const configureNativeThreads = (share: number): number | undefined => {
  const blas = nativeBlas();
  if (!blas) return undefined;
  const fromUser = Number(process.env.OPENBLAS_NUM_THREADS);
  const threads = Number.isInteger(fromUser) && fromUser > 0 ? fromUser : blasThreadsFor(share);
  blas.setThreads(threads);
  return threads;
};
