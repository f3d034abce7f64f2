/** Option parsing shared by the prune and search commands. */
import { UsageError } from "../errors.ts";
import type { Pattern } from "../allocation/pattern.ts";

/** `unstructured` or `N:M` with 1 <= N < M (N = 0 would prune nothing). */
export const parsePattern = (text: string): Pattern => {
  if (text === "unstructured") return { kind: "unstructured" };
  const match = /^(\d+):(\d+)$/.exec(text);
  const n = match ? Number(match[1]) : NaN;
  const m = match ? Number(match[2]) : NaN;
  if (!match || !(m >= 2) || !(n >= 1 && n < m) || !Number.isSafeInteger(m)) {
    throw new UsageError({ problem: `--pattern ${text} is neither "unstructured" nor N:M with 1 <= N < M (e.g. 2:4)` });
  }
  return { kind: "nm", n, m };
};
