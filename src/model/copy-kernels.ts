/**
 * Copies of parts of a tensor without the wasm backend's overheads: its Slice kernel first
 * copies the whole input out of the heap (milliseconds per call on activations) and its
 * Gather moves one element at a time. These kernels copy just the wanted span, as
 * contiguous runs, straight between heap views (wasm and native keep tensors in a wasm
 * heap). Other backends use slice and gather.
 * No gradients here: callers wrap them (see takeRange in ops.ts).
 */
import * as tf from "@tensorflow/tfjs";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { backendTraits, HEAP_BACKENDS } from "./backend-traits.ts";

const TAKE_RANGE = "EvosparseTakeRange";
const TAKE_ROWS = "EvosparseTakeRows";

type KernelArgs = Parameters<tf.KernelFunc>[0];

const register = (backendName: string): void => {
  if (!tf.getKernel(TAKE_RANGE, backendName)) {
    tf.registerKernel({
      kernelName: TAKE_RANGE,
      backendName,
      kernelFunc: ({ inputs, backend, attrs }: KernelArgs) => {
        const wasm = backend as BackendWasm;
        const x = inputs.x as tf.TensorInfo;
        const { axis, start, size } = attrs as unknown as { axis: number; start: number; size: number };
        const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
        const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
        const length = x.shape[axis];
        const outShape = x.shape.map((n, i) => (i === axis ? size : n));
        // Output first: allocating may grow the heap, which detaches earlier views.
        const out = wasm.makeOutput(outShape, x.dtype);
        const source = wasm.typedArrayFromHeap(x);
        const target = wasm.typedArrayFromHeap(out);
        const run = size * inner;
        for (let o = 0; o < outer; o++) {
          const from = (o * length + start) * inner;
          target.set(source.subarray(from, from + run), o * run);
        }
        return out;
      },
    });
  }
  if (!tf.getKernel(TAKE_ROWS, backendName)) {
    tf.registerKernel({
      kernelName: TAKE_ROWS,
      backendName,
      kernelFunc: ({ inputs, backend, attrs }: KernelArgs) => {
        const wasm = backend as BackendWasm;
        const x = inputs.x as tf.TensorInfo;
        const rows = (attrs as unknown as { rows: number[] }).rows;
        const width = x.shape.slice(1).reduce((a, b) => a * b, 1);
        const out = wasm.makeOutput([rows.length, ...x.shape.slice(1)], x.dtype);
        const source = wasm.typedArrayFromHeap(x);
        const target = wasm.typedArrayFromHeap(out);
        rows.forEach((row, i) => target.set(source.subarray(row * width, (row + 1) * width), i * width));
        return out;
      },
    });
  }
};

/** True (after registering the kernels for it) when the backend in use keeps tensors in a wasm heap. */
const onHeap = (): boolean => {
  const name = tf.getBackend();
  if (!backendTraits(name).heapViews || !HEAP_BACKENDS.includes(name)) return false;
  register(name);
  return true;
};

/** Indices [start, start + size) along `axis`. */
export const copyRange = <T extends tf.Tensor>(x: T, axis: number, start: number, size: number): T => {
  if (!onHeap()) {
    const begin = x.shape.map((_, i) => (i === axis ? start : 0));
    const sizes = x.shape.map((n, i) => (i === axis ? size : n));
    return tf.slice(x, begin, sizes) as T;
  }
  return tf.engine().runKernel(TAKE_RANGE, { x }, { axis, start, size }) as T;
};

/** Rows (first-axis entries) of x at the given indices, which must be in range. */
export const copyRows = <T extends tf.Tensor>(x: T, rows: Int32Array): T => {
  if (!onHeap()) return tf.gather(x, tf.tensor1d(rows, "int32")) as T;
  return tf.engine().runKernel(TAKE_ROWS, { x }, { rows: Array.from(rows) }) as T;
};
