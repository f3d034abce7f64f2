import { Cause, Effect, Exit } from "effect";
import { isEvosparseError } from "../errors.ts";
import { endProgressLine } from "./progress.ts";

let verbose = false;
export const setVerbose = (v: boolean): void => {
  verbose = v;
};

/** Prints a failure as one line (the stack only with --verbose) and sets a non-zero exit code. */
export const reportFailure = (error: unknown): void => {
  endProgressLine();
  const message = isEvosparseError(error) ? error.message : (error as Error)?.message ?? String(error);
  process.stderr.write(`evosparse: ${message}\n`);
  if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exitCode = isEvosparseError(error) && error._tag === "UsageError" ? 2 : 1;
};

/** Runs a command's program; typed failures and defects both end as one clear line. */
export const runCommand = async <A, E>(program: Effect.Effect<A, E>): Promise<A | undefined> => {
  const exit = await Effect.runPromiseExit(program);
  if (Exit.isSuccess(exit)) return exit.value;
  reportFailure(Cause.squash(exit.cause));
  return undefined;
};
