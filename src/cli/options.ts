/** Option parsing shared by the prune and search commands. */
import { UsageError } from "../errors.ts";
import type { Pattern } from "../search/plugin.ts";

/** `unstructured` or `N:M` with 0 <= N < M. */
export const parsePattern = (text: string): Pattern => {
  if (text === "unstructured") return { kind: "unstructured" };
  const match = /^(\d+):(\d+)$/.exec(text);
  const n = match ? Number(match[1]) : NaN;
  const m = match ? Number(match[2]) : NaN;
  if (!match || !(m >= 1) || !(n >= 0 && n < m)) {
    throw new UsageError({ problem: `--pattern ${text} is neither "unstructured" nor N:M with N < M (e.g. 2:4)` });
  }
  return { kind: "nm", n, m };
};
