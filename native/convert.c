/*
 * Weight conversion for streamed checkpoints: a tensor's file bytes (F32, F16 or BF16,
 * little-endian, row-major as the file stores it) to float32, transposed on the way when
 * the model needs the other layout (torch.nn.Linear's [out, in] to our [in, out]). It
 * writes straight into the array it is given, which may be a view of the wasm heap, so a
 * streamed block is converted once and never copied again. Non-finite values are found
 * before anything is written: the caller names the tensor.
 *
 * x86-64 processors with F16C convert eight halves per instruction; elsewhere, and for
 * BF16 and F32, plain C loops that compilers vectorise.
 */
#include "convert.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_F16C_PATH 1
#endif

enum { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 };

static float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    /* Zero or subnormal: mantissa * 2^-24, exact in float32. */
    float f = (float)mantissa * 5.9604644775390625e-8f;
    memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

static inline float brain_to_float(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

static inline uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t load32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Index of the first element whose exponent bits are all ones (NaN or infinity), or -1. */
static int64_t first_non_finite(const uint8_t *src, int dtype, size_t n) {
  if (dtype == DTYPE_F32) {
    for (size_t i = 0; i < n; i++)
      if ((load32(src + 4 * i) & 0x7f800000u) == 0x7f800000u) return (int64_t)i;
    return -1;
  }
  const uint16_t mask = dtype == DTYPE_F16 ? 0x7c00u : 0x7f80u;
  /* A branch-free pass first: almost every tensor is finite. */
  const size_t block = 4096;
  for (size_t start = 0; start < n; start += block) {
    const size_t end = start + block < n ? start + block : n;
    int any = 0;
    for (size_t i = start; i < end; i++) any |= (load16(src + 2 * i) & mask) == mask;
    if (any)
      for (size_t i = start; i < end; i++)
        if ((load16(src + 2 * i) & mask) == mask) return (int64_t)i;
  }
  return -1;
}

#ifdef HAVE_F16C_PATH
/* Eight elements of any dtype at src as floats. */
__attribute__((target("f16c,avx2"))) static inline __m256 load8(const uint8_t *src, int dtype) {
  if (dtype == DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)src));
  if (dtype == DTYPE_BF16)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
  return _mm256_loadu_ps((const float *)src);
}

/* An 8 x 8 block of floats, one row per register, transposed in registers. */
__attribute__((target("f16c,avx2"))) static inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/*
 * The whole-8 part of a transposed conversion: rows [0, rows8) x cols [0, cols8), walked in
 * 64 x 64 tiles of 8 x 8 register transposes. The caller converts the edges.
 */
__attribute__((target("f16c,avx2"))) static void transposed_avx2(const uint8_t *src, int dtype, size_t rows, size_t cols,
                                                                 size_t rows8, size_t cols8, float *dst) {
  const size_t width = dtype == DTYPE_F32 ? 4 : 2;
  for (size_t r0 = 0; r0 < rows8; r0 += 64) {
    const size_t r1 = r0 + 64 < rows8 ? r0 + 64 : rows8;
    for (size_t c0 = 0; c0 < cols8; c0 += 64) {
      const size_t c1 = c0 + 64 < cols8 ? c0 + 64 : cols8;
      for (size_t r = r0; r < r1; r += 8)
        for (size_t c = c0; c < c1; c += 8) {
          __m256 v[8];
          for (int k = 0; k < 8; k++) v[k] = load8(src + width * ((r + k) * cols + c), dtype);
          transpose8(v);
          for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + (c + k) * rows + r, v[k]);
        }
    }
  }
}
static int has_avx2 = -1;

__attribute__((target("f16c,avx"))) static void halves_f16c(const uint8_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
  for (; i < n; i++) dst[i] = half_to_float(load16(src + 2 * i));
}
static int has_f16c = -1;
#endif

/* n consecutive elements to float32. */
static void convert_run(const uint8_t *src, int dtype, float *dst, size_t n) {
  switch (dtype) {
    case DTYPE_F32:
      memcpy(dst, src, 4 * n); /* little-endian hosts only (the addon is built for them) */
      return;
    case DTYPE_F16:
#ifdef HAVE_F16C_PATH
      if (has_f16c < 0) has_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
      if (has_f16c) {
        halves_f16c(src, dst, n);
        return;
      }
#endif
      for (size_t i = 0; i < n; i++) dst[i] = half_to_float(load16(src + 2 * i));
      return;
    default:
      for (size_t i = 0; i < n; i++) dst[i] = brain_to_float(load16(src + 2 * i));
      return;
  }
}

/*
 * rows x cols (file order) to dst, transposed: dst[c * rows + r] = src[r][c]. Tiles of
 * TILE x TILE are converted row by row into a small buffer and written out column by
 * column, so both sides stay in cache.
 */
#define TILE 64
static void convert_transposed(const uint8_t *src, int dtype, size_t rows, size_t cols, float *dst) {
  const size_t width = dtype == DTYPE_F32 ? 4 : 2;
  size_t first_row = 0;
#ifdef HAVE_F16C_PATH
  if (has_avx2 < 0) has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (has_avx2) {
    const size_t rows8 = rows & ~(size_t)7, cols8 = cols & ~(size_t)7;
    transposed_avx2(src, dtype, rows, cols, rows8, cols8, dst);
    /* The columns beyond cols8 of the rows done, then the rows beyond rows8. */
    for (size_t r = 0; r < rows8; r++)
      for (size_t c = cols8; c < cols; c++) {
        float v;
        convert_run(src + width * (r * cols + c), dtype, &v, 1);
        dst[c * rows + r] = v;
      }
    first_row = rows8;
  }
#endif
  float tile[TILE * TILE];
  for (size_t r0 = first_row; r0 < rows; r0 += TILE) {
    const size_t nr = rows - r0 < TILE ? rows - r0 : TILE;
    for (size_t c0 = 0; c0 < cols; c0 += TILE) {
      const size_t nc = cols - c0 < TILE ? cols - c0 : TILE;
      for (size_t r = 0; r < nr; r++) convert_run(src + width * ((r0 + r) * cols + c0), dtype, tile + r * TILE, nc);
      for (size_t c = 0; c < nc; c++) {
        float *out = dst + (c0 + c) * rows + r0;
        for (size_t r = 0; r < nr; r++) out[r] = tile[r * TILE + c];
      }
    }
  }
}

static napi_value fail(napi_env env, const char *message) {
  napi_throw_range_error(env, NULL, message);
  return NULL;
}

/*
 * convert(src: Uint8Array, dtype: 0 F32 | 1 F16 | 2 BF16, rows, cols, transpose, dst:
 * Float32Array) -> index (in file order) of the first non-finite value, or -1 after
 * writing all rows x cols values.
 */
napi_value evosparse_convert(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6)
    return fail(env, "evosparse_convert: expected 6 arguments");
  bool is_typed = false;
  napi_typedarray_type kind;
  size_t src_length, dst_length, offset;
  void *src_data, *dst_data;
  napi_value buffer;
  if (napi_is_typedarray(env, argv[0], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[0], &kind, &src_length, &src_data, &buffer, &offset) != napi_ok ||
      kind != napi_uint8_array)
    return fail(env, "evosparse_convert: src must be a Uint8Array");
  if (napi_is_typedarray(env, argv[5], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[5], &kind, &dst_length, &dst_data, &buffer, &offset) != napi_ok ||
      kind != napi_float32_array)
    return fail(env, "evosparse_convert: dst must be a Float32Array");
  int32_t dtype;
  double rows_d, cols_d;
  bool transpose;
  if (napi_get_value_int32(env, argv[1], &dtype) != napi_ok || dtype < 0 || dtype > 2)
    return fail(env, "evosparse_convert: dtype must be 0 (F32), 1 (F16) or 2 (BF16)");
  if (napi_get_value_double(env, argv[2], &rows_d) != napi_ok || napi_get_value_double(env, argv[3], &cols_d) != napi_ok ||
      !(rows_d >= 0 && cols_d >= 0) || rows_d != floor(rows_d) || cols_d != floor(cols_d) || rows_d * cols_d > 9.0e15)
    return fail(env, "evosparse_convert: rows and cols must be whole numbers");
  if (napi_get_value_bool(env, argv[4], &transpose) != napi_ok) return fail(env, "evosparse_convert: transpose must be a boolean");
  const size_t rows = (size_t)rows_d, cols = (size_t)cols_d, n = rows * cols;
  const size_t width = dtype == DTYPE_F32 ? 4 : 2;
  if (src_length < n * width) return fail(env, "evosparse_convert: src is shorter than rows x cols elements");
  if (dst_length < n) return fail(env, "evosparse_convert: dst is shorter than rows x cols elements");
  const uint8_t *src = (const uint8_t *)src_data;
  const int64_t bad = first_non_finite(src, dtype, n);
  if (bad < 0) {
    if (transpose && rows > 1 && cols > 1) convert_transposed(src, dtype, rows, cols, (float *)dst_data);
    else convert_run(src, dtype, (float *)dst_data, n);
  }
  napi_value out;
  if (napi_create_double(env, (double)bad, &out) != napi_ok) return NULL;
  return out;
}
