/**
 * Reading ahead never outlives its file badly. A streamed pass that fails leaves its
 * read-ahead running: closing the file then must neither fail those reads with EBADF nor
 * close the descriptor under them (the number could be reused by another file), and a
 * read-ahead no one awaits any more must not end the process as an unhandled rejection.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BlockPrefetch } from "../src/checkpoint/prefetch.ts";
import { openSafetensors, writeSafetensors } from "../src/checkpoint/safetensors.ts";
import { CheckpointError } from "../src/errors.ts";

const root = mkdtempSync(join(tmpdir(), "evosparse-read-ahead-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const openDescriptors = (): number => readdirSync("/proc/self/fd").length;
const haveProcFd = existsSync("/proc/self/fd");

/** Resolves after the event loop has turned `n` times (rejections are reported by then). */
const turns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};

/** Collects the unhandled rejections seen while `body` runs and a few turns after it. */
const unhandledDuring = async (body: () => Promise<void>): Promise<unknown[]> => {
  const seen: unknown[] = [];
  const listener = (reason: unknown): void => void seen.push(reason);
  process.on("unhandledRejection", listener);
  try {
    await body();
    await turns(5);
  } finally {
    process.off("unhandledRejection", listener);
  }
  return seen;
};

describe("closing a safetensors file while reads run on the thread pool", () => {
  // More tensors than libuv has threads, so that some reads still wait in its queue when
  // the file is closed.
  const tensors = Array.from({ length: 24 }, (_, t) => ({
    name: `t${t}`,
    dtype: "F32" as const,
    shape: [64, 64],
    data: Float32Array.from({ length: 64 * 64 }, (_, k) => t * 10_000 + k),
  }));
  const file = join(root, "model.safetensors");
  writeSafetensors(file, tensors);

  it.skipIf(!haveProcFd)("the reads finish with the file's bytes, then the descriptor is closed; a read after the close is refused", async () => {
    const before = openDescriptors();
    const st = openSafetensors(file);
    expect(openDescriptors()).toBe(before + 1);
    const reads = tensors.map((t) => st.readBytesAsync(t.name));
    st.close();
    // Still open: the reads hold it.
    expect(openDescriptors()).toBe(before + 1);
    const got = await Promise.all(reads);
    for (const [t, bytes] of got.entries()) {
      expect(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)).toEqual(tensors[t]!.data);
    }
    expect(openDescriptors()).toBe(before);
    await expect(st.readBytesAsync("t0")).rejects.toThrow(`${file}: cannot read tensor t0: the file was closed`);
    st.close(); // a second close is harmless
    expect(openDescriptors()).toBe(before);
  });

  it.skipIf(!haveProcFd)("a file closed with no read running is closed at once", () => {
    const before = openDescriptors();
    const st = openSafetensors(file);
    st.close();
    expect(openDescriptors()).toBe(before);
  });
});

describe("a read-ahead that fails", () => {
  const failing = (): BlockPrefetch =>
    new BlockPrefetch(
      (block) => [`b${block}.w`],
      (name) => Promise.reject(new CheckpointError({ file: "model.safetensors", problem: `cannot read tensor ${name}: the disk went away` })),
    );

  it("is no unhandled rejection when the pass that started it stopped awaiting", async () => {
    const seen = await unhandledDuring(async () => {
      void failing().start(1);
    });
    expect(seen).toEqual([]);
  });

  it("still fails whoever awaits it, and a later start reads again", async () => {
    let calls = 0;
    const prefetch = new BlockPrefetch(
      () => ["w"],
      () => {
        calls++;
        return calls === 1 ? Promise.reject(new CheckpointError({ file: "model.safetensors", problem: "cannot read tensor w: EIO" })) : Promise.resolve(new Uint8Array([7]));
      },
    );
    await expect(prefetch.start(0)).rejects.toThrow("model.safetensors: cannot read tensor w: EIO");
    await prefetch.start(0);
    expect(calls).toBe(2);
    expect(prefetch.take(0)?.get("w")).toEqual(new Uint8Array([7]));
    expect(prefetch.take(0)).toBeUndefined();
  });
});
