/**
 * The tfjs WebGPU backend on Node, through the `webgpu` package (Dawn's Node bindings, with
 * a prebuilt dawn.node) and @tensorflow/tfjs-backend-webgpu. Both are optional dependencies,
 * imported by name at run time: without them, or without a GPU driver, startWebgpu says why.
 *
 * Dawn reports some failures only as `uncapturederror` events on the device: a shader the
 * backend generated that does not compile (a 5-D pad, for one) leaves its output unwritten
 * and the read returns zeros. Every such event is recorded here, and checkWebgpuDevice turns
 * it into a thrown Error, so that a device error becomes a failure rather than wrong numbers.
 *
 * A process that used the backend exits by itself when its work is done, with the device
 * still alive: there is nothing to stop.
 *
 * Without a GPU, Dawn needs a software Vulkan driver: `bash .ci/vulkan.sh` fetches Mesa's
 * lavapipe into .vulkan/ and writes the VK_ICD_FILENAMES and LD_LIBRARY_PATH it needs to
 * .vulkan/env (both must be in the environment when the process starts).
 */
import { existsSync, readdirSync } from "node:fs";
import * as tf from "@tensorflow/tfjs";

export type WebgpuStart =
  | { readonly ok: true; readonly adapter: string; readonly fallback: boolean }
  | { readonly ok: false; readonly why: string };

// The parts of the WebGPU API used here, typed locally: the packages are optional, so their
// types cannot be relied on at compile time.
interface AdapterInfo {
  readonly vendor?: string;
  readonly architecture?: string;
  readonly device?: string;
  readonly description?: string;
  readonly isFallbackAdapter?: boolean;
}

interface Adapter {
  readonly info?: AdapterInfo;
  readonly isFallbackAdapter?: boolean;
}

interface Gpu {
  requestAdapter(options?: { powerPreference?: "low-power" | "high-performance" }): Promise<Adapter | null>;
}

interface DawnModule {
  create(options: string[]): Gpu;
  globals: Record<string, unknown>;
}

interface DeviceErrorEvent {
  readonly error?: { readonly message?: string; readonly constructor?: { readonly name?: string } };
  preventDefault?(): void;
}

interface Device {
  readonly limits?: { readonly maxStorageBufferBindingSize?: number };
  readonly queue: { onSubmittedWorkDone(): Promise<unknown> };
  readonly lost?: Promise<{ readonly reason?: string; readonly message?: string }>;
  addEventListener?(type: "uncapturederror", listener: (event: DeviceErrorEvent) => void): void;
  onuncapturederror?: ((event: DeviceErrorEvent) => void) | null;
}

/** What is reached inside tfjs-backend-webgpu's WebGPUBackend. */
interface WebgpuBackend {
  readonly device: Device;
  read(dataId: object): Promise<unknown>;
  readonly commandEncoder?: unknown;
  endComputePassEncoder?(): void;
  submitQueue?(): void;
}

const WEBGPU_PACKAGE = "webgpu";
const BACKEND_PACKAGE = "@tensorflow/tfjs-backend-webgpu";

const firstLine = (text: string): string =>
  text
    .split("\n")
    .map((line) => line.trim())
    .find((line) => line.length > 0)
    ?.slice(0, 300) ?? "";

const messageOf = (e: unknown): string => firstLine(String((e as Error)?.message ?? e));

const isMissingPackage = (e: unknown, name: string): boolean =>
  (e as { code?: string })?.code === "ERR_MODULE_NOT_FOUND" && messageOf(e).includes(`'${name}'`);

const importFailure = (e: unknown, name: string): string =>
  isMissingPackage(e, name) ? `the ${name} package is not installed` : `the ${name} package could not be loaded (${messageOf(e)})`;

/** Software rasterisers behind Vulkan (Mesa's lavapipe/llvmpipe, SwiftShader): correct, but slow. */
const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software/i;

const describeAdapter = (adapter: Adapter): { adapter: string; fallback: boolean } => {
  const info = adapter.info ?? {};
  const fields = [info.vendor, info.architecture, info.device].filter((f): f is string => typeof f === "string" && f !== "");
  const name = info.description?.trim() || fields.join(" ") || "unnamed adapter";
  const fallback =
    info.isFallbackAdapter === true || adapter.isFallbackAdapter === true || [name, ...fields].some((f) => SOFTWARE.test(f));
  return { adapter: name, fallback };
};

const noAdapter = (): string => {
  const icd = process.env.VK_ICD_FILENAMES;
  const where = icd
    ? `VK_ICD_FILENAMES is ${icd}: is that driver there, and is LD_LIBRARY_PATH set as .vulkan/env says?`
    : "VK_ICD_FILENAMES is not set: without a GPU, run `bash .ci/vulkan.sh` and start with the variables of .vulkan/env";
  return `no WebGPU adapter: Dawn found no usable Vulkan driver (${where})`;
};

/** The global `navigator.gpu` that tfjs-backend-webgpu looks for when it is imported and started. */
const installNavigator = (gpu: Gpu): void => {
  const current = (globalThis as { navigator?: unknown }).navigator;
  if (current && typeof current === "object") {
    // Node 21+ has a navigator of its own: give it the gpu property.
    Object.defineProperty(current, "gpu", { value: gpu, configurable: true, writable: true });
  } else {
    Object.defineProperty(globalThis, "navigator", { value: { gpu }, configurable: true, writable: true });
  }
};

let started: Promise<WebgpuStart> | undefined;
let device: Device | undefined;
let firstError: string | undefined;
let laterErrors = 0;

const record = (description: string): void => {
  if (firstError === undefined) firstError = description;
  else laterErrors++;
};

/** "WebGPU validation error in PadProgram: Error while parsing WGSL: ...". */
const describeError = (event: DeviceErrorEvent): string => {
  const error = event.error;
  const kind =
    (error?.constructor?.name ?? "")
      .replace(/^GPU/, "")
      .replace(/Error$/, "")
      .replace(/([a-z])([A-Z])/g, "$1 $2")
      .toLowerCase() || "device";
  const message = String(error?.message ?? "no message");
  // Dawn names the object being created, as tfjs labels it: the program that failed.
  const program = /Descriptor "+([^"\]]+)"+\]/.exec(message)?.[1];
  return `WebGPU ${kind} error${program ? ` in ${program}` : ""}: ${firstLine(message)}`;
};

const watch = (d: Device): void => {
  const onError = (event: DeviceErrorEvent): void => {
    // Recorded instead of printed: checkWebgpuDevice reports it as an error.
    event.preventDefault?.();
    record(describeError(event));
  };
  if (typeof d.addEventListener === "function") d.addEventListener("uncapturederror", onError);
  else d.onuncapturederror = onError;
  void d.lost?.then((info) => record(`WebGPU device lost (${info?.reason ?? "unknown"}): ${firstLine(String(info?.message ?? ""))}`));
};

/**
 * Whether the machine shows a GPU at all: on Linux a DRM render node or an NVIDIA device
 * node (software Vulkan drivers need neither); elsewhere assumed, and the adapter decides.
 */
export const gpuDeviceNode = (): boolean => {
  if (process.platform !== "linux") return true;
  if (existsSync("/dev/nvidia0")) return true;
  try {
    return readdirSync("/dev/dri").some((name) => name.startsWith("renderD"));
  } catch {
    return false;
  }
};

/** The adapter Dawn offers, found before the backend starts: auto passes over a software one. */
export type WebgpuProbe = { readonly ok: true; readonly adapter: string; readonly fallback: boolean } | { readonly ok: false; readonly why: string };

let probed: Promise<WebgpuProbe> | undefined;

const probe = async (): Promise<WebgpuProbe> => {
  let dawn: DawnModule;
  try {
    dawn = (await import(WEBGPU_PACKAGE)) as DawnModule;
  } catch (e) {
    return { ok: false, why: importFailure(e, WEBGPU_PACKAGE) };
  }
  // GPUBufferUsage, GPUMapMode, ... are globals in a browser; tfjs-backend-webgpu uses them.
  for (const [name, value] of Object.entries(dawn.globals)) {
    if (!(name in globalThis)) Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  }
  const gpu = dawn.create([]);
  installNavigator(gpu);
  // Only now: the backend registers itself on import, and only if navigator.gpu exists.
  try {
    await import(BACKEND_PACKAGE);
  } catch (e) {
    return { ok: false, why: importFailure(e, BACKEND_PACKAGE) };
  }
  if (!tf.findBackendFactory("webgpu")) {
    return { ok: false, why: `${BACKEND_PACKAGE} was imported before navigator.gpu was installed, so it did not register` };
  }
  // The adapter tfjs will get (it asks the same way), asked for first to describe it and to
  // tell a missing driver from a failing backend.
  let adapter: Adapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { ok: false, why: `requesting a WebGPU adapter failed (${messageOf(e)})` };
  }
  if (!adapter) return { ok: false, why: noAdapter() };
  return { ok: true, ...describeAdapter(adapter) };
};

/**
 * Loads the packages and asks Dawn for an adapter, without starting the backend. Never
 * throws; later calls give the same answer.
 */
export const probeWebgpu = (): Promise<WebgpuProbe> =>
  (probed ??= probe().catch((e): WebgpuProbe => ({ ok: false, why: `WebGPU could not start (${messageOf(e)})` })));

/** Every read of a tensor's values first makes sure the device reported no error. */
const checkEveryRead = (backend: { read(dataId: object): Promise<unknown> }): void => {
  const read = backend.read.bind(backend);
  backend.read = async (dataId: object) => {
    const values = await read(dataId);
    await checkWebgpuDevice();
    return values;
  };
};

const start = async (): Promise<WebgpuStart> => {
  const described = await probeWebgpu();
  if (!described.ok) return described;
  let set: boolean;
  try {
    set = await tf.setBackend("webgpu");
  } catch (e) {
    return { ok: false, why: `the webgpu backend failed to initialise on ${described.adapter} (${messageOf(e)})` };
  }
  if (!set) return { ok: false, why: `the webgpu backend failed to initialise on ${described.adapter}` };
  const backend = tf.findBackend("webgpu") as unknown as WebgpuBackend | null;
  if (!backend?.device) return { ok: false, why: "the webgpu backend started without a GPU device" };
  device = backend.device;
  watch(device);
  checkEveryRead(backend as unknown as { read(dataId: object): Promise<unknown> });
  return described;
};

/**
 * Starts the WebGPU backend and makes it the current tfjs backend. Never throws: a missing
 * package, driver or adapter gives `ok: false` and a one-line reason. Later calls give the
 * same result (and select the backend again when it started).
 */
export const startWebgpu = async (): Promise<WebgpuStart> => {
  const first = started === undefined;
  started ??= start().catch((e): WebgpuStart => ({ ok: false, why: `WebGPU could not start (${messageOf(e)})` }));
  const result = await started;
  if (!first && result.ok && tf.getBackend() !== "webgpu") await tf.setBackend("webgpu");
  return result;
};

/**
 * The largest buffer one shader may bind, in bytes, on the device in use (undefined before
 * the backend started): a weight matrix larger than this cannot be used on this adapter.
 */
export const webgpuMaxBinding = (): number | undefined => device?.limits?.maxStorageBufferBindingSize;

/** The first error the WebGPU device reported (one line, with a count of any later ones), if any. */
export const webgpuDeviceError = (): string | undefined =>
  firstError === undefined ? undefined : laterErrors > 0 ? `${firstError} (and ${laterErrors} later errors)` : firstError;

/**
 * Throws if the WebGPU device has reported an error. First submits the work tfjs has encoded
 * but not yet sent, then waits until the device has done all submitted work and events have
 * been delivered, so that an error of work done so far is seen. (Dawn's Node bindings deliver
 * a validation error during the call that causes it, and those of a submission when tfjs
 * submits, which a read does; errors of the execution itself, or a lost device, can come
 * later.) Does nothing when the backend was never started. Errors are kept: once the device
 * has failed, every check fails.
 */
export const checkWebgpuDevice = async (): Promise<void> => {
  if (!device) return;
  const backend = tf.findBackend("webgpu") as unknown as WebgpuBackend | null;
  if (backend?.commandEncoder) {
    backend.endComputePassEncoder?.();
    backend.submitQueue?.();
  }
  try {
    await device.queue.onSubmittedWorkDone();
  } catch {
    // A lost device rejects here; the loss itself is recorded and reported below.
  }
  await new Promise((done) => setImmediate(done));
  const error = webgpuDeviceError();
  if (error !== undefined) throw new Error(error);
};
