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
#include <stdlib.h>
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

/* The call's `want` arguments; throws (false) when there are fewer. */
static bool args_of(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *who) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == want) return true;
  char message[96];
  snprintf(message, sizeof message, "%s: expected %zu arguments", who, want);
  fail(env, message);
  return false;
}

/* A typed array of one of the kinds allowed (kinds[0..count)); throws (false) otherwise. */
static bool typed_of(napi_env env, napi_value v, const napi_typedarray_type *kinds, size_t count, const char *what, void **data,
                     size_t *length, napi_typedarray_type *kind) {
  bool is_typed = false;
  napi_value buffer;
  size_t offset;
  napi_typedarray_type got;
  if (napi_is_typedarray(env, v, &is_typed) == napi_ok && is_typed &&
      napi_get_typedarray_info(env, v, &got, length, data, &buffer, &offset) == napi_ok) {
    for (size_t k = 0; k < count; k++)
      if (got == kinds[k]) {
        if (kind) *kind = got;
        return true;
      }
  }
  fail(env, what);
  return false;
}

/* A whole number in [lo, hi]; throws (false) otherwise. */
static bool whole_of(napi_env env, napi_value v, double lo, double hi, const char *what, size_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok && d >= lo && d <= hi && d == floor(d)) {
    *out = (size_t)d;
    return true;
  }
  fail(env, what);
  return false;
}

static const napi_typedarray_type U8[] = {napi_uint8_array};
static const napi_typedarray_type F32[] = {napi_float32_array};
static const napi_typedarray_type RANK_ARRAYS[] = {napi_uint16_array, napi_uint32_array};

/*
 * convert(src: Uint8Array, dtype: 0 F32 | 1 F16 | 2 BF16, rows, cols, transpose, dst:
 * Float32Array) -> index (in file order) of the first non-finite value, or -1 after
 * writing all rows x cols values.
 */
napi_value evosparse_convert(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t src_length, dst_length, rows, cols;
  void *src_data, *dst_data;
  int32_t dtype;
  bool transpose;
  if (!args_of(env, info, 6, argv, "evosparse_convert") ||
      !typed_of(env, argv[0], U8, 1, "evosparse_convert: src must be a Uint8Array", &src_data, &src_length, NULL) ||
      !typed_of(env, argv[5], F32, 1, "evosparse_convert: dst must be a Float32Array", &dst_data, &dst_length, NULL) ||
      !whole_of(env, argv[2], 0, 9.0e15, "evosparse_convert: rows must be a whole number", &rows) ||
      !whole_of(env, argv[3], 0, 9.0e15, "evosparse_convert: cols must be a whole number", &cols))
    return NULL;
  if (napi_get_value_int32(env, argv[1], &dtype) != napi_ok || dtype < 0 || dtype > 2)
    return fail(env, "evosparse_convert: dtype must be 0 (F32), 1 (F16) or 2 (BF16)");
  if (napi_get_value_bool(env, argv[4], &transpose) != napi_ok) return fail(env, "evosparse_convert: transpose must be a boolean");
  const size_t n = rows * cols;
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

/* ---- float32 to the file's dtype, for pruned blocks kept and written ---- */

static uint16_t float_to_half(float value) {
  uint32_t f;
  memcpy(&f, &value, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t exponent = (f >> 23) & 0xffu;
  uint32_t mantissa = f & 0x7fffffu;
  if (exponent == 0xff) return (uint16_t)(mantissa == 0 ? sign | 0x7c00u : sign | 0x7e00u | (mantissa >> 13));
  const int32_t half_exponent = (int32_t)exponent - 127 + 15;
  if (half_exponent >= 0x1f) return (uint16_t)(sign | 0x7c00u);
  if (half_exponent <= 0) {
    if (half_exponent < -10) return (uint16_t)sign;
    mantissa |= 0x800000u;
    const uint32_t shift = (uint32_t)(14 - half_exponent);
    uint32_t half = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = ((uint32_t)half_exponent << 10) | (mantissa >> 13);
  const uint32_t remainder = mantissa & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) half++;
  return (uint16_t)(sign | half);
}

static uint16_t float_to_brain(float value) {
  uint32_t f;
  memcpy(&f, &value, 4);
  if ((f & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((f >> 16) | 0x40u) & 0xffffu);
  return (uint16_t)(((f + 0x7fffu + ((f >> 16) & 1u)) >> 16) & 0xffffu);
}

static inline void store_element(uint8_t *dst, int dtype, float v) {
  if (dtype == DTYPE_F32) {
    memcpy(dst, &v, 4);
    return;
  }
  const uint16_t h = dtype == DTYPE_F16 ? float_to_half(v) : float_to_brain(v);
  dst[0] = (uint8_t)(h & 0xff);
  dst[1] = (uint8_t)(h >> 8);
}

/*
 * encode(src: Float32Array, dtype, rows, cols, transpose, dst: Uint8Array): rows x cols
 * floats (row-major) to the dtype's little-endian bytes, transposed when asked
 * (dst element [c][r] = src[r][c]); rounding to nearest even, as dtype.ts encodes.
 */
napi_value evosparse_encode(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t src_length, dst_length, rows, cols;
  void *src_data, *dst_data;
  int32_t dtype;
  bool transpose;
  if (!args_of(env, info, 6, argv, "evosparse_encode") ||
      !typed_of(env, argv[0], F32, 1, "evosparse_encode: src must be a Float32Array", &src_data, &src_length, NULL) ||
      !typed_of(env, argv[5], U8, 1, "evosparse_encode: dst must be a Uint8Array", &dst_data, &dst_length, NULL) ||
      !whole_of(env, argv[2], 0, 9.0e15, "evosparse_encode: rows must be a whole number", &rows) ||
      !whole_of(env, argv[3], 0, 9.0e15, "evosparse_encode: cols must be a whole number", &cols))
    return NULL;
  if (napi_get_value_int32(env, argv[1], &dtype) != napi_ok || dtype < 0 || dtype > 2)
    return fail(env, "evosparse_encode: dtype must be 0 (F32), 1 (F16) or 2 (BF16)");
  if (napi_get_value_bool(env, argv[4], &transpose) != napi_ok) return fail(env, "evosparse_encode: transpose must be a boolean");
  const size_t n = rows * cols;
  const size_t width = dtype == DTYPE_F32 ? 4 : 2;
  if (src_length < n) return fail(env, "evosparse_encode: src is shorter than rows x cols elements");
  if (dst_length < n * width) return fail(env, "evosparse_encode: dst is shorter than rows x cols elements");
  const float *src = (const float *)src_data;
  uint8_t *dst = (uint8_t *)dst_data;
  if (!transpose || rows == 1 || cols == 1) {
    for (size_t i = 0; i < n; i++) store_element(dst + width * i, dtype, src[i]);
    return NULL;
  }
  for (size_t r0 = 0; r0 < rows; r0 += TILE)
    for (size_t c0 = 0; c0 < cols; c0 += TILE) {
      const size_t r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < cols ? c0 + TILE : cols;
      for (size_t c = c0; c < c1; c++)
        for (size_t r = r0; r < r1; r++) store_element(dst + width * (c * rows + r), dtype, src[r * cols + c]);
    }
  return NULL;
}

/* ---- the k lowest scores of a group, equal scores by index: masks.ts's order ---- */

/* A float's bits as an unsigned key in the float's order (-0 folded into +0: equal scores). */
static inline uint32_t ordered_key(float value) {
  value += 0.0f;
  uint32_t bits;
  memcpy(&bits, &value, 4);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

static int by_key_then_index(const void *a, const void *b) {
  const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/*
 * The k lowest of n (key, index) pairs, ordered by key then index, marked in `pruned`
 * (pruned[j] = 1 for the j-th pair). Radix select: a histogram of up to 4096 buckets over the
 * keys' range finds the bucket holding the k-th; everything below it is pruned, and the bucket
 * itself (a small share of n) is sorted on (key << 32 | index) to finish. `scratch` holds n pairs.
 */
static void mark_lowest(const uint32_t *keys, size_t n, size_t k, uint8_t *pruned, uint64_t *scratch) {
  memset(pruned, 0, n);
  if (k == 0) return;
  if (k >= n) {
    memset(pruned, 1, n);
    return;
  }
  /* Buckets span the keys' own range, so scores of a narrow range still spread over all of them. */
  uint32_t lo = keys[0], hi = keys[0];
  for (size_t j = 1; j < n; j++) {
    if (keys[j] < lo) lo = keys[j];
    if (keys[j] > hi) hi = keys[j];
  }
  /* About four keys a bucket: clearing and scanning the histogram costs no more than the keys. */
  uint32_t buckets = 64;
  while (buckets < 4096u && buckets * 4 < n) buckets *= 2;
  unsigned shift = 0;
  while (((hi - lo) >> shift) >= buckets) shift++;
  uint32_t counts[4096];
  memset(counts, 0, buckets * sizeof(uint32_t));
  for (size_t j = 0; j < n; j++) counts[(keys[j] - lo) >> shift]++;
  size_t below = 0;
  uint32_t bucket = 0;
  while (below + counts[bucket] < k) below += counts[bucket++];
  /* Branch-free for the bulk; the k-th's own bucket is rare enough to branch on. */
  for (size_t j = 0; j < n; j++) pruned[j] = ((keys[j] - lo) >> shift) < bucket;
  size_t m = 0;
  for (size_t j = 0; j < n; j++)
    if (((keys[j] - lo) >> shift) == bucket) scratch[m++] = ((uint64_t)keys[j] << 32) | (uint64_t)j;
  qsort(scratch, m, sizeof(uint64_t), by_key_then_index);
  for (size_t j = 0; j < k - below; j++) pruned[(uint32_t)scratch[j]] = 1;
}

/*
 * lowest(scores: Float32Array, rows, cols, perColumn, k, keep: Uint8Array): keep[e] = 0 for
 * the k lowest scores of each column of the row-major rows x cols matrix (perColumn), or of
 * the whole matrix; 1 elsewhere. Equal scores: the lower flat index is lower.
 */
napi_value evosparse_lowest(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t scores_length, keep_length, rows, cols, k;
  void *scores_data, *keep_data;
  bool per_column;
  if (!args_of(env, info, 6, argv, "evosparse_lowest") ||
      !typed_of(env, argv[0], F32, 1, "evosparse_lowest: scores must be a Float32Array", &scores_data, &scores_length, NULL) ||
      !typed_of(env, argv[5], U8, 1, "evosparse_lowest: keep must be a Uint8Array", &keep_data, &keep_length, NULL) ||
      !whole_of(env, argv[1], 1, 4294967295.0, "evosparse_lowest: rows must be a whole number >= 1", &rows) ||
      !whole_of(env, argv[2], 1, 4294967295.0, "evosparse_lowest: cols must be a whole number >= 1", &cols) ||
      !whole_of(env, argv[4], 0, 9.0e15, "evosparse_lowest: k must be a whole number", &k))
    return NULL;
  if (napi_get_value_bool(env, argv[3], &per_column) != napi_ok) return fail(env, "evosparse_lowest: perColumn must be a boolean");
  if ((double)rows * (double)cols > 4294967295.0) return fail(env, "evosparse_lowest: rows x cols must be below 2^32");
  const size_t n = rows * cols;
  if (scores_length < n || keep_length < n) return fail(env, "evosparse_lowest: scores or keep is shorter than rows x cols");
  const float *scores = (const float *)scores_data;
  uint8_t *keep = (uint8_t *)keep_data;
  if (!per_column) {
    uint32_t *keys = (uint32_t *)malloc(n * sizeof(uint32_t));
    uint64_t *scratch = (uint64_t *)malloc(n * sizeof(uint64_t));
    if (!keys || !scratch) {
      free(keys);
      free(scratch);
      return fail(env, "evosparse_lowest: out of memory");
    }
    for (size_t e = 0; e < n; e++) keys[e] = ordered_key(scores[e]);
    mark_lowest(keys, n, k, keep, scratch);
    for (size_t e = 0; e < n; e++) keep[e] = !keep[e];
    free(keys);
    free(scratch);
    return NULL;
  }
  /* Columns gathered a tile at a time, reading rows in order. */
  const size_t tile = 32;
  uint32_t *keys = (uint32_t *)malloc(tile * rows * sizeof(uint32_t));
  uint64_t *scratch = (uint64_t *)malloc(rows * sizeof(uint64_t));
  uint8_t *pruned = (uint8_t *)malloc(tile * rows);
  if (!keys || !scratch || !pruned) {
    free(keys);
    free(scratch);
    free(pruned);
    return fail(env, "evosparse_lowest: out of memory");
  }
  for (size_t c0 = 0; c0 < cols; c0 += tile) {
    const size_t nc = cols - c0 < tile ? cols - c0 : tile;
    for (size_t r = 0; r < rows; r++)
      for (size_t c = 0; c < nc; c++) keys[c * rows + r] = ordered_key(scores[r * cols + c0 + c]);
    for (size_t c = 0; c < nc; c++) mark_lowest(keys + c * rows, rows, k, pruned + c * rows, scratch);
    /* Written back row by row, as the matrix lies. */
    for (size_t r = 0; r < rows; r++)
      for (size_t c = 0; c < nc; c++) keep[r * cols + c0 + c] = !pruned[c * rows + r];
  }
  free(keys);
  free(scratch);
  free(pruned);
  return NULL;
}

/* ---- every weight's rank in its group: masks from ranks (prune/ranks.ts) ---- */

/*
 * Sorts n (key, index) pairs by key, stably (equal keys keep their index order), with four
 * 8-bit counting passes; a and b hold n entries each, the result ends in a.
 */
static void radix_sort_pairs(uint32_t *keys_a, uint32_t *idx_a, uint32_t *keys_b, uint32_t *idx_b, size_t n) {
  for (unsigned shift = 0; shift < 32; shift += 8) {
    size_t counts[257];
    memset(counts, 0, sizeof counts);
    for (size_t j = 0; j < n; j++) counts[((keys_a[j] >> shift) & 0xffu) + 1]++;
    for (unsigned b = 0; b < 256; b++) counts[b + 1] += counts[b];
    for (size_t j = 0; j < n; j++) {
      const size_t at = counts[(keys_a[j] >> shift) & 0xffu]++;
      keys_b[at] = keys_a[j];
      idx_b[at] = idx_a[j];
    }
    uint32_t *t = keys_a;
    keys_a = keys_b;
    keys_b = t;
    t = idx_a;
    idx_a = idx_b;
    idx_b = t;
  }
  /* Four passes: the sorted pairs are back in the arrays first given as a. */
}

/*
 * ranks(scores: Float32Array, rows, cols, perColumn, out: Uint16Array | Uint32Array): each
 * weight's position in its group's order by (score, index): its column's (perColumn) or
 * the whole matrix's. Uint16 output needs groups of at most 65536.
 */
napi_value evosparse_ranks(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  size_t scores_length, out_length, rows, cols;
  void *scores_data, *out_data;
  napi_typedarray_type out_kind;
  bool per_column;
  if (!args_of(env, info, 5, argv, "evosparse_ranks") ||
      !typed_of(env, argv[0], F32, 1, "evosparse_ranks: scores must be a Float32Array", &scores_data, &scores_length, NULL) ||
      !typed_of(env, argv[4], RANK_ARRAYS, 2, "evosparse_ranks: out must be a Uint16Array or a Uint32Array", &out_data, &out_length, &out_kind) ||
      !whole_of(env, argv[1], 1, 4294967295.0, "evosparse_ranks: rows must be a whole number >= 1", &rows) ||
      !whole_of(env, argv[2], 1, 4294967295.0, "evosparse_ranks: cols must be a whole number >= 1", &cols))
    return NULL;
  if (napi_get_value_bool(env, argv[3], &per_column) != napi_ok) return fail(env, "evosparse_ranks: perColumn must be a boolean");
  if ((double)rows * (double)cols > 4294967295.0) return fail(env, "evosparse_ranks: rows x cols must be below 2^32");
  const size_t n = rows * cols;
  const size_t group = per_column ? rows : n;
  if (scores_length < n || out_length < n) return fail(env, "evosparse_ranks: scores or out is shorter than rows x cols");
  if (out_kind == napi_uint16_array && group > 65536) return fail(env, "evosparse_ranks: groups above 65536 need a Uint32Array");
  const float *scores = (const float *)scores_data;
  uint32_t *buf = (uint32_t *)malloc(4 * group * sizeof(uint32_t));
  if (!buf) return fail(env, "evosparse_ranks: out of memory");
  uint32_t *ka = buf, *ia = buf + group, *kb = buf + 2 * group, *ib = buf + 3 * group;
  const size_t groups = per_column ? cols : 1;
  for (size_t g = 0; g < groups; g++) {
    for (size_t j = 0; j < group; j++) {
      const size_t e = per_column ? j * cols + g : j;
      ka[j] = ordered_key(scores[e]);
      ia[j] = (uint32_t)j;
    }
    radix_sort_pairs(ka, ia, kb, ib, group);
    for (size_t r = 0; r < group; r++) {
      const size_t e = per_column ? (size_t)ia[r] * cols + g : ia[r];
      if (out_kind == napi_uint16_array) ((uint16_t *)out_data)[e] = (uint16_t)r;
      else ((uint32_t *)out_data)[e] = (uint32_t)r;
    }
  }
  free(buf);
  return NULL;
}
