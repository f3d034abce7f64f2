#!/usr/bin/env node
// The CLI is written in TypeScript and run through tsx's loader, so the package ships
// no build step: `npm ci` is the whole installation.
import { register } from "tsx/esm/api";
register();
await import("../src/cli/main.ts");
