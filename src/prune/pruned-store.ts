/**
 * Where pruned blocks wait between pruning and their use (the next blocks' calibration
 * inputs, the pruned model's evaluation, the export): encoded in the dtype they will be
 * exported in, in memory or in files of a scratch folder when the plan keeps them on disk.
 * What is evaluated is therefore exactly what is written (SparseGPT's reference casts its
 * updated weights back to the layer's dtype the same way), and a pruned model takes its
 * file's size, not float32's.
 */
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { convertInto, encodeFrom } from "../checkpoint/convert.ts";
import type { StorageDtype } from "../checkpoint/types.ts";
import { mapBlock, type BlockOf, type HostBlock, type HostTensor, type SourceBlock } from "../model/spec.ts";

export interface PrunedStore {
  readonly dtype: StorageDtype;
  /** Keeps block i's pruned weights, rounded to the store's dtype. */
  put(block: number, weights: HostBlock): void;
  has(block: number): boolean;
  /** Block i as the decoder uploads it. */
  source(block: number): SourceBlock;
  /** Block i as float32 host arrays (the export reads them one block at a time). */
  read(block: number): HostBlock;
  dispose(): void;
}

/** Where a store's encoded tensors live. */
interface Backing {
  write(block: number, tensors: readonly (readonly [string, Uint8Array])[]): void;
  bytes(block: number, where: string): Uint8Array;
  dispose(): void;
}

interface Stored {
  readonly shape: readonly number[];
  readonly length: number;
}

const storeOver = (dtype: StorageDtype, backing: Backing): PrunedStore => {
  const shapes = new Map<number, BlockOf<Stored>>();
  const shapeOf = (i: number): BlockOf<Stored> => {
    const s = shapes.get(i);
    if (!s) throw new RangeError(`block ${i} has not been pruned`);
    return s;
  };
  const stored = (where: string, e: Stored) => ({ file: "pruned block", name: where, dtype, rows: 1, cols: e.length, transposed: false });
  return {
    dtype,
    put: (i, b) => {
      const tensors: [string, Uint8Array][] = [];
      shapes.set(
        i,
        mapBlock(b, (t, where) => {
          tensors.push([where, encodeFrom(dtype, t.data, 1, t.data.length, false)]);
          return { shape: t.shape, length: t.data.length };
        }),
      );
      backing.write(i, tensors);
    },
    has: (i) => shapes.has(i),
    source: (i) => mapBlock(shapeOf(i), (e, where) => ({ shape: e.shape, fill: (into: Float32Array) => convertInto(stored(where, e), backing.bytes(i, where), into) })),
    read: (i) =>
      mapBlock(shapeOf(i), (e, where): HostTensor => {
        const data = new Float32Array(e.length);
        convertInto(stored(where, e), backing.bytes(i, where), data);
        return { shape: e.shape, data };
      }),
    dispose: () => {
      shapes.clear();
      backing.dispose();
    },
  };
};

export const memoryStore = (dtype: StorageDtype): PrunedStore => {
  const blocks = new Map<number, Map<string, Uint8Array>>();
  return storeOver(dtype, {
    write: (i, tensors) => void blocks.set(i, new Map(tensors)),
    bytes: (i, where) => blocks.get(i)!.get(where)!,
    dispose: () => blocks.clear(),
  });
};

/** Pruned blocks in files of a scratch folder (one per block, its tensors one after another), removed by dispose. */
export const diskStore = (dir: string, dtype: StorageDtype): PrunedStore => {
  mkdirSync(dir, { recursive: true });
  const index = new Map<number, Map<string, { offset: number; length: number }>>();
  const fileOf = (i: number) => join(dir, `block-${i}.bin`);
  return storeOver(dtype, {
    write: (i, tensors) => {
      const entries = new Map<string, { offset: number; length: number }>();
      const fd = openSync(fileOf(i), "w");
      try {
        let offset = 0;
        for (const [where, bytes] of tensors) {
          for (let done = 0; done < bytes.byteLength; ) done += writeSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done));
          entries.set(where, { offset, length: bytes.byteLength });
          offset += bytes.byteLength;
        }
      } finally {
        closeSync(fd);
      }
      index.set(i, entries);
    },
    bytes: (i, where) => {
      const e = index.get(i)!.get(where)!;
      const bytes = Buffer.allocUnsafeSlow(e.length);
      const fd = openSync(fileOf(i), "r");
      try {
        for (let done = 0; done < e.length; ) {
          const got = readSync(fd, bytes, done, Math.min(1 << 30, e.length - done), e.offset + done);
          if (got === 0) throw new Error(`${fileOf(i)} ends before byte ${e.offset + e.length}`);
          done += got;
        }
      } finally {
        closeSync(fd);
      }
      return bytes;
    },
    dispose: () => {
      index.clear();
      rmSync(dir, { recursive: true, force: true });
    },
  });
};
