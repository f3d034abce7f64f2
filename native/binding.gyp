{
  "targets": [
    {
      "target_name": "evosparse_blas",
      "sources": ["blas.c", "convert.c"],
      "cflags": ["-O3", "-std=c11", "-Wall", "-Wextra"],
      "libraries": ["-lopenblas"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
