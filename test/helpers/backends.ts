/**
 * The backends the tests cover: wasm and cpu always, the native BLAS backend where its
 * kernel is built. An absent optional backend is still listed, with why it is absent, so
 * that its tests show as skipped with that message rather than silently vanish.
 */
import { nativeBlasMissing } from "../../src/backend/native-blas.ts";

export type TestBackend = "wasm" | "cpu" | "native";

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

/** Every backend the reference tests run on. */
export const BACKEND_CASES: readonly BackendCase[] = [{ name: "wasm" }, { name: "cpu" }, nativeCase];
