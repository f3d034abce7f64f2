import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CheckpointError } from "../src/errors.ts";
import {
  openSafetensors,
  openSafetensorsFolder,
  openShardedSafetensors,
  writeSafetensors,
  writeShardedSafetensors,
  type TensorToWrite,
} from "../src/checkpoint/safetensors.ts";
import type { StorageDtype } from "../src/checkpoint/types.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "evosparse-safetensors-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

let counter = 0;
const freshDir = (): string => {
  const dir = path.join(root, `case-${counter++}`);
  fs.mkdirSync(dir);
  return dir;
};

/** A file laid out by hand from the format description, independent of the writer. */
function handMadeFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerText?: string): Uint8Array {
  const json = new TextEncoder().encode(headerText ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const writeBytes = (bytes: Uint8Array, name = "model.safetensors"): string => {
  const file = path.join(freshDir(), name);
  fs.writeFileSync(file, bytes);
  return file;
};

const f32Bytes = (values: number[]): Uint8Array => new Uint8Array(Float32Array.from(values).buffer);

/** Values exactly representable in the dtype, built from bit patterns without the code under test. */
function representable(dtype: StorageDtype, bits: number): number {
  if (dtype === "F32") return new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0];
  if (dtype === "BF16") return new Float32Array(new Uint32Array([(bits & 0xffff) << 16]).buffer)[0];
  const h = bits & 0xffff;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const s = h >> 15 ? -1 : 1;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * 2 ** -24 * m : s * 2 ** (e - 15) * (1 + m / 1024);
}

const arbTensor = (name: fc.Arbitrary<string>): fc.Arbitrary<TensorToWrite> =>
  fc
    .record({
      name,
      dtype: fc.constantFrom<StorageDtype>("F32", "F16", "BF16"),
      shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
      seed: fc.array(fc.integer(), { minLength: 64, maxLength: 64 }),
    })
    .map(({ name, dtype, shape, seed }) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = Float32Array.from({ length: n }, (_, i) => representable(dtype, seed[i % 64] ^ (i * 2654435761)));
      return { name, dtype, shape, data };
    });

const arbTensors = fc.uniqueArray(arbTensor(fc.stringMatching(/^[a-z][a-z0-9_.]{0,10}$/)), {
  selector: (t) => t.name,
  maxLength: 6,
});

const sameValues = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && a.every((x, i) => Object.is(x, b[i]) || (Number.isNaN(x) && Number.isNaN(b[i])));

function expectCheckpointError(run: () => unknown, file: string, problem: RegExp | string): void {
  let thrown: unknown;
  try {
    run();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(CheckpointError);
  const error = thrown as CheckpointError;
  expect(error.file).toBe(file);
  expect(error.message).toContain(file);
  if (typeof problem === "string") expect(error.problem).toContain(problem);
  else expect(error.problem).toMatch(problem);
}

describe("writeSafetensors then openSafetensors", () => {
  it("round-trips tensors of every storage dtype, with metadata", () => {
    fc.assert(
      fc.property(arbTensors, fc.dictionary(fc.string(), fc.string(), { maxKeys: 3 }), (tensors, metadata) => {
        const file = path.join(freshDir(), "model.safetensors");
        writeSafetensors(file, tensors, metadata);
        const opened = openSafetensors(file);
        try {
          expect(opened.metadata).toEqual(metadata);
          expect([...opened.tensors.keys()].sort()).toEqual(tensors.map((t) => t.name).sort());
          for (const t of tensors) {
            const entry = opened.tensors.get(t.name)!;
            expect(entry.dtype).toBe(t.dtype);
            expect(entry.shape).toEqual(t.shape);
            expect(sameValues(opened.read(t.name), t.data as Float32Array)).toBe(true);
          }
        } finally {
          opened.close();
        }
      }),
      { numRuns: 60 },
    );
  });

  it("lays the file out as the reference writer does", () => {
    fc.assert(
      fc.property(arbTensors, (tensors) => {
        const file = path.join(freshDir(), "x.safetensors");
        writeSafetensors(file, tensors);
        const bytes = fs.readFileSync(file);
        const headerLength = Number(bytes.readBigUInt64LE(0));
        expect(headerLength % 8).toBe(0);
        const headerText = bytes.subarray(8, 8 + headerLength).toString("utf8");
        // Padding is spaces after the JSON, fewer than 8 of them.
        expect(headerText).toMatch(/^\{.*\} {0,7}$/s);
        const header = JSON.parse(headerText) as Record<string, { dtype: string; data_offsets: [number, number] }>;
        const names = Object.keys(header);
        expect(names).toEqual(tensors.map((t) => t.name).sort());
        let expectedBegin = 0;
        for (const name of names) {
          const [begin, end] = header[name].data_offsets;
          expect(begin).toBe(expectedBegin);
          expectedBegin = end;
        }
        expect(bytes.length).toBe(8 + headerLength + expectedBegin);
        expect(fs.readdirSync(path.dirname(file))).toEqual(["x.safetensors"]);
      }),
      { numRuns: 40 },
    );
  });

  it("reads a hand-made file with a gap and little-endian halves", () => {
    // F16 0x3c00 = 1, 0xc000 = -2; BF16 0x3f80 = 1, 0x4049 = 3.140625.
    const data = Uint8Array.from([0x00, 0x3c, 0x00, 0xc0, 0xee, 0xee, 0x80, 0x3f, 0x49, 0x40, ...f32Bytes([0.5, -7])]);
    const file = writeBytes(
      handMadeFile(
        {
          __metadata__: { format: "pt" },
          half: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
          brain: { dtype: "BF16", shape: [1, 2], data_offsets: [6, 10] },
          single: { dtype: "F32", shape: [2, 1], data_offsets: [10, 18] },
        },
        data,
      ),
    );
    const opened = openSafetensors(file);
    expect(opened.metadata).toEqual({ format: "pt" });
    expect(Array.from(opened.read("half"))).toEqual([1, -2]);
    expect(Array.from(opened.read("brain"))).toEqual([1, 3.140625]);
    expect(Array.from(opened.read("single"))).toEqual([0.5, -7]);
    expect(opened.tensors.get("single")!.shape).toEqual([2, 1]);
    opened.close();
  });

  it("never writes one buffer larger than a tensor or the header", () => {
    const tensors: TensorToWrite[] = [0, 1, 2].map((i) => ({
      name: `layer.${i}`,
      dtype: "F32",
      shape: [64, 64],
      data: new Float32Array(64 * 64).fill(i),
    }));
    const writeSpy = vi.spyOn(fs, "writeSync");
    const file = path.join(freshDir(), "model.safetensors");
    writeSafetensors(file, tensors);
    const largest = Math.max(...writeSpy.mock.calls.map((call) => (call[1] as unknown as Uint8Array).byteLength));
    expect(largest).toBe(64 * 64 * 4);
    expect(fs.statSync(file).size).toBeGreaterThan(3 * 64 * 64 * 4);
  });

  it("refuses tensors whose data does not fill their shape, leaving nothing behind", () => {
    const dir = freshDir();
    const file = path.join(dir, "m.safetensors");
    expectCheckpointError(
      () => writeSafetensors(file, [{ name: "w", dtype: "F32", shape: [2, 3], data: new Float32Array(5) }]),
      file,
      "needs 6 values but 5",
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("reports a folder it cannot write into", () => {
    const file = path.join(root, "no-such-dir", "m.safetensors");
    expectCheckpointError(() => writeSafetensors(file, []), file, "cannot be written");
  });
});

describe("opening reads only the header", () => {
  it("opens a 5 GiB file by reading its header, and reads a tensor past 4 GiB by itself", () => {
    const bigBytes = 5 * 2 ** 30;
    const header = {
      big: { dtype: "F32", shape: [bigBytes / 4], data_offsets: [0, bigBytes] },
      tail: { dtype: "F32", shape: [3], data_offsets: [bigBytes, bigBytes + 12] },
    };
    const head = handMadeFile(header);
    const file = path.join(freshDir(), "big.safetensors");
    const fd = fs.openSync(file, "w");
    // A sparse file: the zero data region costs no disk.
    fs.writeSync(fd, head, 0, head.length, 0);
    fs.writeSync(fd, f32Bytes([1.5, -2, 3]), 0, 12, head.length + bigBytes);
    fs.closeSync(fd);

    const readSpy = vi.spyOn(fs, "readSync");
    const bytesRead = (): number => readSpy.mock.calls.reduce((sum, call) => sum + ((call as unknown[])[3] as number), 0);
    const opened = openSafetensors(file);
    expect(bytesRead()).toBe(head.length);
    expect(opened.tensors.get("tail")!.begin).toBe(head.length + bigBytes);
    readSpy.mockClear();
    expect(Array.from(opened.read("tail"))).toEqual([1.5, -2, 3]);
    expect(bytesRead()).toBe(12);
    opened.close();
  });
});

describe("bad files", () => {
  const valid = { w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  const data8 = f32Bytes([1, 2]);

  it("names the file and the problem", () => {
    const cases: Array<[Uint8Array, string | RegExp]> = [
      [Uint8Array.from([1, 2, 3]), "truncated file: 3 bytes"],
      [new Uint8Array(0), "truncated file: 0 bytes"],
      [handMadeFile(valid, data8).subarray(0, 20), /header length \d+ runs past the end/],
      [handMadeFile(null, data8, "{not json"), "not valid UTF-8 JSON"],
      [Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 0xff]), "not valid UTF-8 JSON"],
      [handMadeFile([1, 2]), "header JSON is not an object"],
      [handMadeFile({ w: { shape: [2], data_offsets: [0, 8] } }, data8), "tensor w has no valid dtype"],
      [handMadeFile({ w: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, data8), "tensor w has no valid shape"],
      [handMadeFile({ w: { dtype: "F32", shape: "2", data_offsets: [0, 8] } }, data8), "tensor w has no valid shape"],
      [handMadeFile({ w: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, data8), "tensor w has no valid data_offsets"],
      [handMadeFile({ w: { dtype: "F32", shape: [2], data_offsets: [0] } }, data8), "tensor w has no valid data_offsets"],
      [handMadeFile({ w: 7 }, data8), "tensor w has a header entry that is not an object"],
      [handMadeFile({ w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, data8), "shape [3] of F32 needs 12"],
      [handMadeFile({ w: { dtype: "F32", shape: [1e10, 1e10], data_offsets: [0, 8] } }, data8), "impossibly large shape"],
      [handMadeFile(valid, data8.subarray(0, 6)), "truncated file: tensor w ends at byte"],
      [
        handMadeFile(
          { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F16", shape: [2], data_offsets: [6, 10] } },
          new Uint8Array(10),
        ),
        "tensors a and b overlap",
      ],
      [handMadeFile({ __metadata__: { n: 3 }, ...valid }, data8), "__metadata__ must be an object mapping strings to strings"],
    ];
    for (const [bytes, problem] of cases) {
      const file = writeBytes(bytes);
      expectCheckpointError(() => openSafetensors(file), file, problem);
    }
  });

  it("reports a missing file and a folder", () => {
    const missing = path.join(root, "absent.safetensors");
    expectCheckpointError(() => openSafetensors(missing), missing, "no such file");
    const dir = freshDir();
    expectCheckpointError(() => openSafetensors(dir), dir, "is a folder, not a file");
  });

  it("lists integer tensors but refuses to read them, naming the dtype", () => {
    const file = writeBytes(
      handMadeFile(
        {
          position_ids: { dtype: "I64", shape: [2], data_offsets: [0, 16] },
          odd: { dtype: "Q4_K", shape: [5], data_offsets: [16, 19] },
          w: { dtype: "F32", shape: [2], data_offsets: [19, 27] },
        },
        Uint8Array.from([...new Uint8Array(19), ...data8]),
      ),
    );
    const opened = openSafetensors(file);
    expect(opened.tensors.get("position_ids")!.dtype).toBe("I64");
    expect(Array.from(opened.read("w"))).toEqual([1, 2]);
    expectCheckpointError(
      () => opened.read("position_ids"),
      file,
      "tensor position_ids has unsupported dtype I64; evosparse reads F32, F16, BF16",
    );
    expectCheckpointError(() => opened.read("odd"), file, "unsupported dtype Q4_K");
    expectCheckpointError(() => opened.read("nope"), file, "no tensor named nope");
    opened.close();
    expectCheckpointError(() => opened.read("w"), file, "closed");
  });

  it("reports a file truncated after it was opened", () => {
    const file = writeBytes(handMadeFile(valid, data8));
    const opened = openSafetensors(file);
    fs.truncateSync(file, fs.statSync(file).size - 4);
    expectCheckpointError(() => opened.read("w"), file, "truncated file");
    opened.close();
  });
});

describe("fuzzing openSafetensors and read", () => {
  const fuzzFile = path.join(freshDir(), "fuzz.safetensors");

  /** Opening and reading every tensor may fail, but only with a CheckpointError. */
  function onlyCheckpointErrors(bytes: Uint8Array): void {
    fs.writeFileSync(fuzzFile, bytes);
    try {
      const opened = openSafetensors(fuzzFile);
      try {
        for (const name of opened.tensors.keys()) {
          try {
            opened.read(name);
          } catch (e) {
            if (!(e instanceof CheckpointError)) throw e;
          }
        }
      } finally {
        opened.close();
      }
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw e;
    }
  }

  it("survives arbitrary bytes", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), onlyCheckpointErrors), { numRuns: 200 });
  });

  it("survives arbitrary JSON headers", () => {
    const number = fc.oneof(fc.integer({ min: -5, max: 40 }), fc.double(), fc.constant(2 ** 60), fc.string({ maxLength: 2 }));
    const entry = fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.record(
        {
          dtype: fc.oneof(fc.constantFrom("F32", "F16", "BF16", "I64", "U8", "F4", "F6_E2M3", "x", ""), fc.integer()),
          shape: fc.oneof(fc.array(number, { maxLength: 3 }), number),
          data_offsets: fc.oneof(fc.array(number, { maxLength: 3 }), number),
        },
        { requiredKeys: [] },
      ),
    );
    const header = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }),
      fc.dictionary(fc.constantFrom("a", "b", "c", "__metadata__", "__proto__", "constructor"), entry, { maxKeys: 4 }),
    );
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 48 }), (h, data) => onlyCheckpointErrors(handMadeFile(h, data))),
      { numRuns: 300 },
    );
  });

  it("survives truncations and byte mutations of valid files", () => {
    fc.assert(
      fc.property(
        arbTensors,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.option(fc.nat()),
        (tensors, flips, cut) => {
          writeSafetensors(fuzzFile, tensors);
          const bytes = new Uint8Array(fs.readFileSync(fuzzFile));
          for (const [at, value] of flips) if (bytes.length > 0) bytes[at % bytes.length] = value;
          onlyCheckpointErrors(cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1)));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("sharded checkpoints", () => {
  it("round-trips through shards named as Hugging Face names them", () => {
    fc.assert(
      fc.property(arbTensors, fc.integer({ min: 1, max: 64 }), (tensors, maxShardBytes) => {
        const dir = freshDir();
        const indexPath = writeShardedSafetensors(dir, tensors, maxShardBytes, { format: "pt" });
        expect(path.basename(indexPath)).toBe("model.safetensors.index.json");
        const index = JSON.parse(fs.readFileSync(indexPath, "utf8")) as {
          metadata: { total_size: number };
          weight_map: Record<string, string>;
        };
        const shardFiles = fs.readdirSync(dir).filter((f) => f !== "model.safetensors.index.json").sort();
        const n = shardFiles.length;
        expect(shardFiles).toEqual(
          Array.from({ length: n }, (_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`),
        );
        expect(new Set(Object.values(index.weight_map)).size).toBe(tensors.length === 0 ? 0 : n);
        const bytesOf = (t: TensorToWrite): number => (t.data as Float32Array).length * (t.dtype === "F32" ? 4 : 2);
        expect(index.metadata.total_size).toBe(tensors.reduce((s, t) => s + bytesOf(t), 0));

        const opened = openSafetensorsFolder(dir);
        try {
          expect(opened.path).toBe(indexPath);
          expect(opened.metadata.total_size).toBe(String(index.metadata.total_size));
          expect([...opened.tensors.keys()].sort()).toEqual(tensors.map((t) => t.name).sort());
          for (const t of tensors) {
            const entry = opened.tensors.get(t.name)!;
            expect(path.basename(entry.file)).toBe(index.weight_map[t.name]);
            expect(entry.shape).toEqual(t.shape);
            expect(sameValues(opened.read(t.name), t.data as Float32Array)).toBe(true);
          }
        } finally {
          opened.close();
        }
      }),
      { numRuns: 40 },
    );
  });

  it("splits by the byte limit, giving an oversized tensor its own shard", () => {
    const t = (name: string, n: number): TensorToWrite => ({ name, dtype: "F32", shape: [n], data: new Float32Array(n) });
    const dir = freshDir();
    writeShardedSafetensors(dir, [t("a", 2), t("b", 2), t("c", 10), t("d", 1)], 16);
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8"));
    expect(index.weight_map).toEqual({
      a: "model-00001-of-00003.safetensors",
      b: "model-00001-of-00003.safetensors",
      c: "model-00002-of-00003.safetensors",
      d: "model-00003-of-00003.safetensors",
    });
  });

  it("reports a missing shard, a tensor absent from its shard, and a bad index", () => {
    const dir = freshDir();
    const indexPath = writeShardedSafetensors(dir, [{ name: "w", dtype: "F16", shape: [1], data: new Float32Array([1]) }], 100);
    const writeIndex = (weightMap: unknown): void =>
      fs.writeFileSync(indexPath, JSON.stringify({ metadata: {}, weight_map: weightMap }));

    writeIndex({ w: "model-00001-of-00001.safetensors", v: "model-00009-of-00009.safetensors" });
    expectCheckpointError(() => openShardedSafetensors(indexPath), indexPath, "shard model-00009-of-00009.safetensors, which does not exist");
    writeIndex({ v: "model-00001-of-00001.safetensors" });
    expectCheckpointError(() => openShardedSafetensors(indexPath), indexPath, "puts v in shard model-00001-of-00001.safetensors, which has no such tensor");
    writeIndex({ w: 3 });
    expectCheckpointError(() => openShardedSafetensors(indexPath), indexPath, "weight_map entry w does not name a shard file");
    writeIndex([]);
    expectCheckpointError(() => openShardedSafetensors(indexPath), indexPath, "no weight_map object");
    fs.writeFileSync(indexPath, "{");
    expectCheckpointError(() => openShardedSafetensors(indexPath), indexPath, "not valid JSON");

    writeIndex({ w: "model-00001-of-00001.safetensors" });
    const opened = openShardedSafetensors(indexPath);
    expectCheckpointError(() => opened.read("v"), indexPath, "no tensor named v");
    opened.close();
  });
});

describe("openSafetensorsFolder", () => {
  it("prefers model.safetensors, and names the folder when neither file exists", () => {
    const dir = freshDir();
    expectCheckpointError(() => openSafetensorsFolder(dir), dir, "found neither model.safetensors nor model.safetensors.index.json");
    writeShardedSafetensors(dir, [{ name: "sharded", dtype: "F32", shape: [], data: new Float32Array([2]) }], 100);
    writeSafetensors(path.join(dir, "model.safetensors"), [{ name: "single", dtype: "F32", shape: [], data: new Float32Array([1]) }]);
    const opened = openSafetensorsFolder(dir);
    expect(opened.path).toBe(path.join(dir, "model.safetensors"));
    expect(Array.from(opened.read("single"))).toEqual([1]);
    opened.close();
  });
});
