/* Weight conversion for streamed checkpoints (convert.c), registered by blas.c's init. */
#ifndef EVOSPARSE_CONVERT_H
#define EVOSPARSE_CONVERT_H
#include <node_api.h>
napi_value evosparse_convert(napi_env env, napi_callback_info info);
napi_value evosparse_encode(napi_env env, napi_callback_info info);
napi_value evosparse_lowest(napi_env env, napi_callback_info info);
napi_value evosparse_ranks(napi_env env, napi_callback_info info);
#endif
