{
  "targets": [
    {
      "target_name": "evosparse_blas",
      "sources": ["blas.c"],
      "cflags": ["-O2", "-std=c11", "-Wall", "-Wextra"],
      "libraries": ["-lopenblas"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
