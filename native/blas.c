/*
 * evosparse's native kernels: OpenBLAS's sgemm under TensorFlow.js's matMul, and the
 * float64 BLAS/LAPACK routines SparseGPT needs. Every entry point checks its arguments
 * (typed-array kinds, sizes, strides) and throws a JavaScript error instead of reading or
 * writing outside an array. Prototypes are declared here rather than taken from cblas.h so
 * that building needs only the shared library (Debian: libopenblas-dev).
 */
#include <node_api.h>
#include "convert.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { CblasRowMajor = 101 };
enum { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(int order, int transA, int transB, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
void cblas_dgemm(int order, int transA, int transB, int m, int n, int k, double alpha, const double *a, int lda,
                 const double *b, int ldb, double beta, double *c, int ldc);
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);
char *openblas_get_corename(void);
char *openblas_get_config(void);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);

#define CALL(env, call)                                                                                             \
  do {                                                                                                              \
    if ((call) != napi_ok) {                                                                                        \
      napi_throw_error((env), NULL, "evosparse_blas: N-API call failed: " #call);                                  \
      return NULL;                                                                                                  \
    }                                                                                                               \
  } while (0)

static napi_value fail(napi_env env, const char *message) {
  napi_throw_range_error(env, NULL, message);
  return NULL;
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != want) {
    char message[96];
    snprintf(message, sizeof message, "evosparse_blas: expected %zu arguments", want);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

/* A whole number in [lo, hi]; throws otherwise. */
static bool get_int(napi_env env, napi_value v, int64_t lo, int64_t hi, const char *name, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d < (double)lo || d > (double)hi ||
      d != (double)(int64_t)d) {
    char message[128];
    snprintf(message, sizeof message, "evosparse_blas: %s must be a whole number in [%lld, %lld]", name,
             (long long)lo, (long long)hi);
    napi_throw_range_error(env, NULL, message);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

static bool get_bool(napi_env env, napi_value v, const char *name, bool *out) {
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    char message[96];
    snprintf(message, sizeof message, "evosparse_blas: %s must be a boolean", name);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

static bool get_double(napi_env env, napi_value v, const char *name, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok) {
    char message[96];
    snprintf(message, sizeof message, "evosparse_blas: %s must be a number", name);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

/* The data and element count of a typed array of the given kind. */
static bool get_array(napi_env env, napi_value v, napi_typedarray_type kind, const char *name, void **data,
                      size_t *length) {
  bool is_typed = false;
  napi_typedarray_type got;
  napi_value buffer;
  size_t offset;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &got, length, data, &buffer, &offset) != napi_ok || got != kind) {
    char message[128];
    snprintf(message, sizeof message, "evosparse_blas: %s must be a %s", name,
             kind == napi_float32_array ? "Float32Array" : "Float64Array");
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

/* Elements a row-major rows x cols matrix with leading dimension ld spans. */
static size_t span(int64_t rows, int64_t cols, int64_t ld) { return rows == 0 ? 0 : (size_t)((rows - 1) * ld + cols); }

#define MAX_DIM 2147483647LL

/*
 * Threads per product. OpenBLAS splits even tiny products among all its threads, and the
 * hand-over costs more than the product below a few MFLOP (attention heads of small models
 * are thousands of such products): those run on one thread, larger ones on `threads_wanted`
 * (set by setThreads). The library's own count is changed only when the choice changes.
 */
#define SMALL_PRODUCT_FLOPS 4.0e6
static int threads_wanted = 0; /* 0: the library's default, until setThreads */
static int threads_set = 0;

static void threads_for(double flops) {
  if (threads_wanted == 0) threads_wanted = openblas_get_num_threads();
  const int want = flops < SMALL_PRODUCT_FLOPS ? 1 : threads_wanted;
  if (want != threads_set) {
    openblas_set_num_threads(want);
    threads_set = want;
  }
}

/*
 * sgemm(transA, transB, m, n, k, a, b, c, batch, strideA, strideB): for each of `batch`
 * products, C_i = op(A_i) op(B_i), row-major and packed, with A_i at a + i*strideA,
 * B_i at b + i*strideB (a stride of 0 broadcasts one matrix) and C_i at c + i*m*n.
 */
static napi_value sgemm(napi_env env, napi_callback_info info) {
  napi_value argv[11];
  if (!get_args(env, info, 11, argv)) return NULL;
  bool ta, tb;
  int64_t m, n, k, batch, sa, sb;
  float *a, *b, *c;
  size_t la, lb, lc;
  if (!get_bool(env, argv[0], "transA", &ta) || !get_bool(env, argv[1], "transB", &tb) ||
      !get_int(env, argv[2], 0, MAX_DIM, "m", &m) || !get_int(env, argv[3], 0, MAX_DIM, "n", &n) ||
      !get_int(env, argv[4], 0, MAX_DIM, "k", &k) ||
      !get_array(env, argv[5], napi_float32_array, "a", (void **)&a, &la) ||
      !get_array(env, argv[6], napi_float32_array, "b", (void **)&b, &lb) ||
      !get_array(env, argv[7], napi_float32_array, "c", (void **)&c, &lc) ||
      !get_int(env, argv[8], 0, MAX_DIM, "batch", &batch) || !get_int(env, argv[9], 0, MAX_DIM, "strideA", &sa) ||
      !get_int(env, argv[10], 0, MAX_DIM, "strideB", &sb))
    return NULL;
  if (batch == 0 || m == 0 || n == 0) return NULL;
  if ((size_t)(m * n) > lc / (size_t)batch) return fail(env, "evosparse_blas: c is too short for batch x m x n");
  if (k == 0) {
    memset(c, 0, sizeof(float) * (size_t)(batch * m * n));
    return NULL;
  }
  if ((size_t)((batch - 1) * sa + m * k) > la) return fail(env, "evosparse_blas: a is too short for its shape");
  if ((size_t)((batch - 1) * sb + k * n) > lb) return fail(env, "evosparse_blas: b is too short for its shape");
  const int lda = ta ? (int)m : (int)k;
  const int ldb = tb ? (int)k : (int)n;
  threads_for(2.0 * (double)m * (double)n * (double)k);
  for (int64_t i = 0; i < batch; i++) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, 1.0f, a + i * sa, lda, b + i * sb, ldb, 0.0f, c + i * m * n, (int)n);
  }
  return NULL;
}

/*
 * dgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): C = alpha op(A) op(B)
 * + beta C, row-major with leading dimensions (so sub-matrices of larger arrays work).
 */
static napi_value dgemm(napi_env env, napi_callback_info info) {
  napi_value argv[13];
  if (!get_args(env, info, 13, argv)) return NULL;
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  double alpha, beta, *a, *b, *c;
  size_t la, lb, lc;
  if (!get_bool(env, argv[0], "transA", &ta) || !get_bool(env, argv[1], "transB", &tb) ||
      !get_int(env, argv[2], 0, MAX_DIM, "m", &m) || !get_int(env, argv[3], 0, MAX_DIM, "n", &n) ||
      !get_int(env, argv[4], 0, MAX_DIM, "k", &k) || !get_double(env, argv[5], "alpha", &alpha) ||
      !get_array(env, argv[6], napi_float64_array, "a", (void **)&a, &la) ||
      !get_int(env, argv[7], 1, MAX_DIM, "lda", &lda) ||
      !get_array(env, argv[8], napi_float64_array, "b", (void **)&b, &lb) ||
      !get_int(env, argv[9], 1, MAX_DIM, "ldb", &ldb) || !get_double(env, argv[10], "beta", &beta) ||
      !get_array(env, argv[11], napi_float64_array, "c", (void **)&c, &lc) ||
      !get_int(env, argv[12], 1, MAX_DIM, "ldc", &ldc))
    return NULL;
  if (m == 0 || n == 0) return NULL;
  const int64_t aRows = ta ? k : m, aCols = ta ? m : k;
  const int64_t bRows = tb ? n : k, bCols = tb ? k : n;
  if (lda < aCols || ldb < bCols || ldc < n) return fail(env, "evosparse_blas: a leading dimension is below its row length");
  if (k > 0 && (span(aRows, aCols, lda) > la || span(bRows, bCols, ldb) > lb))
    return fail(env, "evosparse_blas: a or b is too short for its shape");
  if (span(m, n, ldc) > lc) return fail(env, "evosparse_blas: c is too short for its shape");
  threads_for(2.0 * (double)m * (double)n * (double)k);
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
  return NULL;
}

enum lapack_routine { POTRF, POTRI, TRTRI };

/*
 * dpotrf/dpotri/dtrtri(uplo, n, a): LAPACK's Cholesky factor, the inverse from it, and the
 * inverse of a (non-unit) triangular factor, column-major n x n, in place; returns info.
 */
static napi_value lapack_call(napi_env env, napi_callback_info info, enum lapack_routine routine) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  char uplo[4];
  size_t uplo_len = 0;
  int64_t n;
  double *a;
  size_t la;
  if (napi_get_value_string_utf8(env, argv[0], uplo, sizeof uplo, &uplo_len) != napi_ok || uplo_len != 1 ||
      (uplo[0] != 'L' && uplo[0] != 'U')) {
    napi_throw_type_error(env, NULL, "evosparse_blas: uplo must be \"L\" or \"U\"");
    return NULL;
  }
  if (!get_int(env, argv[1], 0, 46340, "n", &n) || !get_array(env, argv[2], napi_float64_array, "a", (void **)&a, &la))
    return NULL;
  if ((size_t)(n * n) > la) return fail(env, "evosparse_blas: a is too short for n x n");
  int result = 0;
  threads_for(1.0e12); /* factorisations are large: every thread */
  if (n > 0) {
    const int order = (int)n;
    if (routine == POTRI) dpotri_(uplo, &order, a, &order, &result);
    else if (routine == TRTRI) dtrtri_(uplo, "N", &order, a, &order, &result);
    else dpotrf_(uplo, &order, a, &order, &result);
  }
  napi_value out;
  CALL(env, napi_create_int32(env, result, &out));
  return out;
}

static napi_value dpotrf(napi_env env, napi_callback_info info) { return lapack_call(env, info, POTRF); }
static napi_value dpotri(napi_env env, napi_callback_info info) { return lapack_call(env, info, POTRI); }
static napi_value dtrtri(napi_env env, napi_callback_info info) { return lapack_call(env, info, TRTRI); }

static napi_value set_threads(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t n;
  if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], 1, 4096, "threads", &n)) return NULL;
  threads_wanted = (int)n;
  openblas_set_num_threads((int)n);
  threads_set = (int)n;
  return NULL;
}

static napi_value threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  if (threads_wanted == 0) threads_wanted = openblas_get_num_threads();
  CALL(env, napi_create_int32(env, threads_wanted, &out));
  return out;
}

static napi_value describe(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out, core, config;
  const char *core_name = openblas_get_corename();
  const char *config_text = openblas_get_config();
  CALL(env, napi_create_object(env, &out));
  CALL(env, napi_create_string_utf8(env, core_name ? core_name : "unknown", NAPI_AUTO_LENGTH, &core));
  CALL(env, napi_create_string_utf8(env, config_text ? config_text : "unknown", NAPI_AUTO_LENGTH, &config));
  CALL(env, napi_set_named_property(env, out, "core", core));
  CALL(env, napi_set_named_property(env, out, "config", config));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor methods[] = {
      {"sgemm", NULL, sgemm, NULL, NULL, NULL, napi_default, NULL},
      {"dgemm", NULL, dgemm, NULL, NULL, NULL, napi_default, NULL},
      {"dpotrf", NULL, dpotrf, NULL, NULL, NULL, napi_default, NULL},
      {"dpotri", NULL, dpotri, NULL, NULL, NULL, napi_default, NULL},
      {"dtrtri", NULL, dtrtri, NULL, NULL, NULL, napi_default, NULL},
      {"setThreads", NULL, set_threads, NULL, NULL, NULL, napi_default, NULL},
      {"threads", NULL, threads, NULL, NULL, NULL, napi_default, NULL},
      {"describe", NULL, describe, NULL, NULL, NULL, napi_default, NULL},
      {"convert", NULL, evosparse_convert, NULL, NULL, NULL, napi_default, NULL},
      {"encode", NULL, evosparse_encode, NULL, NULL, NULL, napi_default, NULL},
      {"lowest", NULL, evosparse_lowest, NULL, NULL, NULL, napi_default, NULL},
      {"ranks", NULL, evosparse_ranks, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof methods / sizeof methods[0], methods) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
