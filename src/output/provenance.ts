/**
 * Saved state is tied to what made it. Every resumable state (a search's engine state, a
 * training checkpoint) is written with the record of what made it: the settings that decide
 * its result, and the SHA-256 of every file they read (the model's weights and config, the
 * texts, the search space). A resumed run compares that record with its own and refuses on
 * any difference, naming it: fitness values cached for other weights, or a schedule half
 * run at another learning rate, must never be continued as if they were this run's.
 *
 * The state also carries a digest of its own content, so a hand-edited state (a fitness,
 * a generation) is refused instead of trusted.
 */
import { createHash } from "node:crypto";
import { DataError } from "../errors.ts";

export interface Provenance {
  /** The settings that decide the result, by the flag that sets them (`--lr`). */
  readonly settings: Readonly<Record<string, unknown>>;
  /** What each input file was, by a label naming it (`--fitness-data brown.txt`, `model config.json`): its SHA-256. */
  readonly files: Readonly<Record<string, string>>;
}

const sha256 = (text: string): string => createHash("sha256").update(text).digest("hex");

/** JSON with object keys sorted, so a digest does not depend on the order fields were set in. */
const canonical = (value: unknown): string =>
  JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );

/** The fields a stamped state adds to the state it carries. */
export const STAMP_FIELDS = ["made", "digest"] as const;

/** The state with its provenance and a digest of both, as written to disk. */
export const stamp = <S extends object>(state: S, made: Provenance): S & { readonly made: Provenance; readonly digest: string } => ({
  ...state,
  made,
  digest: sha256(canonical({ state, made })),
});

const shown = (value: unknown): string => (value === undefined ? "not set" : typeof value === "string" ? value : JSON.stringify(value));

/** What differs between the provenance a state was saved with and this run's, in words; empty when nothing. */
export const provenanceDifferences = (saved: Provenance, now: Provenance): string[] => {
  const differences: string[] = [];
  for (const key of [...new Set([...Object.keys(saved.settings), ...Object.keys(now.settings)])].sort()) {
    const was = saved.settings[key];
    const is = now.settings[key];
    if (canonical(was) !== canonical(is)) differences.push(`${key} was ${shown(was)}, now ${shown(is)}`);
  }
  for (const label of [...new Set([...Object.keys(saved.files), ...Object.keys(now.files)])].sort()) {
    const was = saved.files[label];
    const is = now.files[label];
    if (was === is) continue;
    differences.push(
      was === undefined ? `${label} was not read then` : is === undefined ? `${label} is not read now` : `${label} has other bytes (sha256 ${was.slice(0, 12)} then, ${is.slice(0, 12)} now)`,
    );
  }
  return differences;
};

/**
 * The state a stamped file holds, checked: its digest must match its content, and what
 * made it must be what makes this run. A state written before stamps existed (no `made`)
 * is returned as it is. `json` is the parsed file; `what` says what resuming means, for
 * the message ("resume the search", "resume training").
 */
export const checkStamp = (json: unknown, now: Provenance, file: string, remedy: string): unknown => {
  if (json === null || typeof json !== "object" || Array.isArray(json) || !("made" in json)) return json;
  const { made, digest, ...state } = json as { made: unknown; digest: unknown } & Record<string, unknown>;
  if (typeof digest !== "string" || sha256(canonical({ state, made })) !== digest) {
    throw new DataError({ file, problem: `was changed after evosparse wrote it (its digest does not match its content); a saved state is never edited by hand: restore it, or ${remedy}` });
  }
  const saved = made as Provenance;
  if (saved === null || typeof saved !== "object" || typeof saved.settings !== "object" || typeof saved.files !== "object") {
    throw new DataError({ file, problem: `its record of what made it is damaged; ${remedy}` });
  }
  const differences = provenanceDifferences(saved, now);
  if (differences.length > 0) {
    throw new DataError({ file, problem: `was saved by a run with other inputs or settings: ${differences.join("; ")}; resume with what made it, or ${remedy}` });
  }
  return state;
};
