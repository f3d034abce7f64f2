#!/usr/bin/env node
// From the repository the CLI runs its TypeScript through tsx's loader, so `npm ci` is the
// whole installation; an installed package ships compiled JavaScript (dist/, built by
// `npm pack`'s prepack) and compiles nothing at start.
import { existsSync } from "node:fs";

const source = new URL("../src/cli/main.ts", import.meta.url);
if (existsSync(source)) {
  const { register } = await import("tsx/esm/api");
  register();
  await import(source.href);
} else {
  await import(new URL("../dist/src/cli/main.js", import.meta.url).href);
}
