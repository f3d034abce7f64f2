#!/usr/bin/env node
// Builds the optional native kernel (native/blas.c against the system OpenBLAS) at `npm ci`.
// A missing compiler or library is not an install failure: evosparse then runs on wasm, and
// this script says in one line what would enable the native kernel. The full compiler
// output is kept in native/build.log.
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const log = join(here, "build.log");

// npm hands lifecycle scripts the path of its own node-gyp; otherwise use the one npm ships.
const nodeGyp = [
  process.env.npm_config_node_gyp,
  join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
].find((p) => p !== undefined && p !== "" && existsSync(p));

if (process.env.EVOSPARSE_SKIP_NATIVE === "1") {
  console.log("evosparse: native kernel not built (EVOSPARSE_SKIP_NATIVE=1); wasm will be used");
  process.exit(0);
}
if (nodeGyp === undefined) {
  console.log("evosparse: native kernel not built (node-gyp not found); wasm will be used");
  process.exit(0);
}
// Node's own headers, where this Node was installed with them, so that no download is needed.
const prefix = join(dirname(process.execPath), "..");
const nodedir = process.env.npm_config_nodedir ||
  (existsSync(join(prefix, "include", "node", "node_api.h")) ? prefix : undefined);
const args = [nodeGyp, "rebuild", ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
const run = spawnSync(process.execPath, args, { cwd: here, encoding: "utf8" });
writeFileSync(log, `${run.stdout ?? ""}${run.stderr ?? ""}`);
if (run.status === 0) {
  console.log("evosparse: native BLAS kernel built (native/build/Release/evosparse_blas.node)");
} else {
  const text = `${run.stdout ?? ""}${run.stderr ?? ""}`;
  const why = /cannot find -lopenblas/.test(text)
    ? "OpenBLAS is missing: install libopenblas-dev"
    : /find any Python|python.*not found/i.test(text)
      ? "python3, which node-gyp needs, is missing"
      : /not found|No such file/.test(text) && /(gcc|cc|make)\b/.test(text)
        ? "a C compiler or make is missing"
      : /network connectivity/.test(text)
        ? "Node's headers are not installed and could not be downloaded"
        : "the build failed";
  console.log(`evosparse: native kernel not built (${why}; details in native/build.log); wasm will be used. ` +
    "Run `npm run build:native` after fixing it.");
}
