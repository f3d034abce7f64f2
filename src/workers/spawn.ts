import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";

/**
 * The module a worker runs: the TypeScript file from source, its compiled JavaScript beside
 * it in an installed package (where no .ts file is shipped).
 */
export const workerModule = (entry: URL): URL => {
  if (!entry.pathname.endsWith(".ts") || existsSync(fileURLToPath(entry))) return entry;
  const compiled = new URL(entry.href.replace(/\.ts$/, ".js"));
  return existsSync(fileURLToPath(compiled)) ? compiled : entry;
};

/** A worker thread running a TypeScript (or compiled) module; `data` reaches it as workerData.data. */
export const spawnTsWorker = (entry: URL, data: unknown): Worker =>
  new Worker(new URL("./bootstrap.mjs", import.meta.url), { workerData: { entry: workerModule(entry).href, data } });

/**
 * Request/response over a worker's message port: one request in flight per worker, replies
 * matched in order. A worker that errors or exits rejects what is pending.
 */
export class WorkerChannel {
  private pending: Array<{ resolve: (v: unknown) => void; reject: (e: unknown) => void }> = [];

  constructor(readonly worker: Worker) {
    worker.on("message", (m: { ok: boolean; value?: unknown; error?: string }) => {
      const p = this.pending.shift();
      if (!p) return;
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(m.error));
    });
    const failAll = (e: unknown) => {
      for (const p of this.pending.splice(0)) p.reject(e);
    };
    worker.on("error", failAll);
    worker.on("exit", (code) => failAll(new Error(`worker exited with code ${code}`)));
  }

  request<T>(message: unknown, transfer: ArrayBuffer[] = []): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage(message, transfer);
    });
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }
}

/** Serves requests inside a worker: each message is handled in turn, errors are sent back. */
export const serve = async <M>(
  port: import("node:worker_threads").MessagePort,
  handle: (m: M) => Promise<{ value: unknown; transfer?: ArrayBuffer[] }>,
) => {
  let queue = Promise.resolve();
  port.on("message", (m: M) => {
    queue = queue.then(async () => {
      try {
        const { value, transfer } = await handle(m);
        port.postMessage({ ok: true, value }, transfer ?? []);
      } catch (e) {
        port.postMessage({ ok: false, error: (e as Error)?.message ?? String(e) });
      }
    });
  });
};
