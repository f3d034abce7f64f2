/**
 * The backends the tests cover: wasm and cpu always, the native BLAS backend where its
 * kernel is built, WebGPU where Dawn finds an adapter (without a GPU, the software Vulkan
 * driver of `bash .ci/vulkan.sh`). An absent optional backend is still listed, with why it is absent, so
 * that its tests show as skipped with that message rather than silently vanish.
 */
import { nativeBlasMissing } from "../../src/backend/native-blas.ts";
import { probeWebgpu } from "../../src/backend/webgpu.ts";

export type TestBackend = "wasm" | "cpu" | "native" | "webgpu";

export interface BackendCase {
  readonly name: TestBackend;
  /** Why this backend cannot be tested here; undefined when it can. */
  readonly missing?: string;
}

const warned = new Set<string>();

/** Logs (once per process) why an optional component's tests are skipped. */
export const skipNotice = (what: string, missing: string | undefined): boolean => {
  if (missing === undefined) return false;
  if (!warned.has(what)) {
    warned.add(what);
    console.warn(`skipping ${what}: ${missing}`);
  }
  return true;
};

export const nativeCase: BackendCase = { name: "native", missing: nativeBlasMissing() };

const webgpuProbe = await probeWebgpu();
export const webgpuCase: BackendCase = { name: "webgpu", missing: webgpuProbe.ok ? undefined : webgpuProbe.why };

/** Every backend the reference tests run on. */
export const BACKEND_CASES: readonly BackendCase[] = [{ name: "wasm" }, { name: "cpu" }, nativeCase, webgpuCase];
