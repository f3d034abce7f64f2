/**
 * Conversions between float32 and the little-endian storage dtypes of safetensors.
 * Decoders take raw file bytes (any alignment) and return fresh float32 arrays;
 * encoders return the little-endian bytes to write.
 */
import type { StorageDtype } from "./types.ts";

export const storageDtypes: readonly StorageDtype[] = ["F32", "F16", "BF16"];

export const isStorageDtype = (dtype: string): dtype is StorageDtype =>
  (storageDtypes as readonly string[]).includes(dtype);

/** Width in bits of every dtype the safetensors format defines (sub-byte floats included). */
const bitsByDtype: Readonly<Record<string, number>> = {
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  I64: 64,
  U64: 64,
  F64: 64,
  C64: 64,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
};

/** Bits per element of a safetensors dtype, or undefined for a name the format does not define. */
export const bitsPerElement = (dtype: string): number | undefined =>
  Object.hasOwn(bitsByDtype, dtype) ? bitsByDtype[dtype] : undefined;

export function bytesPerElement(dtype: StorageDtype): number;
export function bytesPerElement(dtype: string): number | undefined;
export function bytesPerElement(dtype: string): number | undefined {
  const bits = bitsPerElement(dtype);
  return bits !== undefined && bits % 8 === 0 ? bits / 8 : undefined;
}

// Typed-array views use host byte order; files are little-endian.
const hostIsLittleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function swapBytesInPlace(bytes: Uint8Array, width: number): void {
  for (let i = 0; i < bytes.length; i += width) {
    for (let a = i, b = i + width - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

function checkWhole(bytes: Uint8Array, width: number, dtype: string): void {
  if (bytes.byteLength % width !== 0) {
    throw new RangeError(`${dtype} data of ${bytes.byteLength} bytes is not a whole number of ${width}-byte elements`);
  }
}

/** Host-order u16 view of little-endian bytes, copied when misaligned or when the host is big-endian. */
function u16View(bytes: Uint8Array): Uint16Array {
  if (hostIsLittleEndian && bytes.byteOffset % 2 === 0) {
    return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  }
  const copy = bytes.slice();
  if (!hostIsLittleEndian) swapBytesInPlace(copy, 2);
  return new Uint16Array(copy.buffer, 0, copy.byteLength / 2);
}

function u16ToBytes(halves: Uint16Array): Uint8Array {
  const bytes = new Uint8Array(halves.buffer, halves.byteOffset, halves.byteLength);
  if (!hostIsLittleEndian) swapBytesInPlace(bytes, 2);
  return bytes;
}

// ---- F32 ----

/** Always a fresh copy, so the result never aliases a read buffer that may be reused. */
export function decodeF32(bytes: Uint8Array): Float32Array {
  checkWhole(bytes, 4, "F32");
  const out = new Float32Array(bytes.byteLength / 4);
  const outBytes = new Uint8Array(out.buffer);
  outBytes.set(bytes);
  if (!hostIsLittleEndian) swapBytesInPlace(outBytes, 4);
  return out;
}

/** On little-endian hosts this is a view of `x` (no copy): write it out before mutating `x`. */
export function encodeF32(x: Float32Array): Uint8Array {
  const view = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (hostIsLittleEndian) return view;
  const copy = view.slice();
  swapBytesInPlace(copy, 4);
  return copy;
}

// ---- F16 ----

function halfBitsToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

let halfTable: Float32Array | undefined;

/** All 65536 half values, built once on first use, so decoding is one lookup per element. */
function halfToFloatTable(): Float32Array {
  if (halfTable === undefined) {
    halfTable = new Float32Array(65536);
    const tableBits = new Uint32Array(halfTable.buffer);
    for (let h = 0; h < 65536; h++) {
      const exponent = (h >>> 10) & 0x1f;
      if (exponent === 0x1f && (h & 0x3ff) !== 0) {
        // Keep sign and payload of NaNs rather than collapsing them to one NaN.
        tableBits[h] = ((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13);
      } else {
        halfTable[h] = halfBitsToFloat(h);
      }
    }
  }
  return halfTable;
}

export function decodeF16(bytes: Uint8Array): Float32Array {
  checkWhole(bytes, 2, "F16");
  const halves = u16View(bytes);
  const table = halfToFloatTable();
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]];
  return out;
}

/** float32 bit pattern to half bit pattern, rounding to nearest even. */
export function floatBitsToHalfBits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exponent = (f >>> 23) & 0xff;
  let mantissa = f & 0x7fffff;
  if (exponent === 0xff) {
    if (mantissa === 0) return sign | 0x7c00;
    // Quiet NaN keeping the top payload bits, so a NaN never turns into Inf.
    return sign | 0x7e00 | (mantissa >>> 13);
  }
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent <= 0) {
    // Below 2^-25 even the largest float32 mantissa rounds to zero.
    if (halfExponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - halfExponent;
    let half = mantissa >>> shift;
    const remainder = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (remainder > halfway || (remainder === halfway && (half & 1) === 1)) half++;
    // A carry out of the subnormal range lands exactly on the smallest normal.
    return sign | half;
  }
  let half = (halfExponent << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  // A carry into the exponent is correct rounding, including up to Inf.
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1) === 1)) half++;
  return sign | half;
}

export function encodeF16(x: Float32Array): Uint8Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const halves = new Uint16Array(x.length);
  for (let i = 0; i < bits.length; i++) halves[i] = floatBitsToHalfBits(bits[i]);
  return u16ToBytes(halves);
}

// ---- BF16 ----

export function decodeBF16(bytes: Uint8Array): Float32Array {
  checkWhole(bytes, 2, "BF16");
  const halves = u16View(bytes);
  const out = new Float32Array(halves.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) outBits[i] = halves[i] << 16;
  return out;
}

/** float32 bit pattern to bfloat16 bit pattern, rounding to nearest even. */
export function floatBitsToBrainBits(f: number): number {
  // Rounding a NaN could carry it into Inf; set the quiet bit instead.
  if ((f & 0x7fffffff) > 0x7f800000) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

export function encodeBF16(x: Float32Array): Uint8Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const halves = new Uint16Array(x.length);
  for (let i = 0; i < bits.length; i++) halves[i] = floatBitsToBrainBits(bits[i]);
  return u16ToBytes(halves);
}

// ---- by name ----

export function decodeStorage(dtype: StorageDtype, bytes: Uint8Array): Float32Array {
  switch (dtype) {
    case "F32":
      return decodeF32(bytes);
    case "F16":
      return decodeF16(bytes);
    case "BF16":
      return decodeBF16(bytes);
  }
}

export function encodeStorage(dtype: StorageDtype, x: Float32Array): Uint8Array {
  switch (dtype) {
    case "F32":
      return encodeF32(x);
    case "F16":
      return encodeF16(x);
    case "BF16":
      return encodeBF16(x);
  }
}
