import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { BackendError, BackendMemoryError } from "../errors.ts";
import { NATIVE_BACKEND, registerNativeBackend } from "./native.ts";
import { configureNativeThreads, nativeBlas, nativeBlasMissing } from "./native-blas.ts";
import { gpuDeviceNode, probeWebgpu, startWebgpu } from "./webgpu.ts";

export type BackendChoice = "auto" | "tensorflow" | "webgpu" | "native" | "wasm" | "cpu";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "tensorflow", "webgpu", "native", "wasm", "cpu"];

export interface BackendInfo {
  /** tfjs backend name in use: "tensorflow", "webgpu", "native", "wasm" or "cpu". */
  readonly name: string;
  /** Which package provides it (tfjs-node-gpu, tfjs-node, Dawn, OpenBLAS, tfjs-backend-wasm, tfjs-backend-cpu). */
  readonly provider: string;
  /** What it runs on, where that is worth saying: the GPU adapter, OpenBLAS's kernel and threads. */
  readonly detail?: string;
  /** Said once when it starts: a software GPU adapter is correct but slow. */
  readonly warning?: string;
  /** Why preferred backends were passed over, for the "using ..." line. */
  readonly skipped: readonly string[];
}

export interface BackendOptions {
  /**
   * How many processes or worker threads will compute at the same time on this machine
   * (fitness or training workers); the native backend gives each its share of the cores.
   */
  readonly share?: number;
}

// Optional native packages: not dependencies we can rely on, so imported by name at run time.
const TENSORFLOW_PACKAGES = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"] as const;

type Attempt =
  | { readonly ok: true; readonly detail?: string; readonly warning?: string }
  | { readonly ok: false; readonly why: string };

const tryTensorflow = async (pkg: string): Promise<Attempt> => {
  try {
    await import(pkg);
  } catch (e) {
    return { ok: false, why: `${pkg} not available (${firstLine(e)})` };
  }
  return (await tf.setBackend("tensorflow"))
    ? { ok: true }
    : { ok: false, why: `${pkg} loaded but the tensorflow backend failed to initialise` };
};

const tryNative = async (share: number): Promise<Attempt> => {
  const why = nativeBlasMissing() ?? (await registerNativeBackend());
  if (why) return { ok: false, why: `native (${why})` };
  if (!(await tf.setBackend(NATIVE_BACKEND))) return { ok: false, why: "native (the backend failed to initialise)" };
  const threads = configureNativeThreads(share);
  return { ok: true, detail: `${nativeBlas()!.describe().core} kernel, ${threads} thread${threads === 1 ? "" : "s"}` };
};

/**
 * WebGPU through Dawn. Asked for by name it runs on any adapter, with a warning when that is
 * a software one; auto takes it only on a hardware GPU.
 */
const tryWebgpu = async (hardwareOnly: boolean): Promise<Attempt> => {
  // Loading Dawn costs time and its drivers print to stderr: auto does not, without a GPU.
  if (hardwareOnly && !gpuDeviceNode()) return { ok: false, why: "webgpu (no GPU device on this machine)" };
  const probe = await probeWebgpu();
  if (!probe.ok) return { ok: false, why: `webgpu (${probe.why})` };
  if (hardwareOnly && probe.fallback) return { ok: false, why: `webgpu (a software adapter: ${probe.adapter})` };
  const started = await startWebgpu();
  if (!started.ok) return { ok: false, why: `webgpu (${started.why})` };
  return {
    ok: true,
    detail: started.adapter,
    ...(started.fallback ? { warning: "a software or fallback adapter: correct, but far slower than a GPU or the native backend" } : {}),
  };
};

const tryWasm = async (): Promise<Attempt> => {
  try {
    await import("@tensorflow/tfjs-backend-wasm");
  } catch (e) {
    return { ok: false, why: `@tensorflow/tfjs-backend-wasm not available (${firstLine(e)})` };
  }
  return (await tf.setBackend("wasm")) ? { ok: true } : { ok: false, why: "the wasm backend failed to initialise" };
};

const tryCpu = async (): Promise<Attempt> =>
  (await tf.setBackend("cpu")) ? { ok: true } : { ok: false, why: "the cpu backend failed to initialise" };

const firstLine = (e: unknown): string => String((e as Error)?.message ?? e).split("\n")[0]!.slice(0, 160);

let current: BackendInfo | undefined;

interface Candidate {
  readonly name: string;
  readonly provider: string;
  readonly run: () => Promise<Attempt>;
}

/** What `choice` may use, best first. */
const candidates = (choice: BackendChoice, share: number): Candidate[] => {
  const list: Candidate[] = [];
  const tensorflow = TENSORFLOW_PACKAGES.map((pkg) => ({
    name: "tensorflow",
    provider: pkg.replace("@tensorflow/", ""),
    run: () => tryTensorflow(pkg),
  }));
  if (choice === "auto") list.push(tensorflow[0]!);
  if (choice === "auto" || choice === "webgpu") list.push({ name: "webgpu", provider: "Dawn", run: () => tryWebgpu(choice === "auto") });
  if (choice === "auto" || choice === "native") list.push({ name: NATIVE_BACKEND, provider: "OpenBLAS", run: () => tryNative(share) });
  if (choice === "auto") list.push(tensorflow[1]!);
  if (choice === "tensorflow") list.push(...tensorflow);
  if (choice === "auto" || choice === "wasm") list.push({ name: "wasm", provider: "tfjs-backend-wasm", run: tryWasm });
  if (choice === "auto" || choice === "cpu") list.push({ name: "cpu", provider: "tfjs-backend-cpu", run: tryCpu });
  return list;
};

/**
 * The wasm heap's allocator returns 0 when it cannot grow (4 GiB at most), and tfjs writes
 * a tensor at whatever address it got: a silent corruption of everything at the start of
 * the heap. Every allocation is checked here instead, and a failed one is an error (the
 * memory plan keeps runs below the limit; this is the guard behind it).
 */
const guardHeapAllocations = (name: string): void => {
  if (name !== "wasm" && name !== NATIVE_BACKEND) return;
  const wasm = (tf.backend() as unknown as { wasm?: { _malloc: (n: number) => number; _free: (p: number) => void; guarded?: true } }).wasm;
  if (!wasm || wasm.guarded) return;
  // Emscripten's exports replace themselves with the real function on their first call:
  // one call first, so that the function wrapped here is the one that stays.
  wasm._free(wasm._malloc(8));
  const malloc = wasm._malloc.bind(wasm);
  wasm._malloc = (bytes: number): number => {
    const at = malloc(bytes);
    if (at === 0 && bytes > 0) {
      throw new BackendMemoryError({ what: "a tensor", bytes, detail: "the wasm heap (at most 4 GiB) is full" });
    }
    return at;
  };
  wasm.guarded = true;
};

/**
 * Selects and initialises a tfjs backend. `auto` prefers a hardware GPU (tfjs-node-gpu, then
 * WebGPU on a hardware adapter), then the native BLAS kernel, native TensorFlow's CPU build,
 * wasm and last the pure-JS cpu backend, and reports what it passed over. tf.setBackend resolves to false rather than
 * throwing on failure, so every step checks it.
 */
export const initBackend = async (choice: BackendChoice, options: BackendOptions = {}): Promise<BackendInfo> => {
  const share = options.share ?? 1;
  if (current && (choice === "auto" || choice === current.name)) {
    if (current.name === NATIVE_BACKEND) configureNativeThreads(share);
    if (tf.getBackend() !== current.name) await tf.setBackend(current.name);
    return current;
  }
  const skipped: string[] = [];
  for (const candidate of candidates(choice, share)) {
    const got = await candidate.run();
    if (!got.ok) {
      skipped.push(got.why);
      continue;
    }
    await tf.ready();
    guardHeapAllocations(candidate.name);
    current = {
      name: candidate.name,
      provider: candidate.provider,
      skipped,
      ...(got.detail ? { detail: got.detail } : {}),
      ...(got.warning ? { warning: got.warning } : {}),
    };
    return current;
  }
  throw new BackendError({ backend: choice, problem: skipped.join("; ") || "no backend could be initialised" });
};

export const initBackendEffect = (choice: BackendChoice, options: BackendOptions = {}) =>
  Effect.tryPromise({
    try: () => initBackend(choice, options),
    catch: (e) => (e instanceof BackendError ? e : new BackendError({ backend: choice, problem: firstLine(e) })),
  });

/** What would make this machine faster, when a plain backend runs for want of the native kernel. */
export const fasterBackendHint = (b: BackendInfo): string | undefined =>
  b.name === "wasm" || b.name === "cpu" ? nativeBlasMissing() : undefined;

/**
 * "wasm (tfjs-backend-wasm; passed over: ...; faster: ...)": what was chosen, why not
 * something faster, and what would enable the native kernel when it is missing.
 */
export const describeBackend = (b: BackendInfo): string => {
  const passed = b.skipped.length > 0 ? `; passed over: ${b.skipped.map((s) => s.replace(/ \(.*$/, "")).join(", ")}` : "";
  const hint = fasterBackendHint(b);
  const warning = b.warning ? `; warning: ${b.warning}` : "";
  return `${b.name} (${b.provider}${b.detail ? `: ${b.detail}` : ""}${passed}${hint ? `; faster: ${hint}` : ""}${warning})`;
};
