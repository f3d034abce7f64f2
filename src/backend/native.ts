/**
 * The "native" tfjs backend: the wasm backend (its own instance and heap) with its matrix
 * products computed by OpenBLAS's sgemm through the native kernel. Every wasm kernel is
 * registered again under the new name; BatchMatMul and _FusedMatMul are replaced by
 * kernels that hand sgemm views of the wasm heap, so nothing is copied. Shapes the
 * replacements do not cover (non-float32 data, batch broadcasting other than one-to-many,
 * unusual fused activations) go to wasm's own kernels.
 */
import * as tf from "@tensorflow/tfjs";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { nativeBlas, type NativeBlas } from "./native-blas.ts";

export const NATIVE_BACKEND = "native";

/**
 * Seconds spent inside sgemm, and the number of products, since the last reset: how a
 * benchmark tells the products of a forward from everything else.
 */
export const productClock = { seconds: 0, calls: 0 };

type KernelArgs = Parameters<tf.KernelFunc>[0];
type KernelConfig = ReturnType<typeof tf.getKernelsForBackend>[number];

const product = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

interface Operands {
  readonly m: number;
  readonly n: number;
  readonly k: number;
  readonly batch: number;
  readonly batchShape: number[];
  readonly strideA: number;
  readonly strideB: number;
}

/** Sizes of op(A) op(B) with batch dimensions, or undefined where only wasm's kernel applies. */
const operands = (a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean): Operands | undefined => {
  if (a.dtype !== "float32" || b.dtype !== "float32" || a.shape.length < 2 || b.shape.length < 2) return undefined;
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const m = transposeA ? ac : ar;
  const k = transposeA ? ar : ac;
  const n = transposeB ? br : bc;
  if ((transposeB ? bc : br) !== k) return undefined;
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batchShape = tf.broadcast_util.assertAndGetBroadcastShape(batchA, batchB);
  const batch = product(batchShape);
  const countA = product(batchA);
  const countB = product(batchB);
  // One-to-one or one-to-many pairs only; a partial broadcast goes to wasm's kernel.
  if ((countA !== batch && countA !== 1) || (countB !== batch && countB !== 1)) return undefined;
  return { m, n, k, batch, batchShape, strideA: countA === 1 ? 0 : m * k, strideB: countB === 1 ? 0 : k * n };
};

const multiply = (
  blas: NativeBlas,
  backend: BackendWasm,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  o: Operands,
): { out: tf.TensorInfo; values: Float32Array } => {
  // Output first: allocating may grow the heap, which detaches views taken before.
  const out = backend.makeOutput([...o.batchShape, o.m, o.n], "float32");
  const values = backend.typedArrayFromHeap(out) as Float32Array;
  const va = backend.typedArrayFromHeap(a) as Float32Array;
  const vb = backend.typedArrayFromHeap(b) as Float32Array;
  const started = performance.now();
  blas.sgemm(transposeA, transposeB, o.m, o.n, o.k, va, vb, values, o.batch, o.strideA, o.strideB);
  productClock.seconds += (performance.now() - started) / 1000;
  productClock.calls++;
  return { out, values };
};

const batchMatMul = (blas: NativeBlas, wasmKernel: KernelConfig): KernelConfig => ({
  kernelName: "BatchMatMul",
  backendName: NATIVE_BACKEND,
  setupFunc: wasmKernel.setupFunc,
  kernelFunc: (args: KernelArgs) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const o = operands(a, b, transposeA, transposeB);
    if (!o) return wasmKernel.kernelFunc(args);
    return multiply(blas, args.backend as BackendWasm, a, b, transposeA, transposeB, o).out;
  },
});

/** The fusions the model can ask for: a rank-1 bias, then no activation or ReLU. */
const fusedMatMul = (blas: NativeBlas, wasmKernel: KernelConfig): KernelConfig => ({
  kernelName: "_FusedMatMul",
  backendName: NATIVE_BACKEND,
  setupFunc: wasmKernel.setupFunc,
  kernelFunc: (args: KernelArgs) => {
    const { a, b, bias, preluActivationWeights } = args.inputs as Record<string, tf.TensorInfo | undefined>;
    const { transposeA, transposeB, activation } = args.attrs as unknown as {
      transposeA: boolean;
      transposeB: boolean;
      activation: string;
    };
    const o = operands(a!, b!, transposeA, transposeB);
    const plain = activation === "linear" || activation === "relu";
    const biasFits = bias === undefined || (bias.dtype === "float32" && bias.shape.length === 1 && (bias.shape[0] === o?.n || bias.shape[0] === 1));
    if (!o || !plain || preluActivationWeights !== undefined || !biasFits) return wasmKernel.kernelFunc(args);
    const backend = args.backend as BackendWasm;
    const { out, values } = multiply(blas, backend, a!, b!, transposeA, transposeB, o);
    if (bias !== undefined) {
      const add = backend.typedArrayFromHeap(bias) as Float32Array;
      const width = o.n;
      if (add.length === 1) {
        const v = add[0]!;
        for (let e = 0; e < values.length; e++) values[e]! += v;
      } else {
        for (let row = 0; row < values.length; row += width) {
          for (let j = 0; j < width; j++) values[row + j]! += add[j]!;
        }
      }
    }
    if (activation === "relu") for (let e = 0; e < values.length; e++) if (values[e]! < 0) values[e] = 0;
    return out;
  },
});

/**
 * Registers the "native" backend (once). Returns why it cannot be registered: the native
 * kernel is missing, or the wasm backend (whose kernels it reuses) is not loaded.
 */
export const registerNativeBackend = async (): Promise<string | undefined> => {
  const blas = nativeBlas();
  if (!blas) return "the native BLAS kernel is not built";
  if (tf.findBackendFactory(NATIVE_BACKEND)) return undefined;
  await import("@tensorflow/tfjs-backend-wasm");
  const wasmFactory = tf.findBackendFactory("wasm");
  if (!wasmFactory) return "the wasm backend, which the native backend extends, is not registered";
  const wasmKernels = tf.getKernelsForBackend("wasm");
  for (const kernel of wasmKernels) {
    if (kernel.kernelName === "BatchMatMul") tf.registerKernel(batchMatMul(blas, kernel));
    else if (kernel.kernelName === "_FusedMatMul") tf.registerKernel(fusedMatMul(blas, kernel));
    else tf.registerKernel({ ...kernel, backendName: NATIVE_BACKEND });
  }
  // A negative priority: tfjs never picks it on its own; evosparse asks for it by name.
  tf.registerBackend(NATIVE_BACKEND, () => wasmFactory(), -1);
  return undefined;
};
