/**
 * The wasm heap holds at most 4 GiB, and its allocator answers 0 when it cannot grow: tfjs
 * would then write the tensor over the start of the heap. A failed allocation is instead
 * a BackendMemoryError naming the tensor, and the backend goes on working.
 */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { initBackend } from "../src/backend/backend.ts";
import { BackendMemoryError } from "../src/errors.ts";
import { filledTensor } from "../src/model/upload.ts";

beforeAll(async () => {
  await initBackend("wasm");
});

describe("the wasm heap's limit", () => {
  it("an upload beyond it is an error naming the tensor, and nothing else is overwritten", () => {
    const canary = tf.tensor1d([1, 2, 3, 4]);
    const held: tf.Tensor[] = [];
    let error: unknown;
    try {
      // 1 GiB each, left untouched (the filler writes nothing): the heap grows, the machine's memory does not.
      for (let i = 0; i < 5; i++) held.push(filledTensor({ shape: [256 * 2 ** 20], fill: () => {} }, `the test's chunk ${i}`));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(BackendMemoryError);
    expect((error as Error).message).toMatch(/^the backend ran out of memory allocating the test's chunk \d \(1024 MiB\): the wasm heap \(at most 4 GiB\) is full/);
    tf.dispose(held);
    expect(Array.from(canary.dataSync())).toEqual([1, 2, 3, 4]);
    expect(Array.from(tf.add(canary, 1).dataSync())).toEqual([2, 3, 4, 5]);
    canary.dispose();
  });
});
