import { describe, expect, it } from "vitest";
import fc from "fast-check";
import {
  bitsPerElement,
  bytesPerElement,
  decodeBF16,
  decodeF16,
  decodeF32,
  encodeBF16,
  encodeF16,
  encodeF32,
} from "../src/checkpoint/dtype.ts";

/** IEEE 754 binary16 decoded straight from the definition, in float64. */
function referenceHalf(h: number): number {
  const s = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  if (e === 0) return s * Math.pow(2, -14) * (m / 1024);
  return s * Math.pow(2, e - 15) * (1 + m / 1024);
}

const f32FromBits = (bits: number): number => new Float32Array(new Uint32Array([bits]).buffer)[0];
const bitsOfF32 = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0];
const halfBytes = (halves: number[]): Uint8Array => {
  const bytes = new Uint8Array(halves.length * 2);
  halves.forEach((h, i) => {
    bytes[2 * i] = h & 0xff;
    bytes[2 * i + 1] = h >> 8;
  });
  return bytes;
};
const readHalves = (bytes: Uint8Array): number[] =>
  Array.from({ length: bytes.length / 2 }, (_, i) => bytes[2 * i] | (bytes[2 * i + 1] << 8));

/** Positive finite halves in increasing order of value (bit order is value order). */
const positiveHalves = Array.from({ length: 0x7c00 }, (_, h) => referenceHalf(h));

/** Nearest half to x, ties to the even bit pattern; |x| >= 65520 (max + half ulp) overflows. */
function referenceRoundToHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  let lo = 0;
  let hi = positiveHalves.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (positiveHalves[mid] <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - positiveHalves[lo];
  const dHi = positiveHalves[hi] - a;
  const chosen = dLo < dHi ? lo : dHi < dLo ? hi : lo % 2 === 0 ? lo : hi;
  return sign | chosen;
}

/** Nearest bfloat16 to a finite float32, ties to even; 2^128 stands in for Inf. */
function referenceRoundToBrain(x: number): number {
  const bits = bitsOfF32(x);
  const truncated = bits >>> 16;
  const valueOf = (b: number): number => ((b & 0x7fff) === 0x7f80 ? (b & 0x8000 ? -1 : 1) * 2 ** 128 : f32FromBits(b << 16));
  const down = valueOf(truncated);
  const up = valueOf(truncated + 1);
  const dDown = Math.abs(x - down);
  const dUp = Math.abs(up - x);
  return dDown < dUp ? truncated : dUp < dDown ? truncated + 1 : truncated % 2 === 0 ? truncated : truncated + 1;
}

describe("F16", () => {
  it("decodes every one of the 65536 bit patterns like the reference decoder", () => {
    const all = Array.from({ length: 65536 }, (_, h) => h);
    const decoded = decodeF16(halfBytes(all));
    const wrong = all.filter((h) => {
      const want = referenceHalf(h);
      return Number.isNaN(want) ? !Number.isNaN(decoded[h]) : !Object.is(decoded[h], want);
    });
    expect(wrong).toEqual([]);
  });

  it("round-trips every non-NaN half bit pattern exactly, and keeps NaNs NaN", () => {
    const all = Array.from({ length: 65536 }, (_, h) => h);
    const back = readHalves(encodeF16(decodeF16(halfBytes(all))));
    const wrong = all.filter((h) => (Number.isNaN(referenceHalf(h)) ? !Number.isNaN(referenceHalf(back[h])) : back[h] !== h));
    expect(wrong).toEqual([]);
  });

  it("round-trips arrays of representable values", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 0xffff }).filter((h) => !Number.isNaN(referenceHalf(h)))), (halves) => {
        const values = Float32Array.from(halves, referenceHalf);
        const again = decodeF16(encodeF16(values));
        expect(Array.from(again)).toEqual(Array.from(values));
      }),
    );
  });

  it("rounds any float32 to the nearest half, ties to even, overflowing to Inf", () => {
    fc.assert(
      fc.property(fc.float({ noNaN: true }), (x) => {
        const [h] = readHalves(encodeF16(new Float32Array([x])));
        expect(h.toString(16)).toBe(referenceRoundToHalf(x).toString(16));
      }),
      { numRuns: 2000 },
    );
  });

  it("rounds values exactly between two halves to the even one", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x7bfe }), fc.boolean(), (h, negative) => {
        const midpoint = (referenceHalf(h) + referenceHalf(h + 1)) / 2;
        const x = Math.fround(midpoint);
        fc.pre(x === midpoint);
        const [got] = readHalves(encodeF16(new Float32Array([negative ? -x : x])));
        expect(got).toBe((negative ? 0x8000 : 0) | (h % 2 === 0 ? h : h + 1));
      }),
    );
  });

  it("has relative error at most 2^-11 in the normal range", () => {
    fc.assert(
      fc.property(fc.float({ min: Math.fround(2 ** -14), max: 65504, noNaN: true }), fc.boolean(), (a, negative) => {
        const x = negative ? -a : a;
        const [y] = decodeF16(encodeF16(new Float32Array([x])));
        expect(Math.abs(y - x) / Math.abs(x)).toBeLessThanOrEqual(2 ** -11);
      }),
    );
  });

  it("maps Inf, NaN, -0 and overflow", () => {
    const out = readHalves(encodeF16(new Float32Array([Infinity, -Infinity, NaN, -0, 65520, 65519, 1e-8, f32FromBits(0x7f800001)])));
    expect(out.slice(0, 2)).toEqual([0x7c00, 0xfc00]);
    expect(Number.isNaN(referenceHalf(out[2]))).toBe(true);
    expect(out.slice(3, 7)).toEqual([0x8000, 0x7c00, 0x7bff, 0]);
    expect(Number.isNaN(referenceHalf(out[7]))).toBe(true);
  });
});

describe("BF16", () => {
  it("decodes by placing the 16 bits at the top of a float32", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 0xffff })), (halves) => {
        const decoded = decodeBF16(halfBytes(halves));
        // Bits are compared through a view: a NaN loaded into a JS number may be quietened.
        expect(Array.from(new Uint32Array(decoded.buffer))).toEqual(halves.map((b) => b * 65536));
      }),
    );
  });

  it("round-trips every representable non-NaN value exactly", () => {
    const all = Array.from({ length: 65536 }, (_, b) => b).filter((b) => (b & 0x7fff) <= 0x7f80);
    expect(readHalves(encodeBF16(decodeBF16(halfBytes(all))))).toEqual(all);
  });

  it("rounds any finite float32 to the nearest bfloat16, ties to even", () => {
    fc.assert(
      fc.property(fc.float({ noNaN: true, noDefaultInfinity: true }), (x) => {
        const [b] = readHalves(encodeBF16(new Float32Array([x])));
        expect(b.toString(16)).toBe(referenceRoundToBrain(x).toString(16));
      }),
      { numRuns: 2000 },
    );
  });

  it("rounds values exactly between two bfloat16s to the even one", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x7f7f }), fc.boolean(), (b, negative) => {
        const midpoint = (f32FromBits(b << 16) + f32FromBits((b + 1) << 16)) / 2;
        const x = Math.fround(midpoint);
        fc.pre(x === midpoint);
        const [got] = readHalves(encodeBF16(new Float32Array([negative ? -x : x])));
        expect(got).toBe((negative ? 0x8000 : 0) | (b % 2 === 0 ? b : b + 1));
      }),
    );
  });

  it("keeps NaN NaN, even when its payload is only in the dropped bits", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 0x7fffff }), fc.boolean(), (payload, negative) => {
        const bits = ((negative ? 0x80000000 : 0) | 0x7f800000 | payload) >>> 0;
        const [b] = readHalves(encodeBF16(new Float32Array([f32FromBits(bits)])));
        expect((b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0).toBe(true);
      }),
    );
  });
});

describe("F32 and alignment", () => {
  it("decodes bytes at any offset, copying when unaligned", () => {
    fc.assert(
      fc.property(fc.array(fc.float({ noNaN: true })), fc.integer({ min: 0, max: 7 }), (values, skew) => {
        const want = Float32Array.from(values);
        const f32Bytes = new Uint8Array(want.buffer);
        const host = new Uint8Array(f32Bytes.length + skew);
        host.set(f32Bytes, skew);
        expect(Array.from(decodeF32(host.subarray(skew)))).toEqual(Array.from(want));

        const f16 = encodeF16(want);
        const f16Host = new Uint8Array(f16.length + skew);
        f16Host.set(f16, skew);
        expect(Array.from(decodeF16(f16Host.subarray(skew)))).toEqual(Array.from(decodeF16(f16)));

        const bf16 = encodeBF16(want);
        const bf16Host = new Uint8Array(bf16.length + skew);
        bf16Host.set(bf16, skew);
        expect(Array.from(decodeBF16(bf16Host.subarray(skew)))).toEqual(Array.from(decodeBF16(bf16)));
      }),
    );
  });

  it("encodes float32 as little-endian bytes", () => {
    const bytes = encodeF32(new Float32Array([1, -2]));
    expect(Array.from(bytes)).toEqual([0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);
  });

  it("rejects byte counts that are not whole elements", () => {
    expect(() => decodeF32(new Uint8Array(6))).toThrow(RangeError);
    expect(() => decodeF16(new Uint8Array(3))).toThrow(RangeError);
  });

  it("knows element sizes", () => {
    expect([bytesPerElement("F32"), bytesPerElement("F16"), bytesPerElement("BF16")]).toEqual([4, 2, 2]);
    expect(bytesPerElement("I64")).toBe(8);
    expect(bytesPerElement("F4")).toBeUndefined();
    expect(bitsPerElement("F4")).toBe(4);
    expect(bytesPerElement("toString")).toBeUndefined();
  });
});
