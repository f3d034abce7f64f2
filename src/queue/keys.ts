/**
 * Where a search lives in Redis. Each run (fingerprint) has its own BullMQ queue, so a
 * worker only ever takes jobs of runs it has checked it can serve.
 */

/** BullMQ's key prefix for evosparse's queues. */
export const PREFIX = "evosparse";

/** Runs looking for workers: fingerprint -> the time of the search's last heartbeat (ms). */
export const SEARCHES_KEY = `${PREFIX}:searches`;

/** The setup record of a run, stored by the search. */
export const setupKey = (fingerprint: string): string => `${PREFIX}:setup:${fingerprint}`;

/** Workers that refused a run: worker name -> why. */
export const refusalsKey = (fingerprint: string): string => `${PREFIX}:refusals:${fingerprint}`;

export const queueName = (fingerprint: string): string => `fitness-${fingerprint}`;

/** How often a search says it is alive, and how long after its last word a worker lets it go. */
export const HEARTBEAT_MS = 2000;
export const SEARCH_GONE_MS = 30_000;

/** How long a run's records and finished jobs stay in Redis (a resumed search finds them). */
export const KEEP_SECONDS = 7 * 24 * 3600;
