/**
 * `evosparse search --queue` with `evosparse worker` processes on a redis-server of the
 * test's own: the same history and best as the in-process run with two workers; a worker
 * with another model refuses the run and the search says so; a worker killed mid-job
 * (SIGKILL) loses nothing; a search killed mid-generation and resumed reads back the jobs
 * already computed; garbage jobs fail alone; a Redis outage pauses the search, which then
 * finishes with the same history.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, cpSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import { join } from "node:path";
import { Queue } from "bullmq";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { PREFIX, queueName, SEARCHES_KEY } from "../src/queue/keys.ts";
import { bin, embeddedModel, ended, evosparse, historyOf, jsonOf, spawnEvosparse, tempRoot } from "./helpers/embedded.ts";
import { opensslMissing, redisMissing, startTestRedis, type TestRedis } from "./helpers/redis.ts";

if (redisMissing) console.warn(`skipping the queue worker tests: ${redisMissing}`);
else if (opensslMissing) console.warn(`skipping the rediss:// (TLS) test: ${opensslMissing}`);

const root = tempRoot("queue-workers");
const SEARCH = [
  "search", "--method", "dsa", "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
  "--nsamples", "2", "--seqlen", "128", "--fitness-windows", "6", "--eval-windows", "2", "--sparsity", "0.6", "--seed", "5", "--population", "4", "--generations", "3",
];

const sleep = (ms: number) => new Promise((d) => setTimeout(d, ms));

interface WorkerProcess {
  readonly child: ChildProcess;
  readonly log: string;
  lines(): string[];
  jobs(): string[];
}

const until = async (what: string, ok: () => boolean | Promise<boolean>, seconds = 120): Promise<void> => {
  const end = Date.now() + seconds * 1000;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
};

describe.skipIf(redisMissing !== undefined)("search --queue with evosparse worker processes", () => {
  let redis: TestRedis;
  const workers: WorkerProcess[] = [];
  let reference: any;
  const referenceDir = join(root, "in-process");

  const startWorker = (name: string, ...args: string[]): WorkerProcess => {
    const log = join(root, `${name}.log`);
    const fd = openSync(log, "w");
    const child = spawn(process.execPath, [bin, "worker", "--queue", redis.url, ...(args.includes("--backend") ? [] : ["--backend", "wasm"]), ...args], { stdio: ["ignore", fd, fd], env: { ...process.env, CI: "true" } });
    closeSync(fd);
    const lines = () => readFileSync(log, "utf8").split("\n").filter((l) => l.length > 0);
    const w = { child, log, lines, jobs: () => lines().filter((l) => l.startsWith("job ") && !l.includes("rejected")) };
    workers.push(w);
    return w;
  };
  const serving = (w: WorkerProcess) => until(`${w.log} to wait for searches`, () => w.lines().some((l) => l.includes("waiting for searches")));
  const stopWorker = async (w: WorkerProcess) => {
    if (w.child.exitCode !== null || w.child.signalCode !== null) return;
    const exit = new Promise<number | null>((d) => w.child.once("exit", (code) => d(code)));
    w.child.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(w.lines().at(-1)).toMatch(/stopped after \d+ jobs?$/);
  };
  /** The queue of the run whose search is alive now. */
  const liveQueue = async (): Promise<Queue> => {
    const client = redis.client();
    let fingerprints: string[] = [];
    await until("a search on the queue", async () => (fingerprints = await client.zrange(SEARCHES_KEY, "0", "-1")).length > 0);
    return new Queue(queueName(fingerprints[0]!), { connection: client, prefix: PREFIX });
  };

  beforeAll(async () => {
    redis = await startTestRedis();
    reference = jsonOf(evosparse(...SEARCH, "--out", referenceDir, "--json"));
  }, 120_000);
  // Finished jobs are named by run and candidate, so an identical search would read them
  // back without any worker: each test starts from an empty Redis.
  beforeEach(async () => {
    await redis.client().flushall();
  });
  afterAll(async () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill("SIGKILL");
    await redis?.dispose();
  });

  it("two workers (one streaming) give the in-process history and best; a worker with another model refuses the run, and the search says so", async () => {
    const other = join(root, "other-model");
    cpSync(embeddedModel, other, { recursive: true });
    const fd = openSync(join(other, "model.safetensors"), "r+");
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, 8192);
    byte[0] = byte[0]! ^ 1;
    writeSync(fd, byte, 0, 1, 8192);
    closeSync(fd);
    const a = startWorker("a");
    // b plans its runs the leanest way (blocks streamed, ranks on disk): the same results.
    const b = startWorker("b", "--concurrency", "2", "--streamed");
    const stranger = startWorker("stranger", "--model", other);
    // The backend is part of a run: float results differ in the last bits across backends.
    const otherBackend = startWorker("cpu", "--backend", "cpu");
    await Promise.all([serving(a), serving(b), serving(stranger), serving(otherBackend)]);
    // Without --json, so that the search's log (and the refusal in it) is printed.
    const r = evosparse(...SEARCH, "--out", join(root, "two"), "--queue", redis.url);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(readFileSync(join(root, "two", "summary.json"), "utf8"));
    expect(historyOf(join(root, "two"))).toEqual(historyOf(referenceDir));
    expect(summary.best).toEqual(reference.best);
    expect(summary.final.results).toEqual(reference.final.results);
    expect(r.stderr).toMatch(/queue: worker \S+ refused this run: not this worker's model \(.*model\.safetensors differs/);
    expect(stranger.lines().some((l) => /^refused run [0-9a-f]{12}: not this worker's model/.test(l))).toBe(true);
    expect(stranger.jobs()).toEqual([]);
    expect(r.stderr).toMatch(/queue: worker \S+ refused this run: the search computes with the wasm backend, this worker with cpu .*start it with --backend wasm/);
    expect(otherBackend.jobs()).toEqual([]);
    expect(a.jobs().length + b.jobs().length).toBeGreaterThanOrEqual(12);
    await Promise.all([a, b, stranger, otherBackend].map(stopWorker));
  }, 180_000);

  it("one worker serves two searches at once; another, whose --memory holds one run, makes the second wait", async () => {
    const otherSeed = SEARCH.map((w, i) => (SEARCH[i - 1] === "--seed" ? "6" : w));
    const otherReference = join(root, "in-process-seed-6");
    jsonOf(evosparse(...otherSeed, "--out", otherReference, "--json"));
    const both = startWorker("both");
    const one = startWorker("one-at-a-time", "--memory", "300");
    await Promise.all([serving(both), serving(one)]);
    const first = spawnEvosparse(...SEARCH, "--out", join(root, "first"), "--queue", redis.url, "--json");
    const second = spawnEvosparse(...otherSeed, "--out", join(root, "second"), "--queue", redis.url, "--json");
    expect(await Promise.all([ended(first), ended(second)])).toEqual([null, null]);
    expect([first.exitCode, second.exitCode]).toEqual([0, 0]);
    expect(historyOf(join(root, "first"))).toEqual(historyOf(referenceDir));
    expect(historyOf(join(root, "second"))).toEqual(historyOf(otherReference));
    const lines = both.lines();
    const served = lines.filter((l) => l.startsWith("serving run "));
    expect(served.length).toBe(2);
    const firstLeft = lines.findIndex((l) => l.startsWith("left run "));
    expect(firstLeft === -1 || firstLeft > lines.indexOf(served[1]!)).toBe(true);
    expect(one.lines().some((l) => /^run [0-9a-f]{12} waits: \d+ MiB of --memory 300 MiB is held by other runs$/.test(l))).toBe(true);
    await Promise.all([both, one].map(stopWorker));
  }, 180_000);

  it("a worker killed mid-job (SIGKILL) loses nothing: its job goes to another worker, the result is unchanged", async () => {
    const out = join(root, "killed");
    let search: ChildProcess | undefined;
    let exit: Promise<NodeJS.Signals | null> | undefined;
    let queue: Queue | undefined;
    // A job can finish between seeing it active and the kill landing; then nothing was
    // held, and another worker is started and killed the same way.
    let held: string[] = [];
    for (let attempt = 0; held.length === 0; attempt++) {
      if (attempt === 3) throw new Error("three workers finished their job before the kill landed");
      const a = startWorker(`killed-${attempt}`, "--lock-seconds", "1");
      await serving(a);
      if (search === undefined) {
        search = spawnEvosparse(...SEARCH, "--out", out, "--queue", redis.url, "--json");
        exit = ended(search);
        queue = await liveQueue();
      }
      const q = queue!;
      // Killed while it holds a job, after it has finished some.
      await until("two jobs and a third in hand", async () => a.jobs().length >= 2 && (await q.getActiveCount()) > 0);
      const gone = ended(a.child);
      a.child.kill("SIGKILL");
      await gone;
      // No worker is alive now: whatever is active was the killed worker's.
      held = (await q.getActive()).map((j) => j.id!);
    }
    const b = startWorker("rescuer", "--lock-seconds", "1");
    expect(await exit!).toBeNull();
    expect(search!.exitCode).toBe(0);
    expect(historyOf(out)).toEqual(historyOf(referenceDir));
    for (const id of held) {
      const job = await queue!.getJob(id);
      expect(await job!.getState()).toBe("completed");
      expect(job!.stalledCounter).toBeGreaterThan(0);
    }
    await queue!.close();
    await stopWorker(b);
  }, 240_000);

  it("a search killed mid-generation and resumed reads back the jobs already computed", async () => {
    const w = startWorker("resume");
    await serving(w);
    const out = join(root, "resumed");
    const search = spawnEvosparse(...SEARCH, "--out", out, "--queue", redis.url, "--json");
    const exit = ended(search);
    // Generation 0 is four jobs: kill the search inside generation 1.
    await until("a job of generation 1", () => w.jobs().some((l) => l.includes(" generation 1 ")));
    search.kill("SIGKILL");
    expect(await exit).toBe("SIGKILL");
    const resumed = jsonOf(evosparse("search", "--resume", out, "--queue", redis.url, "--json"));
    expect(historyOf(out)).toEqual(historyOf(referenceDir));
    expect(resumed.best).toEqual(reference.best);
    // No job was scored twice: the killed search's finished jobs were read back.
    const ids = w.jobs().map((l) => l.split(" ")[1]);
    expect(new Set(ids).size).toBe(ids.length);
    await stopWorker(w);
  }, 180_000);

  it("garbage jobs fail alone: the worker logs them and goes on", async () => {
    const w = startWorker("garbage");
    await serving(w);
    const out = join(root, "garbage");
    const search = spawnEvosparse(...SEARCH, "--out", out, "--queue", redis.url, "--json");
    const exit = ended(search);
    const queue = await liveQueue();
    const bad = await Promise.all([
      queue.add("fitness", { fingerprint: "0".repeat(64), allocation: [0.5] }, { jobId: "garbage-1" }),
      queue.add("fitness", { allocation: "rm -rf /" } as never, { jobId: "garbage-2" }),
      queue.add("fitness", "junk" as never, { jobId: "garbage-3" }),
    ]);
    expect(await exit).toBeNull();
    expect(search.exitCode).toBe(0);
    expect(historyOf(out)).toEqual(historyOf(referenceDir));
    for (const job of bad) await until(`${job.id} to fail`, async () => (await queue.getJobState(job.id!)) === "failed", 30);
    const rejected = w.lines().filter((l) => / rejected: /.test(l));
    expect(rejected.length).toBe(3);
    expect(rejected.join("\n")).toMatch(/job garbage-2 rejected: invalid job payload: /);
    expect(rejected.join("\n")).toMatch(/job garbage-1 rejected: job of run 000000000000 on the queue of run/);
    await queue.close();
    await stopWorker(w);
  }, 180_000);

  it("a Redis outage pauses the search with a message; it continues when Redis returns, with the same history", async () => {
    const w = startWorker("outage");
    await serving(w);
    const out = join(root, "outage");
    // Without --json: the log, where the pause is reported, is printed.
    const search = spawnEvosparse(...SEARCH, "--out", out, "--queue", redis.url);
    let stderr = "";
    search.stderr!.on("data", (d) => (stderr += String(d)));
    search.stdout!.resume();
    const exit = ended(search);
    await until("three jobs", () => w.jobs().length >= 3);
    await redis.stop();
    await until("the search to notice", () => stderr.includes("queue: lost Redis"), 30);
    // Redis returns once the worker has noticed too, so both sides really wait for it.
    await until("the worker to notice", () => w.lines().some((l) => l.includes("queue: lost Redis")), 30);
    await redis.start();
    expect(await exit).toBeNull();
    expect(search.exitCode, stderr).toBe(0);
    expect(stderr).toMatch(/queue: lost Redis at redis:\/\/127\.0\.0\.1:\d+\/?; waiting up to 300 s for it to return/);
    expect(stderr).toMatch(/queue: Redis at redis:\/\/127\.0\.0\.1:\d+\/? is back; continuing/);
    expect(historyOf(out)).toEqual(historyOf(referenceDir));
    await stopWorker(w);
  }, 180_000);

  it.skipIf(opensslMissing !== undefined)("works over TLS: rediss:// with the server's CA trusted (NODE_EXTRA_CA_CERTS)", async () => {
    const secure = await startTestRedis({ tls: true });
    try {
      const env = { ...process.env, CI: "true", NODE_EXTRA_CA_CERTS: secure.ca! };
      const log = join(root, "tls-worker.log");
      const fd = openSync(log, "w");
      const worker = spawn(process.execPath, [bin, "worker", "--queue", secure.url, "--backend", "wasm"], { stdio: ["ignore", fd, fd], env });
      closeSync(fd);
      const workerExit = new Promise<number | null>((d) => worker.once("exit", (code) => d(code)));
      const out = join(root, "tls");
      const search = spawn(process.execPath, [bin, ...SEARCH, "--out", out, "--queue", secure.url, "--json", "--backend", "wasm"], { stdio: ["ignore", "ignore", "pipe"], env });
      let stderr = "";
      search.stderr!.on("data", (d) => (stderr += String(d)));
      expect(await new Promise((d) => search.once("exit", d)), stderr).toBe(0);
      expect(historyOf(out)).toEqual(historyOf(referenceDir));
      worker.kill("SIGTERM");
      expect(await workerExit).toBe(0);
      expect(readFileSync(log, "utf8")).toMatch(/^job c[0-9a-f]{40} /m);
    } finally {
      await secure.dispose();
    }
  }, 180_000);
});
