// Compiles src/ and plugins/ to dist/ (JavaScript and declarations) for the package, and
// copies the JavaScript modules tsc does not compile. Run by `npm pack` (prepack).
import { execFileSync } from "node:child_process";
import { cpSync, readdirSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { stdio: "inherit", cwd: root });

const copyModules = (dir) => {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) copyModules(path);
    else if (name.endsWith(".mjs")) cpSync(path, join(dist, relative(root, path)));
  }
};
copyModules(join(root, "src"));
