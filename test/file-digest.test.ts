/** The file digest that ties saved states to their model: taken once per file version, never stale. */
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { fileDigest } from "../src/reads.ts";
import { scratchFolder } from "./helpers/cli.ts";

const { fresh } = scratchFolder("evosparse-digest-");
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

describe("fileDigest", () => {
  it("is the SHA-256 of the bytes, also after the file is rewritten with others of the same length (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 4096 }), fc.nat(255), (bytes, flip) => {
        const file = fresh("f");
        writeFileSync(file, bytes);
        expect(fileDigest(file)).toBe(sha256(bytes));
        expect(fileDigest(file)).toBe(sha256(bytes));
        const changed = Uint8Array.from(bytes);
        changed[0] = (changed[0]! + 1 + (flip % 255)) % 256;
        writeFileSync(file, changed);
        expect(fileDigest(file)).toBe(sha256(changed));
      }),
      { numRuns: 50 },
    );
  });
});
