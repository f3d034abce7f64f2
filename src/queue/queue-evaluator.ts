/**
 * Fitness on a job queue: the search's side. Each candidate becomes a BullMQ job on the
 * run's own queue, named by what it is (run fingerprint, allocation, fidelity), so a
 * resumed search finds results computed before it was killed; workers anywhere
 * (`evosparse worker --queue`) take the jobs and return fitnesses. A batch comes back in
 * the order it was given, as from the local evaluators.
 */
import { Job, Queue, QueueEvents } from "bullmq";
import type { Redis } from "ioredis";
import { Effect } from "effect";
import type { Fidelity, Fitness } from "../engine/genome.ts";
import { QueueError } from "../errors.ts";
import type { FitnessEvaluator } from "../search/evaluators.ts";
import type { BlockAllocation } from "../search/plugin.ts";
import type { QueueAddress } from "./address.ts";
import { HEARTBEAT_MS, KEEP_SECONDS, PREFIX, queueName, refusalsKey, SEARCHES_KEY, setupKey } from "./keys.ts";
import { decodeFitnessJob, decodeJobResult, jobIdOf, type FitnessJob } from "./records.ts";
import { openRedis, watchOutages } from "./redis.ts";

export interface QueueEvaluatorOptions {
  readonly address: QueueAddress;
  /** The run's setup record and its fingerprint. */
  readonly record: { readonly text: string; readonly fingerprint: string };
  /** Seconds Redis may be away before the search stops. */
  readonly timeoutSeconds: number;
  readonly log: (line: string) => void;
  /** What to say when the search stops for the queue (how to resume). */
  readonly after: string;
  /** The worker command that serves this run, for the hint when no worker answers. */
  readonly workerHint: string;
}

/** Attempts of a job whose worker failed (not a candidate's failure, which is a result). */
const ATTEMPTS = 3;
/** Pending jobs are looked up this often too: events are not kept across a Redis outage. */
const POLL_MS = 1000;
/** Without a single result for this long, say how to start a worker. */
const IDLE_HINT_MS = 15_000;

/** Waits for a clean-up step at most two seconds, whatever its outcome. */
const briefly = (step: Promise<unknown>): Promise<unknown> =>
  Promise.race([step.catch(() => {}), new Promise((done) => setTimeout(done, 2000).unref())]);

interface Pending {
  readonly data: FitnessJob;
  readonly waiters: Array<{ resolve: (f: Fitness) => void; reject: (e: unknown) => void }>;
}

/**
 * Why a finished job's record cannot be believed, or undefined: its payload is not the job
 * asked for, its result does not decode, or its value is one the measure cannot give (a
 * perplexity below 1, a KL divergence below 0).
 */
export const resultProblem = (data: unknown, result: unknown, asked: FitnessJob, measure: string): string | undefined => {
  let job: FitnessJob;
  try {
    job = decodeFitnessJob(data);
  } catch (e) {
    return `has a damaged payload (${(e as Error).message})`;
  }
  if (JSON.stringify([job.fingerprint, job.allocation, job.fidelity ?? null]) !== JSON.stringify([asked.fingerprint, asked.allocation, asked.fidelity ?? null])) {
    return "belongs to another candidate";
  }
  let fitness: Fitness;
  try {
    fitness = decodeJobResult(result);
  } catch (e) {
    return `is damaged (${(e as Error).message})`;
  }
  if (fitness.ok && (measure === "kl" ? fitness.value < 0 : fitness.value < 1)) return `is ${fitness.value}, which no ${measure === "kl" ? "KL divergence" : "perplexity"} can be`;
  return undefined;
};

class QueueClient {
  private readonly pending = new Map<string, Pending>();
  private readonly refusals = new Set<string>();
  private readonly timers: NodeJS.Timeout[] = [];
  private lastResult = Date.now();
  private hinted = false;

  private constructor(
    private readonly options: QueueEvaluatorOptions,
    private readonly redis: Redis,
    private readonly queue: Queue,
    private readonly events: QueueEvents,
    private readonly watch: ReturnType<typeof watchOutages>,
  ) {}

  static async open(options: QueueEvaluatorOptions): Promise<QueueClient> {
    const { fingerprint, text } = options.record;
    const redis = await openRedis(options.address, "evosparse-search");
    const queue = new Queue(queueName(fingerprint), { connection: redis, prefix: PREFIX });
    const eventsConnection = redis.duplicate();
    // Connection errors are the outage watcher's to report, in one line: never ioredis's raw ones.
    eventsConnection.on("error", () => {});
    const events = new QueueEvents(queueName(fingerprint), { connection: eventsConnection, prefix: PREFIX });
    events.on("error", () => {});
    queue.on("error", () => {});
    const watch = watchOutages(redis, options.address, options.timeoutSeconds, options.log, options.after);
    const client = new QueueClient(options, redis, queue, events, watch);
    try {
      await redis.set(setupKey(fingerprint), text, "EX", KEEP_SECONDS);
      await client.announce();
      await events.waitUntilReady();
    } catch (e) {
      await client.close();
      throw e;
    }
    events.on("completed", ({ jobId }) => void client.check(jobId));
    events.on("failed", ({ jobId }) => void client.check(jobId));
    client.timers.push(
      setInterval(() => void client.announce().catch(() => {}), HEARTBEAT_MS),
      setInterval(() => void client.poll().catch(() => {}), POLL_MS),
    );
    return client;
  }

  /** Tells workers the run is alive; puts its setup back if Redis lost it (a restart without persistence). */
  private async announce(): Promise<void> {
    const { fingerprint, text } = this.options.record;
    await this.redis.zadd(SEARCHES_KEY, Date.now(), fingerprint);
    await this.redis.set(setupKey(fingerprint), text, "EX", KEEP_SECONDS, "NX");
    const refusals = await this.redis.hgetall(refusalsKey(fingerprint));
    for (const [worker, why] of Object.entries(refusals)) {
      if (this.refusals.has(worker)) continue;
      this.refusals.add(worker);
      this.options.log(`queue: worker ${worker} refused this run: ${why}`);
    }
  }

  private async poll(): Promise<void> {
    // Pipelined by the client: one round trip's wait for the lot.
    await Promise.all([...this.pending.keys()].map((id) => this.check(id)));
    if (!this.hinted && this.pending.size > 0 && Date.now() - this.lastResult > IDLE_HINT_MS) {
      this.hinted = true;
      this.options.log(`queue: no result for ${IDLE_HINT_MS / 1000} s; is a worker running? ${this.options.workerHint}`);
    }
  }

  /** Settles a pending job if it has finished; adds it again if Redis lost it. */
  private async check(id: string): Promise<void> {
    const pending = this.pending.get(id);
    if (!pending) return;
    // The state first: once it is final the job's result is there to read (reading the
    // job first could see it unfinished and then call it completed).
    const state = await this.queue.getJobState(id);
    if (state === "unknown") {
      await this.add([[id, pending.data]]);
      return;
    }
    if (state !== "completed" && state !== "failed") return;
    const job = await Job.fromId(this.queue, id);
    // Another check settled it meanwhile (and the same candidate may be pending anew).
    if (this.pending.get(id) !== pending) return;
    this.pending.delete(id);
    this.lastResult = Date.now();
    const settle = (result: { fitness: Fitness } | { error: QueueError }) => {
      for (const w of pending.waiters) "fitness" in result ? w.resolve(result.fitness) : w.reject(result.error);
    };
    if (!job) return settle({ error: new QueueError({ problem: `job ${id} finished but was removed before its result was read` }) });
    if (state === "failed") return settle({ error: new QueueError({ problem: `job ${id} failed on every attempt: ${job.failedReason}` }) });
    // A finished record is checked before it is believed: it must be the job asked for, and
    // its result must decode and be a fitness this measure can give. Anything else (a
    // damaged or forged record, kept for days) is computed again, never an abort.
    const distrust = resultProblem(job.data, job.returnvalue, pending.data, this.measure);
    if (distrust !== undefined) {
      this.options.log(`queue: job ${id}'s stored result ${distrust}; computing it again`);
      await job.remove().catch(() => {});
      this.pending.set(id, pending);
      await this.add([[id, pending.data]]);
      return;
    }
    settle({ fitness: decodeJobResult(job.returnvalue) });
  }

  /** The run's fitness measure, from its setup record: what a plausible result is. */
  private get measure(): string {
    return this.measureOf ??= (() => {
      try {
        return (JSON.parse(this.options.record.text) as { fitness?: string }).fitness ?? "ppl";
      } catch {
        return "ppl";
      }
    })();
  }
  private measureOf: string | undefined;

  private add(jobs: ReadonlyArray<readonly [string, FitnessJob]>) {
    return this.queue.addBulk(
      jobs.map(([jobId, data]) => ({
        name: "fitness",
        data,
        opts: { jobId, attempts: ATTEMPTS, backoff: { type: "fixed", delay: 1000 }, removeOnComplete: { age: KEEP_SECONDS }, removeOnFail: { age: KEEP_SECONDS } },
      })),
    );
  }

  async evaluate(batch: readonly BlockAllocation[], fidelity: Fidelity | undefined): Promise<readonly Fitness[]> {
    const fingerprint = this.options.record.fingerprint;
    const fresh: Array<readonly [string, FitnessJob]> = [];
    const results = batch.map((allocation) => {
      const id = jobIdOf(fingerprint, allocation, fidelity);
      let pending = this.pending.get(id);
      if (!pending) {
        pending = { data: { fingerprint, allocation: [...allocation], ...(fidelity ? { fidelity } : {}) }, waiters: [] };
        this.pending.set(id, pending);
        fresh.push([id, pending.data]);
      }
      const waiters = pending.waiters;
      return new Promise<Fitness>((resolve, reject) => waiters.push({ resolve, reject }));
    });
    // Jobs already known to Redis (a resumed run's) are not added again: their results are read.
    await Promise.race([this.add(fresh), this.watch.gaveUp]);
    this.lastResult = Date.now();
    for (const [id] of fresh) void this.check(id).catch(() => {});
    return Promise.race([Promise.all(results), this.watch.gaveUp]);
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.watch.stop();
    // Redis may be the reason the search stops: its commands would wait for it forever.
    await briefly(this.redis.zrem(SEARCHES_KEY, this.options.record.fingerprint));
    await briefly(Promise.allSettled([this.events.close(), this.queue.close()]));
    this.redis.disconnect();
  }
}

/** The queue as a FitnessEvaluator, for the scope of a search. */
export const queueEvaluator = (options: QueueEvaluatorOptions) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => QueueClient.open(options),
      catch: (e) => (e instanceof QueueError ? e : new QueueError({ problem: (e as Error)?.message ?? String(e) })),
    }),
    (client) => Effect.promise(() => client.close()),
  ).pipe(
    Effect.map(
      (client): FitnessEvaluator => ({
        workers: 1,
        evaluate: (batch, fidelity) =>
          Effect.tryPromise({
            try: () => client.evaluate(batch, fidelity),
            catch: (e) => (e instanceof QueueError ? e : new QueueError({ problem: (e as Error)?.message ?? String(e) })),
          }),
      }),
    ),
  );
