import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { BackendError } from "../errors.ts";

export type BackendChoice = "auto" | "tensorflow" | "wasm" | "cpu";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "tensorflow", "wasm", "cpu"];

export interface BackendInfo {
  /** tfjs backend name in use: "tensorflow", "wasm" or "cpu". */
  readonly name: string;
  /** Which package provides it (tfjs-node-gpu, tfjs-node, tfjs-backend-wasm, tfjs-backend-cpu). */
  readonly provider: string;
  /** Why preferred backends were passed over, for the "using ..." line. */
  readonly skipped: readonly string[];
}

// Optional native packages: not dependencies we can rely on, so imported by name at run time.
const NATIVE_PACKAGES = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"] as const;

const tryNative = async (pkg: string): Promise<string | undefined> => {
  try {
    await import(pkg);
  } catch (e) {
    return `${pkg} not available (${firstLine(e)})`;
  }
  return (await tf.setBackend("tensorflow")) ? undefined : `${pkg} loaded but the tensorflow backend failed to initialise`;
};

const tryWasm = async (): Promise<string | undefined> => {
  try {
    await import("@tensorflow/tfjs-backend-wasm");
  } catch (e) {
    return `@tensorflow/tfjs-backend-wasm not available (${firstLine(e)})`;
  }
  return (await tf.setBackend("wasm")) ? undefined : "the wasm backend failed to initialise";
};

const tryCpu = async (): Promise<string | undefined> =>
  (await tf.setBackend("cpu")) ? undefined : "the cpu backend failed to initialise";

const firstLine = (e: unknown): string => String((e as Error)?.message ?? e).split("\n")[0]!.slice(0, 160);

let current: BackendInfo | undefined;

/**
 * Selects and initialises a tfjs backend. `auto` prefers native TensorFlow (GPU build,
 * then CPU build), then wasm, then the pure-JS cpu backend, and reports what it skipped.
 * tf.setBackend resolves to false rather than throwing on failure, so every step checks it.
 */
export const initBackend = async (choice: BackendChoice): Promise<BackendInfo> => {
  if (current && (choice === "auto" || choice === current.name)) return current;
  const skipped: string[] = [];
  const attempt = async (provider: string, name: string, run: () => Promise<string | undefined>) => {
    const why = await run();
    if (why) {
      skipped.push(why);
      return undefined;
    }
    await tf.ready();
    current = { name, provider, skipped };
    return current;
  };
  const candidates: Array<[string, string, () => Promise<string | undefined>]> = [];
  if (choice === "auto" || choice === "tensorflow") {
    for (const pkg of NATIVE_PACKAGES) candidates.push([pkg.replace("@tensorflow/", ""), "tensorflow", () => tryNative(pkg)]);
  }
  if (choice === "auto" || choice === "wasm") candidates.push(["tfjs-backend-wasm", "wasm", tryWasm]);
  if (choice === "auto" || choice === "cpu") candidates.push(["tfjs-backend-cpu", "cpu", tryCpu]);
  for (const [provider, name, run] of candidates) {
    const got = await attempt(provider, name, run);
    if (got) return got;
  }
  throw new BackendError({ backend: choice, problem: skipped.join("; ") || "no backend could be initialised" });
};

export const initBackendEffect = (choice: BackendChoice) =>
  Effect.tryPromise({
    try: () => initBackend(choice),
    catch: (e) => (e instanceof BackendError ? e : new BackendError({ backend: choice, problem: firstLine(e) })),
  });

/** "wasm (tfjs-backend-wasm; passed over: ...)": what auto chose, and why not something faster. */
export const describeBackend = (b: BackendInfo): string =>
  `${b.name} (${b.provider}${b.skipped.length > 0 ? `; passed over: ${b.skipped.map((s) => s.replace(/ \(.*$/, "")).join(", ")}` : ""})`;
