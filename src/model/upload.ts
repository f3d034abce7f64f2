/**
 * Weights onto the backend. Host arrays are uploaded as they are; weights still in a
 * checkpoint (WeightSource) are written straight into the tensor's own memory where the
 * backend keeps tensors in a wasm heap (wasm, native): the backend allocates, the source
 * converts into that view, and no float32 host copy of the weights ever exists. Other
 * backends get a host array filled the same way.
 */
import * as tf from "@tensorflow/tfjs";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { BackendMemoryError } from "../errors.ts";
import { backendTraits, HEAP_BACKENDS } from "./backend-traits.ts";
import { isHostTensor, type TensorLike, type WeightSource } from "./spec.ts";

const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/**
 * A wasm heap that cannot grow ends in emscripten's abort ("Aborted()"), after which the
 * module is unusable: the plan (memory-plan.ts) keeps runs below the heap's limit, and
 * this turns a failure that still happens into an error that names the tensor.
 */
const heapFailure = (label: string, bytes: number, error: unknown): Error => {
  if (error instanceof BackendMemoryError) return new BackendMemoryError({ what: label, bytes, detail: error.detail });
  const message = String((error as Error)?.message ?? error);
  if (!/Aborted|out of memory|Cannot enlarge memory|out of bounds/i.test(message)) return error as Error;
  return new BackendMemoryError({ what: label, bytes, detail: message.split("\n")[0]! });
};

/** A float32 tensor of `source`'s shape, filled by `source`. */
export const filledTensor = (source: WeightSource, label: string): tf.Tensor => {
  const shape = [...source.shape];
  const name = tf.getBackend();
  if (backendTraits(name).heapViews && HEAP_BACKENDS.includes(name)) {
    const backend = tf.backend() as BackendWasm;
    let info: tf.TensorInfo;
    try {
      info = backend.makeOutput(shape, "float32");
    } catch (e) {
      throw heapFailure(label, 4 * size(shape), e);
    }
    const tensor = tf.engine().makeTensorFromTensorInfo(info);
    try {
      // Taken after the allocation: growing the heap detaches earlier views.
      source.fill(backend.typedArrayFromHeap(info) as Float32Array);
    } catch (e) {
      tensor.dispose();
      throw e;
    }
    return tensor;
  }
  const data = new Float32Array(size(shape));
  source.fill(data);
  return tf.tensor(data, shape, "float32");
};

/** Uploads host data or a checkpoint's weights; `label` names the tensor in errors. */
export const uploadTensor = (t: TensorLike, label: string): tf.Tensor => {
  if (!isHostTensor(t)) return filledTensor(t, label);
  try {
    return tf.tensor(t.data, [...t.shape], "float32");
  } catch (e) {
    throw heapFailure(label, t.data.byteLength, e);
  }
};
