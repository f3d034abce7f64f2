/**
 * Fitness on a job queue: the worker's side (`evosparse worker --queue`). The server
 * watches Redis for searches looking for workers; for each run it checks the run's setup
 * record against itself (the model's bytes, the backend family) and either refuses the run
 * with a reason the search prints, or builds that run's fitness model once and takes the
 * run's jobs until the search is gone. Several runs can be served at once, as many as the
 * memory setting holds; the others wait for a search to end. Nothing from the queue is executed or used as a path: records and jobs are
 * decoded with Schema, and a job that does not decode fails alone.
 */
import { UnrecoverableError, Worker, type Job } from "bullmq";
import type { Redis } from "ioredis";
import { openCheckpointSync } from "../checkpoint/open.ts";
import type { Fidelity, Fitness } from "../engine/genome.ts";
import { planFitness, referenceBytesOf, runningOf, type FitnessSetup } from "../search/fitness-setup.ts";
import { BASELINE_BYTES } from "../memory/plan.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { QueueAddress } from "./address.ts";
import { KEEP_SECONDS, PREFIX, queueName, refusalsKey, SEARCH_GONE_MS, SEARCHES_KEY, setupKey } from "./keys.ts";
import { checkTokens, decodeFitnessJob, decodeSetupRecord, modelDifference, modelIdentity, setupFromRecord, type ModelIdentity, type SetupRecord } from "./records.ts";
import { openRedis, watchOutages } from "./redis.ts";

/** What scores a run's candidates: built once per run, `concurrency` candidates at a time. */
export interface Scorer {
  score(allocation: readonly number[], fidelity: Fidelity | undefined): Promise<Fitness>;
  close(): Promise<void>;
}

export type OpenScorer = (setup: FitnessSetup, concurrency: number) => Promise<Scorer>;

export interface ServerOptions {
  readonly address: QueueAddress;
  /** The model copies this worker may serve. */
  readonly models: readonly string[];
  /** The backend family this worker computes with. */
  readonly backend: string;
  /** The leanest memory plan for every run, whatever would fit (results are the same). */
  readonly streamed?: boolean;
  readonly concurrency: number;
  /** Memory the runs' fitness models may hold together. */
  readonly memoryBytes: number;
  /** A job whose worker stops renewing its lock for this long goes back to the queue. */
  readonly lockSeconds: number;
  /** This worker's name in logs and refusals. */
  readonly name: string;
  readonly log: (line: string) => void;
  readonly openScorer: OpenScorer;
}

/** How often Redis is asked for searches. */
const DISCOVER_MS = 500;

interface Run {
  readonly fingerprint: string;
  readonly worker: Worker;
  readonly scorer: Scorer;
  readonly bytes: number;
  busy: number;
  /** Its scorer failed (a worker thread died): rebuilt once its jobs in hand are done. */
  broken: boolean;
}

/** A run that passed a worker's checks: its record, the model copy serving it, its setup and memory. */
interface Accepted {
  readonly record: SetupRecord;
  readonly path: string;
  readonly setup: FitnessSetup;
  readonly bytes: number;
}

const short = (fingerprint: string) => fingerprint.slice(0, 12);

/** A clean-up step that may wait on an absent Redis: at most two seconds. */
const bounded = (step: Promise<unknown>): Promise<unknown> =>
  Promise.race([step.catch(() => {}), new Promise((done) => setTimeout(done, 2000).unref())]);

export class FitnessServer {
  private readonly runs = new Map<string, Run>();
  /** Runs refused or failed to build, with why (never retried: the record cannot change). */
  private readonly refused = new Set<string>();
  /** Runs accepted but waiting for memory, with what their checks found. */
  private readonly waiting = new Map<string, Accepted>();
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  private discovering: Promise<void> = Promise.resolve();
  jobs = 0;

  private constructor(
    private readonly options: ServerOptions,
    private readonly redis: Redis,
    private readonly identities: ReadonlyArray<{ readonly path: string; readonly identity: ModelIdentity }>,
    private readonly watch: ReturnType<typeof watchOutages>,
  ) {}

  static async start(options: ServerOptions): Promise<FitnessServer> {
    const identities = options.models.map((path) => ({ path, identity: modelIdentity(path) }));
    const redis = await openRedis(options.address, `evosparse-worker-${options.name}`);
    const watch = watchOutages(redis, options.address, undefined, options.log);
    const server = new FitnessServer(options, redis, identities, watch);
    const tick = () => {
      server.discovering = server.discover().catch((e) => options.log(`queue: ${(e as Error)?.message ?? String(e)}`));
      void server.discovering.then(() => {
        if (!server.stopping) server.timer = setTimeout(tick, DISCOVER_MS);
      });
    };
    tick();
    return server;
  }

  /** Joins runs that appeared, leaves idle runs whose search is gone. */
  private async discover(): Promise<void> {
    if (this.stopping) return;
    const alive = new Set(await this.redis.zrangebyscore(SEARCHES_KEY, Date.now() - SEARCH_GONE_MS, "+inf"));
    for (const fingerprint of alive) {
      if (!this.runs.has(fingerprint) && !this.refused.has(fingerprint) && !this.stopping) await this.join(fingerprint);
    }
    for (const fingerprint of [...this.waiting.keys()]) if (!alive.has(fingerprint)) this.waiting.delete(fingerprint);
    for (const run of [...this.runs.values()]) {
      if (run.busy > 0) continue;
      if (!alive.has(run.fingerprint)) await this.leave(run, "its search is gone");
      else if (run.broken) await this.leave(run, "its fitness model broke; it is built again");
    }
  }

  private async refuse(fingerprint: string, why: string): Promise<void> {
    this.refused.add(fingerprint);
    this.options.log(`refused run ${short(fingerprint)}: ${why}`);
    await this.redis.hset(refusalsKey(fingerprint), this.options.name, why);
    await this.redis.expire(refusalsKey(fingerprint), KEEP_SECONDS);
  }

  /**
   * The checks of a run's setup against this worker, made once: its record, the model copy
   * that serves it and the memory it needs; a refusal says why.
   */
  private async accepted(fingerprint: string): Promise<Accepted | undefined> {
    const known = this.waiting.get(fingerprint);
    if (known) return known;
    const text = await this.redis.get(setupKey(fingerprint));
    if (text === null) return undefined;
    let record: SetupRecord;
    try {
      record = decodeSetupRecord(text, fingerprint);
    } catch (e) {
      return void (await this.refuse(fingerprint, (e as Error).message));
    }
    if (record.backend !== this.options.backend) {
      return void (await this.refuse(fingerprint, `the search computes with the ${record.backend} backend, this worker with ${this.options.backend} (results would differ in the last bits); start it with --backend ${record.backend}`));
    }
    const own = this.identities.find((m) => modelDifference(m.identity, record.model) === undefined);
    if (!own) {
      const why = this.identities.map((m) => `${m.path}: ${modelDifference(m.identity, record.model)}`).join("; ");
      return void (await this.refuse(fingerprint, `not this worker's model (${why})`));
    }
    let setup: FitnessSetup;
    let need: number;
    try {
      setup = setupFromRecord(record, own.path);
      const checkpoint = openCheckpointSync(own.path);
      try {
        checkTokens(setup, checkpoint.spec.vocabSize, checkpoint.spec.maxPositions);
        // This worker's own plan of its copies, within its --memory: streamed where the
        // model would not fit resident (results are the same either way).
        const plan = planFitness(checkpoint, setup, this.options.backend, this.options.concurrency, {
          threads: this.options.concurrency,
          // --memory is what the runs' models hold; the process's own baseline comes on top.
          memoryMib: Math.floor((this.options.memoryBytes + BASELINE_BYTES) / 2 ** 20),
          ...(this.options.streamed ? { streamed: true } : {}),
        });
        if ("refused" in plan) return void (await this.refuse(fingerprint, `its model ${plan.refused}`));
        // The process's own baseline is paid once, whatever the runs it serves.
        need = plan.peakBytes - BASELINE_BYTES;
        const referenceBytes = referenceBytesOf(plan, this.options.concurrency);
        setup = { ...setup, running: runningOf(plan, join(tmpdir(), `evosparse-worker-${process.pid}`, short(fingerprint))), ...(referenceBytes ? { referenceBytes } : {}) };
      } finally {
        checkpoint.close();
      }
    } catch (e) {
      return void (await this.refuse(fingerprint, `could not build its fitness model: ${(e as Error)?.message ?? String(e)}`));
    }
    if (need > this.options.memoryBytes) return void (await this.refuse(fingerprint, `its model needs about ${mib(need)}, more than this worker's --memory ${mib(this.options.memoryBytes)}`));
    return { record, path: own.path, setup, bytes: need };
  }

  private async join(fingerprint: string): Promise<void> {
    const accepted = await this.accepted(fingerprint);
    if (!accepted) return;
    const { record, path, setup, bytes: need } = accepted;
    // Runs beyond the memory wait for a search to end (its run is then left), rather than
    // evict a live run between two of its jobs and build it again for the next.
    if (this.held() + need > this.options.memoryBytes) {
      if (!this.waiting.has(fingerprint)) this.options.log(`run ${short(fingerprint)} waits: ${mib(this.held())} of --memory ${mib(this.options.memoryBytes)} is held by other runs`);
      this.waiting.set(fingerprint, accepted);
      return;
    }
    this.waiting.delete(fingerprint);
    let scorer: Scorer;
    try {
      scorer = await this.options.openScorer(setup, this.options.concurrency);
    } catch (e) {
      return this.refuse(fingerprint, `could not build its fitness model: ${(e as Error)?.message ?? String(e)}`);
    }
    const run: Run = {
      fingerprint,
      scorer,
      bytes: need,
      busy: 0,
      broken: false,
      worker: new Worker(queueName(fingerprint), (job) => this.process(run, job), {
        connection: this.redis,
        prefix: PREFIX,
        concurrency: this.options.concurrency,
        lockDuration: this.options.lockSeconds * 1000,
        stalledInterval: this.options.lockSeconds * 1000,
        // A job whose worker died goes back to the queue this many times before it fails.
        maxStalledCount: 3,
        name: this.options.name,
      }),
    };
    // Job failures are reported by `process`; connection errors by the outage watcher.
    run.worker.on("error", () => {});
    this.runs.set(fingerprint, run);
    const mode = record.structured ? `structured by ${record.structured.importance}` : `${record.metric} ${record.mode}, fitness ${record.fitness}`;
    this.options.log(`serving run ${short(fingerprint)}: ${path}, ${mode}, ${this.options.concurrency} at a time`);
  }

  private held(): number {
    let n = 0;
    for (const r of this.runs.values()) n += r.bytes;
    return n;
  }

  private async process(run: Run, job: Job): Promise<Fitness> {
    let data;
    try {
      data = decodeFitnessJob(job.data);
      if (data.fingerprint !== run.fingerprint) throw new Error(`job of run ${short(data.fingerprint)} on the queue of run ${short(run.fingerprint)}`);
    } catch (e) {
      this.options.log(`job ${job.id} rejected: ${(e as Error).message}`);
      // Retrying cannot make it decode.
      throw new UnrecoverableError((e as Error).message);
    }
    run.busy++;
    const start = performance.now();
    try {
      const fitness = await run.scorer.score(data.allocation, data.fidelity);
      const seconds = (performance.now() - start) / 1000;
      this.jobs++;
      const at = data.fidelity ? ` generation ${data.fidelity.generation} stage ${data.fidelity.stage}${data.fidelity.tokens ? ` (${data.fidelity.tokens} tokens)` : ""}` : "";
      this.options.log(`job ${job.id} run ${short(run.fingerprint)}${at}: ${fitness.ok ? `fitness ${fitness.value.toFixed(6)}` : `failed candidate (${fitness.error})`} in ${seconds.toFixed(2)} s`);
      return { ...fitness, seconds };
    } catch (e) {
      // Not the candidate's failure (that is a result): the job is retried, by BullMQ,
      // on a worker whose model works.
      run.broken = true;
      this.options.log(`job ${job.id} run ${short(run.fingerprint)}: the fitness model failed (${(e as Error)?.message ?? String(e)}); the job is given back`);
      throw e;
    } finally {
      run.busy--;
    }
  }

  private async leave(run: Run, why: string): Promise<void> {
    this.runs.delete(run.fingerprint);
    await run.worker.close();
    await run.scorer.close();
    this.options.log(`left run ${short(run.fingerprint)}: ${why}`);
  }

  /** Finishes the jobs in hand (BullMQ's close waits for them), then lets go of everything. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    // With Redis away, nothing can be finished or handed back: every command would wait
    // for it forever. The jobs in hand go back to the queue when their locks expire.
    if (this.redis.status !== "ready") {
      this.options.log("Redis is away: the jobs in hand cannot report their results; they go back to the queue when their locks expire");
      this.watch.stop();
      await Promise.allSettled([...this.runs.values()].map((run) => bounded(run.worker.close(true)).then(() => bounded(run.scorer.close()))));
      this.runs.clear();
      this.redis.disconnect();
      return;
    }
    await this.discovering;
    for (const run of [...this.runs.values()]) await this.leave(run, "the worker is stopping");
    this.watch.stop();
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`;
