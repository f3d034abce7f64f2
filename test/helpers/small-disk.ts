/**
 * A small or read-only disk of the test's own: a tmpfs mounted in a private mount
 * namespace (`unshare -rm`), which vanishes with the command, so nothing is mounted on the
 * machine and no privilege is needed where user namespaces are allowed. Where they are
 * not, the tests that need it skip with a message.
 */
import { spawnSync } from "node:child_process";
import { resolve } from "node:path";

const probe = spawnSync("unshare", ["-rm", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"'], { encoding: "utf8" });
/** Why a private tmpfs cannot be made here, or undefined. */
export const smallDiskMissing: string | undefined = probe.status === 0 ? undefined : `no private tmpfs here (unshare -rm: ${(probe.stderr || "failed").trim()})`;

const bin = resolve(import.meta.dirname, "..", "..", "bin", "evosparse.mjs");

export interface DiskRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** `find` of the mount after the command, one path per line (relative to it). */
  readonly left: string[];
}

/**
 * Runs evosparse with `mount` holding a fresh tmpfs of `kib` KiB: first `prepare` (shell,
 * run in the mount), then the mount is made read-only when asked, then the command.
 */
export const runOnSmallDisk = (mount: string, options: { readonly kib: number; readonly prepare?: string; readonly readOnly?: boolean }, ...args: string[]): DiskRun => {
  const quoted = args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(" ");
  const script = [
    `mount -t tmpfs -o size=${options.kib}k tmpfs '${mount}'`,
    `cd '${mount}'`,
    options.prepare ?? "true",
    options.readOnly ? `mount -o remount,ro '${mount}'` : "true",
    `'${process.execPath}' '${bin}' ${quoted} > "$OUT_FILE" 2> "$ERR_FILE"; code=$?`,
    `find . -mindepth 1 | sort > "$LEFT_FILE"`,
    "exit $code",
  ].join(" && ");
  const files = { OUT_FILE: `${mount}.out`, ERR_FILE: `${mount}.err`, LEFT_FILE: `${mount}.left` };
  const r = spawnSync("unshare", ["-rm", "sh", "-c", script], { encoding: "utf8", env: { ...process.env, CI: "true", ...files } });
  const read = (f: string) => spawnSync("cat", [f], { encoding: "utf8" }).stdout;
  return {
    code: r.status,
    stdout: read(files.OUT_FILE),
    stderr: read(files.ERR_FILE) + (r.status !== 0 && read(files.ERR_FILE) === "" ? r.stderr : ""),
    left: read(files.LEFT_FILE).split("\n").filter((l) => l !== "").map((l) => l.replace(/^\.\//, "")),
  };
};
