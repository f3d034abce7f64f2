/**
 * A tensor's bytes as the file stores them, to float32 in the model's layout: the one
 * place where streamed weights are decoded. The native kernel does it in one pass (F16C on
 * x86-64, transposing in cache-sized tiles) straight into the array given, which may be a
 * view of the backend's heap; without it, the same in JavaScript. A NaN or infinity is
 * refused naming the file and the tensor, with its index as stored.
 */
import { nativeBlas } from "../backend/native-blas.ts";
import { CheckpointError } from "../errors.ts";
import { decodeStorage, encodeStorage } from "./dtype.ts";
import { checkFiniteWeights } from "./host.ts";
import type { StorageDtype } from "./types.ts";

const DTYPE_CODES: Readonly<Record<StorageDtype, 0 | 1 | 2>> = { F32: 0, F16: 1, BF16: 2 };

export interface StoredTensor {
  /** Names the tensor in errors. */
  readonly file: string;
  readonly name: string;
  readonly dtype: StorageDtype;
  /** [rows, cols] as stored (a vector is one row). */
  readonly rows: number;
  readonly cols: number;
  /** The model wants [cols, rows]. */
  readonly transposed: boolean;
}

/** Refuses a non-finite element found at `index` (file order), saying which kind it is. */
const nonFinite = (t: StoredTensor, bytes: Uint8Array, index: number): never => {
  const width = t.dtype === "F32" ? 4 : 2;
  const value = decodeStorage(t.dtype, bytes.subarray(index * width, (index + 1) * width))[0]!;
  const what = Number.isNaN(value) ? "NaN" : value > 0 ? "+Infinity" : "-Infinity";
  throw new CheckpointError({ file: t.file, problem: `tensor ${t.name} holds ${what} at index ${index}` });
};

/**
 * Writes the tensor's rows x cols values into `into` (the first rows·cols entries), converted
 * and laid out as the model wants. `route` "js" skips the native kernel (the reference the
 * tests hold it to).
 */
export const convertInto = (t: StoredTensor, bytes: Uint8Array, into: Float32Array, route: "auto" | "js" = "auto"): void => {
  const n = t.rows * t.cols;
  const native = route === "auto" ? nativeBlas() : undefined;
  if (native?.convert) {
    const bad = native.convert(bytes, DTYPE_CODES[t.dtype], t.rows, t.cols, t.transposed, into);
    if (bad >= 0) nonFinite(t, bytes, bad);
    return;
  }
  const values = decodeStorage(t.dtype, bytes.subarray(0, n * (t.dtype === "F32" ? 4 : 2)));
  checkFiniteWeights(t.file, t.name, values);
  if (!t.transposed || t.rows === 1 || t.cols === 1) {
    into.set(values);
    return;
  }
  const { rows, cols } = t;
  const tile = 64;
  for (let r0 = 0; r0 < rows; r0 += tile) {
    const r1 = Math.min(rows, r0 + tile);
    for (let c0 = 0; c0 < cols; c0 += tile) {
      const c1 = Math.min(cols, c0 + tile);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) into[c * rows + r] = values[r * cols + c]!;
    }
  }
};

/** The converted values in a new array. */
export const convertToHost = (t: StoredTensor, bytes: Uint8Array): Float32Array => {
  const out = new Float32Array(t.rows * t.cols);
  convertInto(t, bytes, out);
  return out;
};

/**
 * The other way: float32 values (rows x cols, row-major) as the dtype's bytes, transposed
 * when the file stores the other layout. The native kernel in one pass; else dtype.ts's
 * encoders, which round the same way (to nearest even).
 */
export const encodeFrom = (dtype: StorageDtype, data: Float32Array, rows: number, cols: number, transposed: boolean, route: "auto" | "js" = "auto"): Uint8Array => {
  const native = route === "auto" ? nativeBlas() : undefined;
  if (native?.encode) {
    const out = new Uint8Array(rows * cols * (dtype === "F32" ? 4 : 2));
    native.encode(data, DTYPE_CODES[dtype], rows, cols, transposed && rows > 1 && cols > 1, out);
    return out;
  }
  if (!transposed || rows === 1 || cols === 1) {
    // encodeStorage's F32 result views its input: a copy, so the bytes never alias `data`.
    return dtype === "F32" ? encodeStorage(dtype, data).slice() : encodeStorage(dtype, data);
  }
  // Transposed as bit patterns: a float copy could quiet a NaN's payload.
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = bits[r * cols + c]!;
  const values = new Float32Array(out.buffer);
  return dtype === "F32" ? new Uint8Array(out.buffer) : encodeStorage(dtype, values);
};
