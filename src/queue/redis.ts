/**
 * One Redis connection for BullMQ: opened with a clear one-line error when the server is
 * unreachable, and watched afterwards so that an outage pauses the work with a message and
 * fails it only after a timeout.
 */
import { Redis } from "ioredis";
import { QueueError } from "../errors.ts";
import { databaseOf, type QueueAddress } from "./address.ts";

/** How long the first connection may take before the address is called unreachable. */
const CONNECT_SECONDS = 5;

const reason = (e: unknown): string => {
  const error = e as { code?: string; message?: string };
  return error?.code ?? error?.message ?? String(e);
};

/**
 * Connects and waits until Redis answers. BullMQ needs `maxRetriesPerRequest: null`:
 * commands issued during an outage wait for the reconnection instead of failing.
 */
export const openRedis = async (address: QueueAddress, name: string): Promise<Redis> => {
  await checkDatabase(address);
  const redis = new Redis(address.url, {
    maxRetriesPerRequest: null,
    lazyConnect: true,
    connectionName: name,
    connectTimeout: CONNECT_SECONDS * 1000,
    // Reconnect forever, at most every two seconds: an outage is judged by the watcher.
    retryStrategy: (times) => Math.min(200 * times, 2000),
  });
  // ioredis reports every failed reconnection as an error event; the watcher reports
  // outages. The first one says why a connection failed ("Connection is closed" does not).
  let first: unknown;
  redis.on("error", (e) => (first ??= e));
  try {
    await redis.connect();
    await redis.ping();
    return redis;
  } catch (e) {
    redis.disconnect();
    throw new QueueError({ problem: `Redis at ${address.shown} is unreachable (${reason(first ?? e)})` });
  }
};

/**
 * A database index the server does not have is one line before any real connection: left
 * to the client, the failed SELECT is a stack trace, the connection stays on database 0
 * and the work waits forever.
 */
const checkDatabase = async (address: QueueAddress): Promise<void> => {
  const db = databaseOf(address);
  if (db === 0) return;
  const url = new URL(address.url);
  url.pathname = "";
  const probe = new Redis(url.href, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: CONNECT_SECONDS * 1000, retryStrategy: () => null });
  probe.on("error", () => {});
  try {
    await probe.connect();
  } catch (e) {
    probe.disconnect();
    throw new QueueError({ problem: `Redis at ${address.shown} is unreachable (${reason(e)})` });
  }
  try {
    await probe.select(db);
  } catch (e) {
    throw new QueueError({ problem: `Redis at ${address.shown} has no database ${db} (${reason(e)}); use a database index the server has (0 to its "databases" setting less one)` });
  } finally {
    probe.disconnect();
  }
};

export interface OutageWatch {
  /** Rejects once Redis has been away for longer than the timeout (never resolves otherwise). */
  readonly gaveUp: Promise<never>;
  stop(): void;
}

/**
 * Reports when Redis goes away and when it is back; after `timeoutSeconds` away (never
 * when undefined), `gaveUp` rejects with a message ending in `after`.
 */
export const watchOutages = (redis: Redis, address: QueueAddress, timeoutSeconds: number | undefined, log: (line: string) => void, after = ""): OutageWatch => {
  let timer: NodeJS.Timeout | undefined;
  let away = false;
  let reject: (e: unknown) => void = () => {};
  const gaveUp = new Promise<never>((_, r) => {
    reject = r;
  });
  // Nobody may be waiting on it when it rejects.
  gaveUp.catch(() => {});
  const lost = () => {
    if (away) return;
    away = true;
    log(`queue: lost Redis at ${address.shown}; waiting ${timeoutSeconds === undefined ? "" : `up to ${timeoutSeconds} s `}for it to return`);
    if (timeoutSeconds === undefined) return;
    timer = setTimeout(() => reject(new QueueError({ problem: `Redis at ${address.shown} was away for ${timeoutSeconds} s; ${after}` })), timeoutSeconds * 1000);
  };
  const back = () => {
    if (!away) return;
    away = false;
    clearTimeout(timer);
    log(`queue: Redis at ${address.shown} is back; continuing`);
  };
  redis.on("close", lost);
  redis.on("ready", back);
  return {
    gaveUp,
    stop: () => {
      clearTimeout(timer);
      redis.off("close", lost);
      redis.off("ready", back);
    },
  };
};
