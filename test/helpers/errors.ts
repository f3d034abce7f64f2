import { expect } from "vitest";

/** Expects `run` to throw an instance of `kind` whose problem matches, naming `file` when given. */
export const expectTaggedError = (
  kind: abstract new (...args: never[]) => { readonly problem: string; readonly file: string },
  run: () => unknown,
  pattern: RegExp,
  file?: string,
): void => {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(kind);
    const tagged = error as { problem: string; file: string };
    expect(tagged.problem).toMatch(pattern);
    if (file !== undefined) expect(tagged.file).toBe(file);
    return;
  }
  throw new Error(`expected a ${kind.name}`);
};
