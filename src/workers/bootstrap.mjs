// Worker threads do not inherit the parent's TypeScript loader: a TypeScript entry (from
// source) registers it first; a compiled one (an installed package) needs none.
import { workerData } from "node:worker_threads";

if (/\.[cm]?ts$/.test(workerData.entry)) {
  const { register } = await import("tsx/esm/api");
  register();
}
await import(workerData.entry);
