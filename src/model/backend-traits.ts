/**
 * The shape choices of the forward pass that depend on the backend, decided here and
 * nowhere else. The model layer knows backends only by their tfjs names.
 */
import * as tf from "@tensorflow/tfjs";

export interface BackendTraits {
  /**
   * Tensors live in a wasm heap that JavaScript can view (wasm, and native, which is wasm
   * with BLAS products): slices and row gathers are done by our own copy kernels.
   */
  readonly heapViews: boolean;
  /**
   * matMul with transpose flags is as fast as without: gradients use the flags instead of
   * explicit transposes (on plain wasm, flagged products are ~10x slower).
   */
  readonly transposeFlags: boolean;
  /**
   * Attention as batched products over every (window, head) at once: what GPUs need (one
   * dispatch instead of thousands of tiny ones). Elsewhere one 2-D product per head and
   * query chunk, which bounds memory and is wasm's fast path.
   */
  readonly batchedAttention: boolean;
}

/** Backends whose tensors are views of a wasm heap. */
export const HEAP_BACKENDS: readonly string[] = ["wasm", "native"];

const TRAITS: Record<string, BackendTraits> = {
  wasm: { heapViews: true, transposeFlags: false, batchedAttention: false },
  native: { heapViews: true, transposeFlags: true, batchedAttention: false },
  cpu: { heapViews: false, transposeFlags: false, batchedAttention: false },
  webgpu: { heapViews: false, transposeFlags: true, batchedAttention: true },
  webgl: { heapViews: false, transposeFlags: true, batchedAttention: true },
  tensorflow: { heapViews: false, transposeFlags: true, batchedAttention: true },
};

/**
 * Sets the traits of a backend: for a tfjs backend evosparse does not know, or to run a
 * backend down the other path (the tests compare the two paths this way). Returns the
 * traits it had, to restore them.
 */
export const setBackendTraits = (name: string, traits: BackendTraits): BackendTraits => {
  const before = backendTraits(name);
  TRAITS[name] = traits;
  return before;
};

/** Traits of the backend in use (or the one named); an unknown backend gets the cautious defaults of cpu. */
export const backendTraits = (name: string = tf.getBackend()): BackendTraits => TRAITS[name] ?? TRAITS.cpu!;
