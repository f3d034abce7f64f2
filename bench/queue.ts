/**
 * Section `queue`: the fitness job queue (BullMQ on Redis) measured against what it
 * carries. A redis-server is started here on a free loopback port, and every process the
 * section starts is stopped at its end, also when it fails.
 *
 * 1. The queue's own cost: real queue workers (`workerJob`, bench/queue-worker.ts) whose
 *    fitness is instant, 1, 4 and 16 processes, fed batches of distinct candidates by the
 *    search's real client (`queueEvaluator`) with a real setup record of the embedded model.
 * 2. Evaluations per minute of a short DSA search on the embedded model: in process, two
 *    worker threads, and two `evosparse worker` processes on the queue.
 * 3. From both: how many machines a search can keep busy before the queue is the limit.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Effect, Exit, Scope } from "effect";
import type { BackendChoice } from "../src/backend/backend.ts";
import { defaultData, defaultModel, projectRoot } from "../src/defaults.ts";
import { searchJob, type SearchSummary } from "../src/jobs/search.ts";
import type { CalibrationMode } from "../src/prune/pipeline.ts";
import { parseQueueAddress } from "../src/queue/address.ts";
import { queueEvaluator } from "../src/queue/queue-evaluator.ts";
import { modelIdentity, setupRecordOf } from "../src/queue/records.ts";
import { Rng } from "../src/rng.ts";
import { openFitnessModel, type FitnessSetup } from "../src/search/fitness-setup.ts";
import { brownSetup } from "./quality.ts";

const WORKER_COUNTS = [1, 4, 16] as const;
/** Timed batches per worker count, after one warm-up batch. */
const BATCHES = 40;
const BATCH_SIZE = 64;
/** How long workers may take to start and to join a run (16 processes loading tfjs on few cores). */
const START_MS = 180_000;
/** How long a stopping process may take to finish before it is killed. */
const STOP_MS = 20_000;

const log = (line: string) => process.stderr.write(`${line}\n`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every process started here and still running, for killAll. */
const running = new Set<ChildProcess>();
/** Kills them synchronously: on process exit and signals, when no `stop` will run. */
const killAll = () => {
  for (const p of running) p.kill("SIGKILL");
};
const onSignal = (signal: NodeJS.Signals) => {
  killAll();
  process.exit(signal === "SIGINT" ? 130 : 143);
};

/** A process whose output lines are kept with their arrival time (to wait for one, and for errors). */
const startChild = (label: string, command: string, args: readonly string[]) => {
  const proc = spawn(command, args, { cwd: projectRoot, stdio: ["ignore", "pipe", "pipe"] });
  running.add(proc);
  const lines: Array<{ line: string; at: number }> = [];
  let exited: string | undefined;
  const onLine = (line: string) => lines.push({ line, at: performance.now() });
  createInterface({ input: proc.stdout! }).on("line", onLine);
  createInterface({ input: proc.stderr! }).on("line", onLine);
  const closed = new Promise<void>((resolve) => proc.once("close", () => resolve()));
  proc.once("error", (e) => (exited ??= `could not start: ${e.message}`));
  proc.once("exit", (code, signal) => {
    exited ??= `exited with ${signal ?? code}`;
    running.delete(proc);
  });
  const failure = (why: string) => new Error(`${label} ${why}; its last lines:\n${lines.slice(-30).map((l) => l.line).join("\n")}`);

  return {
    /** The time (performance.now) of the first line matching, already seen or still to come. */
    waitFor: async (pattern: RegExp, timeoutMs: number): Promise<number> => {
      // Polling is enough: the time returned is the line's arrival, not the poll's.
      const until = performance.now() + timeoutMs;
      for (;;) {
        const seen = lines.find((l) => pattern.test(l.line));
        if (seen) return seen.at;
        if (exited !== undefined) throw failure(exited);
        if (performance.now() > until) throw failure(`wrote no line matching ${pattern} within ${timeoutMs / 1000} s`);
        await sleep(20);
      }
    },
    stop: async () => {
      if (exited === undefined) {
        proc.kill("SIGTERM");
        const killer = setTimeout(() => proc.kill("SIGKILL"), STOP_MS);
        await closed;
        clearTimeout(killer);
      }
    },
  };
};
type Child = ReturnType<typeof startChild>;

const stopAll = (list: readonly Child[]) => Promise.all(list.map((c) => c.stop()));

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const fmt = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : "-");

interface OverheadRow {
  readonly workers: number;
  readonly jobs: number;
  readonly seconds: number;
  /** Milliseconds per job of each timed batch. */
  readonly batchMs: readonly number[];
  /** Seconds from opening the client until every worker served the run. */
  readonly joinSeconds: number;
}
const jobsPerSecond = (r: OverheadRow) => r.jobs / r.seconds;

/**
 * Jobs per second through the queue with `count` instant-fitness worker processes: one
 * warm-up batch once every worker serves the run, then BATCHES timed batches, one after
 * another as a search sends its generations. A failed batch fails the section.
 */
const overhead = async (url: string, backend: BackendChoice, count: number): Promise<OverheadRow> => {
  const model = defaultModel();
  const script = [join(projectRoot, "bin", "run-ts.mjs"), join(projectRoot, "bench", "queue-worker.ts"), url, backend, model];
  const workers = Array.from({ length: count }, (_, i) => startChild(`queue worker ${i + 1}/${count}`, process.execPath, script));
  const scope = await Effect.runPromise(Scope.make());
  try {
    // A small real setup record (the workers never open its model); a distinct search seed
    // per worker count makes a run of its own (its own queue, its own fingerprint).
    const setup: FitnessSetup = {
      model, metric: "wanda", mode: "dense", pattern: { kind: "unstructured" }, calib: defaultData("calibration"), field: "text", nsamples: 2, seqlen: 64, seed: 0,
      fitnessData: defaultData("validation"), fitnessWindows: 2, backend, batch: 1, fitness: "ppl", searchSeed: count,
    };
    const fitnessModel = openFitnessModel(setup);
    const record = setupRecordOf(setup, fitnessModel, modelIdentity(model));
    const layers = fitnessModel.checkpoint.spec.numLayers;
    fitnessModel.dispose();

    await Promise.all(workers.map((w) => w.waitFor(/waiting for searches/, START_MS)));
    const opened = performance.now();
    const options = { address: parseQueueAddress(url), record, timeoutSeconds: 30, log: (line: string) => log(`  ${line}`), after: "the benchmark stops", workerHint: "(the benchmark starts its own workers)" };
    const evaluator = await Effect.runPromise(Scope.provide(scope)(queueEvaluator(options)));
    const served = await Promise.all(workers.map((w) => w.waitFor(new RegExp(`serving run ${record.fingerprint.slice(0, 12)}`), START_MS)));
    const joinSeconds = (Math.max(...served) - opened) / 1000;

    const rng = new Rng(1000 + count);
    let generation = 0;
    /** One batch of new candidates at a new generation; each result must be its allocation's sum. */
    const run = async (): Promise<void> => {
      const batch = Array.from({ length: BATCH_SIZE }, () => Array.from({ length: layers }, () => 0.5 + 0.4 * rng.next()));
      const at = generation++;
      const results = await Effect.runPromise(evaluator.evaluate(batch, { generation: at, stage: 0 }));
      results.forEach((r, i) => {
        const want = batch[i]!.reduce((a, b) => a + b, 0);
        if (!r.ok || Math.abs(r.value - want) > 1e-9 * Math.abs(want)) throw new Error(`job ${i} of generation ${at} came back as ${JSON.stringify(r)}, expected the value ${want}`);
      });
    };
    await run();
    const batchMs: number[] = [];
    const start = performance.now();
    for (let b = 0; b < BATCHES; b++) {
      const t = performance.now();
      await run();
      batchMs.push((performance.now() - t) / BATCH_SIZE);
    }
    return { workers: count, jobs: BATCHES * BATCH_SIZE, seconds: (performance.now() - start) / 1000, batchMs, joinSeconds };
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void));
    await stopAll(workers);
  }
};

/** The settings of bench/search.ts's fitness rate: DSA, Wanda 70%, dense fitness on 8 windows, population 16, 3 generations. */
const rateSettings = () => {
  const setup = brownSetup();
  return {
    method: "dsa", sparsity: 0.7, metric: "wanda" as const, pattern: { kind: "unstructured" as const }, model: setup.model, calib: setup.calibration, field: "text",
    nsamples: 32, calibSeed: 0, seqlen: setup.seqlen, fitnessData: setup.validation, fitnessWindows: 8, eval: setup.evaluation, evalFormat: "text" as const, evalWindows: 1,
    population: 16, generations: 3, seed: 0, mode: "dense" as CalibrationMode, finalMode: "sequential" as CalibrationMode, batch: 4,
  };
};

interface RateRow {
  readonly label: string;
  readonly summary: SearchSummary;
  /** Queue run: seconds from the run's announcement until both workers served it. */
  readonly joinSeconds?: number;
}

const search = (label: string, out: string, backend: BackendChoice, extra: { workers: number; queue?: string }, onLine: (line: string, at: number) => void = () => {}) => {
  log(`queue: fitness rate, ${label}`);
  return Effect.runPromise(searchJob({ settings: rateSettings(), out, backend, ...extra, log: (line) => { onLine(line, performance.now()); log(`  ${line}`); } }));
};

const rates = async (url: string, backend: BackendChoice, scratch: string): Promise<RateRow[]> => {
  const inProcess = await search("in process", join(scratch, "rate-1"), backend, { workers: 1 });
  const threads = await search("2 worker threads", join(scratch, "rate-2"), backend, { workers: 2 });
  const evosparse = join(projectRoot, "bin", "evosparse.mjs");
  const workers = [1, 2].map((i) => startChild(`evosparse worker ${i}`, process.execPath, [evosparse, "worker", "--queue", url, "--backend", backend, "--model", defaultModel()]));
  try {
    await Promise.all(workers.map((w) => w.waitFor(/waiting for searches/, START_MS)));
    // When the search announced its run; the workers serve it while the search runs.
    let announced: { run: string; at: number } | undefined;
    const queued = await search("2 queue worker processes", join(scratch, "rate-queue"), backend, { workers: 1, queue: url }, (line, at) => {
      const m = line.match(/^queue: run ([0-9a-f]{12}) on /);
      if (m) announced ??= { run: m[1]!, at };
    });
    const served = announced && (await Promise.all(workers.map((w) => w.waitFor(new RegExp(`serving run ${announced!.run}`), START_MS))));
    return [
      { label: "in process (workers 1)", summary: inProcess },
      { label: "2 worker threads (workers 2)", summary: threads },
      { label: "2 queue worker processes (queue)", summary: queued, ...(served && announced ? { joinSeconds: (Math.max(...served) - announced.at) / 1000 } : {}) },
    ];
  } finally {
    await stopAll(workers);
  }
};

/** The section's text, from everything measured. */
const report = (redisVersion: string, backend: string, load: readonly [number, number], overheadRows: readonly OverheadRow[], rateRows: readonly RateRow[]) => {
  const cores = availableParallelism();
  console.log(`${redisVersion.split(" ").slice(0, 3).join(" ")} on 127.0.0.1 (no persistence); ${cores} cores; backend ${backend}. Every number below comes from this one run.\n`);
  const busy = load[0] > cores / 2 ? `: **other work was running on these ${cores} cores, so the rates below are noisy**` : "";
  console.log(`Load average (1 min) ${load[0].toFixed(2)} before the section, ${load[1].toFixed(2)} at its end (its own processes included)${busy}.\n`);

  console.log(`### Queue overhead per job, instant fitness\n`);
  console.log(
    `Worker processes: bench/queue-worker.ts, the worker command's job (\`workerJob\`, concurrency 1 each) with a fitness that returns the sum of the allocation at once. ` +
      `The search's side: the real client (\`queueEvaluator\`) with a real setup record of the embedded model, sending ${BATCHES} batches of ${BATCH_SIZE} distinct candidates one after another ` +
      `(each waits for its whole batch, as a search's generation does), after a warm-up batch sent once every worker served the run.\n`,
  );
  console.log("| worker processes | jobs | seconds | jobs/s | ms per job |");
  console.log("| ---: | ---: | ---: | ---: | ---: |");
  for (const r of overheadRows) console.log(`| ${r.workers} | ${r.jobs} | ${fmt(r.seconds, 2)} | ${fmt(jobsPerSecond(r), 0)} | ${fmt(1000 / jobsPerSecond(r), 2)} |`);
  console.log("");
  for (const r of overheadRows) {
    const [med, lo, hi] = [median(r.batchMs), Math.min(...r.batchMs), Math.max(...r.batchMs)];
    const noisy = (hi - lo) / med > 0.5 ? ", **noisy**: batches differ by more than half the median" : "";
    console.log(`- ${r.workers} worker${r.workers === 1 ? "" : "s"}: ms per job by batch, median ${fmt(med, 2)} (min ${fmt(lo, 2)}, max ${fmt(hi, 2)})${noisy}; every worker served the run ${fmt(r.joinSeconds)} s after the client opened`);
  }
  if (cores < 16) {
    const shared = `past ${cores} workers they take turns on the cores, so the 4- and 16-worker rates measure this machine as much as the queue`;
    console.log(`- this machine has ${cores} cores for Redis, the search's client and up to 16 worker processes: ${shared}; on separate machines the queue's limit is Redis and the search's client, which these rates bound from below.`);
  }
  console.log(`- jobs/s from ${overheadRows[0]!.workers} to ${overheadRows.at(-1)!.workers} workers: ${overheadRows.map((r) => fmt(jobsPerSecond(r), 0)).join(" -> ")}\n`);

  console.log(`### Evaluations per minute, embedded model (DSA, Wanda 70%, dense fitness on 8 windows of 256, population 16, 3 generations)\n`);
  console.log("Evaluation seconds: the search's wall time waiting for fitness (the part workers share); search seconds: the whole run, model loading and the final sequential re-prune included.\n");
  console.log("| fitness on | evaluations | evaluation s | evaluations/min (evaluation) | search s | evaluations/min (search) | s per evaluation | best fitness |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  const evalRate = (r: RateRow) => r.summary.evaluations / (r.summary.evaluationSeconds / 60);
  for (const r of rateRows) {
    const s = r.summary;
    console.log(
      `| ${r.label} | ${s.evaluations} | ${fmt(s.evaluationSeconds)} | ${fmt(evalRate(r))} | ${fmt(s.searchSeconds)} | ${fmt(s.evaluationsPerMinute)} | ${fmt(s.evaluationSeconds / s.evaluations, 3)} | ${s.best.fitness.toFixed(4)} |`,
    );
  }
  const [inProcess, threads, queued] = rateRows as [RateRow, RateRow, RateRow];
  console.log("");
  console.log(`- 2 threads / in process: ${fmt(evalRate(threads) / evalRate(inProcess), 2)}x; 2 queue workers / in process: ${fmt(evalRate(queued) / evalRate(inProcess), 2)}x; 2 queue workers / 2 threads: ${fmt(evalRate(queued) / evalRate(threads), 2)}x (evaluation time)`);
  if (queued.joinSeconds !== undefined) console.log(`- the queue workers served the run ${fmt(queued.joinSeconds)} s after the search announced it (each builds its own copy of the run's fitness model); that wait is inside the queue row's evaluation seconds, as the threads' start is not in theirs`);
  const same = rateRows.every((r) => r.summary.best.fitness === inProcess.summary.best.fitness);
  console.log(`- best fitness ${same ? `identical in the ${rateRows.length} runs` : "**differs between the runs**"} (same seed, same backend)`);
  console.log(`- one search of ${inProcess.summary.evaluations} evaluations per setting: a rough rate, a few seconds of noise move it by several percent\n`);

  // 3. X jobs/s through the queue against Y seconds per evaluation: X * Y machines keep it busy.
  const one = overheadRows.find((r) => r.workers === 1)!;
  const sixteen = overheadRows.find((r) => r.workers === 16)!;
  const x = jobsPerSecond(sixteen);
  const y = inProcess.summary.evaluationSeconds / inProcess.summary.evaluations;
  console.log("### What it means\n");
  console.log(`- the queue handles about ${fmt(x, 0)} jobs/s with 16 workers; an embedded-model evaluation takes ${fmt(y, 3)} s, so a search scales to about ${fmt(x * y, 0)} machines of one worker each before the queue is the limit`);
  console.log(`- for a model whose evaluation takes 1 s: about ${fmt(x, 0)} machines of one worker each before the queue is the limit`);
  console.log(`- per-job overhead with one worker (latency, 1000 / jobs/s): ${fmt(1000 / jobsPerSecond(one), 2)} ms; the median batch's, ${fmt(median(one.batchMs), 2)} ms per job`);
  const best = overheadRows.reduce((b, r) => (jobsPerSecond(r) > jobsPerSecond(b) ? r : b));
  const bx = jobsPerSecond(best);
  if (best !== sixteen) console.log(`- with the best rate measured here, ${fmt(bx, 0)} jobs/s (${best.workers} worker${best.workers === 1 ? "" : "s"}), the same reckoning gives about ${fmt(bx * y, 0)} machines for the embedded model and ${fmt(bx, 0)} for a 1-second model`);
  if (cores < 16) console.log(`- X comes from 16 worker processes on ${cores} shared cores (see above): with the workers on other machines it is a lower bound`);
  console.log("");
};

/** Section `queue`. `backend` is the one the benchmark's process resolved: the search, the record and the workers all use it. */
export const queueSection = async (backend: BackendChoice): Promise<void> => {
  console.log("\n## Fitness job queue (BullMQ on Redis)\n");
  const version = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
  if (version.status !== 0) {
    console.log("(skipped: redis-server is missing; install Redis to measure the queue)\n");
    return;
  }
  const scratch = mkdtempSync(join(tmpdir(), "evosparse-bench-queue-"));
  process.on("exit", killAll);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let redis: Child | undefined;
  const loadBefore = loadavg()[0]!;
  try {
    const port = await freePort();
    redis = startChild("redis-server", "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    await redis.waitFor(/Ready to accept connections/, 15_000);
    const url = `redis://127.0.0.1:${port}`;

    // 1. The queue's own cost.
    const overheadRows: OverheadRow[] = [];
    for (const count of WORKER_COUNTS) {
      log(`queue: overhead, ${count} worker process${count === 1 ? "" : "es"}`);
      overheadRows.push(await overhead(url, backend, count));
    }
    // 2. A real search's evaluations per minute.
    const rateRows = await rates(url, backend, scratch);

    report(version.stdout.trim(), backend, [loadBefore, loadavg()[0]!], overheadRows, rateRows);
  } finally {
    // Parts 1 and 2 stop their own workers; Redis goes last.
    await redis?.stop();
    process.off("exit", killAll);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    rmSync(scratch, { recursive: true, force: true });
  }
};
