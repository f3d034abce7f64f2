/**
 * Queue faults end in one line: a password is masked even in a URL that does not parse,
 * and a database index the server lacks is refused before any work instead of a stack
 * trace and a wait on database 0. Runs against a redis-server of the test's own.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Queue, Worker } from "bullmq";
import { Effect, Exit, Scope } from "effect";
import { maskPassword, parseQueueAddress } from "../src/queue/address.ts";
import { PREFIX, queueName } from "../src/queue/keys.ts";
import { queueEvaluator, resultProblem } from "../src/queue/queue-evaluator.ts";
import { jobIdOf } from "../src/queue/records.ts";
import { redisMissing, startTestRedis, type TestRedis } from "./helpers/redis.ts";

const bin = resolve(import.meta.dirname, "..", "bin", "evosparse.mjs");
const root = mkdtempSync(join(tmpdir(), "evosparse-queue-hardening-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env: { ...process.env, CI: "true" }, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

describe("queue addresses", () => {
  it("property: no refusal of a URL shows its password, parsed or not", () => {
    const secret = fc.string({ minLength: 4, maxLength: 12 }).filter((s) => /^[A-Za-z0-9]+$/.test(s));
    fc.assert(
      fc.property(secret, fc.constantFrom("host:99999x", "host:abc", "ho st:1", "host:6379/zz", "[::1", "host:6379?x=1"), fc.constantFrom("redis", "rediss", "http"), (password, rest, scheme) => {
        const text = `${scheme}://user:${password}@${rest}`;
        try {
          parseQueueAddress(text);
        } catch (e) {
          expect((e as Error).message).not.toContain(password);
          return;
        }
      }),
      { numRuns: 100 },
    );
    expect(maskPassword("redis://user:pw@host")).toBe("redis://user:***@host");
  });

  it("the command line masks an unparsable URL's password", () => {
    const r = run("worker", "--queue", "redis://user:s3cr3tpw@host:99999x");
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain("s3cr3tpw");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });
});

describe.skipIf(redisMissing !== undefined)(`a database the server lacks${redisMissing ? ` (skipped: ${redisMissing})` : ""}`, () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startTestRedis();
  });
  afterAll(async () => redis?.dispose());

  it("search and worker: one line naming the database, no stack trace, no run folder", () => {
    const out = join(root, "run");
    const search = run("search", "--sparsity", "0.7", "--queue", `${redis.url}/99`, "--out", out, "--backend", "wasm");
    expect(search.code).toBe(1);
    const lines = search.stderr.trim().split("\n").filter((l) => l.startsWith("evosparse:"));
    expect(lines).toEqual([expect.stringMatching(/queue: Redis at .*\/99 has no database 99 \(ERR DB index is out of range\)/)]);
    expect(search.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(out)).toBe(false);
    const worker = run("worker", "--queue", `${redis.url}/99`);
    expect(worker.code).toBe(1);
    expect(worker.stderr).toMatch(/has no database 99/);
    expect(worker.stderr).not.toMatch(/\n\s+at /);
  });
});

describe("finished-job records are checked before they are believed", () => {
  const fingerprint = "a".repeat(64);
  const asked = { fingerprint, allocation: [0.5, 0.6] };
  it("property: a record is believed only when it is the job asked for with a possible value", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.constantFrom("ppl", "kl"), fc.boolean(), (value, measure, same) => {
        const data = same ? asked : { ...asked, allocation: [0.6, 0.5] };
        const problem = resultProblem(data, { ok: true, value }, asked, measure);
        const possible = measure === "kl" ? value >= 0 : value >= 1;
        expect(problem === undefined).toBe(same && possible);
      }),
      { numRuns: 200 },
    );
    expect(resultProblem(asked, { bogus: 1 }, asked, "ppl")).toMatch(/^is damaged/);
    expect(resultProblem({ nonsense: true }, { ok: true, value: 2 }, asked, "ppl")).toMatch(/^has a damaged payload/);
  });

  it.skipIf(redisMissing !== undefined)("a corrupt or forged finished record is computed again, and the search gets the real fitness", async () => {
    const redis = await startTestRedis();
    const connection = { host: "127.0.0.1", port: redis.port };
    try {
      // Records injected first: the two jobs the search will ask for, finished by a forger
      // with a forged value and with a damaged result.
      const queue = new Queue(queueName(fingerprint), { connection, prefix: PREFIX });
      const allocations = [[0.5, 0.6], [0.7, 0.6]];
      let finished = 0;
      const forged = new Promise<void>((done) => {
        const forger = new Worker(queueName(fingerprint), async (job) => (job.data.allocation[0] === 0.5 ? { ok: true, value: 0.001 } : { bogus: true }), { connection, prefix: PREFIX });
        forger.on("completed", () => {
          if (++finished === 2) void forger.close().then(() => done());
        });
      });
      await queue.addBulk(allocations.map((allocation) => ({ name: "fitness", data: { fingerprint, allocation }, opts: { jobId: jobIdOf(fingerprint, allocation, undefined) } })));
      await forged;
      await queue.close();
      // The search, with an honest worker: neither stored result is believed.
      const honest = new Worker(queueName(fingerprint), async (job) => ({ ok: true, value: 10 + job.data.allocation[0] }), { connection, prefix: PREFIX });
      const lines: string[] = [];
      const record = { text: JSON.stringify({ fitness: "ppl" }), fingerprint };
      const options = { address: parseQueueAddress(redis.url), record, timeoutSeconds: 30, log: (l: string) => lines.push(l), after: "", workerHint: "" };
      const scope = Effect.runSync(Scope.make());
      const evaluator = await Effect.runPromise(Scope.provide(scope)(queueEvaluator(options)));
      const results = await Effect.runPromise(evaluator.evaluate(allocations));
      expect(results).toEqual([{ ok: true, value: 10.5 }, { ok: true, value: 10.7 }]);
      expect(lines.some((l) => /stored result is 0\.001, which no perplexity can be; computing it again/.test(l))).toBe(true);
      expect(lines.some((l) => /stored result is damaged/.test(l))).toBe(true);
      await honest.close();
      await Effect.runPromise(Scope.close(scope, Exit.void));
    } finally {
      await redis.dispose();
    }
  }, 60_000);
});

describe.skipIf(redisMissing !== undefined)("a worker that lost Redis", () => {
  it("stops on the first SIGTERM, in one line, with no raw client errors", async () => {
    const redis = await startTestRedis();
    try {
      const child = spawn(process.execPath, [bin, "worker", "--queue", redis.url, "--backend", "wasm"], { env: { ...process.env, CI: "true" } });
      let output = "";
      const waitFor = (pattern: RegExp) =>
        new Promise<void>((done, fail) => {
          const check = () => (pattern.test(output) ? done() : undefined);
          child.stdout.on("data", (d) => ((output += d), check()));
          child.stderr.on("data", (d) => ((output += d), check()));
          child.once("exit", () => (pattern.test(output) ? done() : fail(new Error(`exited before ${pattern}: ${output}`))));
          check();
        });
      await waitFor(/waiting for searches/);
      await redis.stop();
      await waitFor(/lost Redis/);
      const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
      const signalled = performance.now();
      child.kill("SIGTERM");
      const code = await exited;
      expect(performance.now() - signalled).toBeLessThan(10_000);
      expect(code).toBe(0);
      expect(output).toMatch(/Redis is away: the jobs in hand cannot report their results/);
      expect(output).not.toMatch(/\[ioredis\]|Unhandled error event|ECONNREFUSED\n\s+at /);
    } finally {
      await redis.dispose();
    }
  }, 60_000);
});
