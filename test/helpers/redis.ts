/**
 * A redis-server of the test's own on a free loopback port, stopped after the file's tests;
 * absent binary: the tests that need it skip with a message (CI installs Debian's
 * redis-server, so nothing is skipped there).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";

const probe = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
/** Why the Redis tests cannot run here, or undefined. */
export const redisMissing: string | undefined = probe.status === 0 ? undefined : "redis-server is not installed (Debian package redis-server)";

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });

export interface TestRedis {
  readonly url: string;
  readonly port: number;
  /** A client for the test's own checks. */
  client(): Redis;
  /** Saves to disk and stops the server (an outage that loses nothing). */
  stop(): Promise<void>;
  /** Starts it again on the same port from the saved data. */
  start(): Promise<void>;
  /** Stops it for good and removes its folder. */
  dispose(): Promise<void>;
}

const waitReady = async (port: number): Promise<void> => {
  for (let i = 0; i < 100; i++) {
    const r = spawnSync("redis-cli", ["-p", String(port), "ping"], { encoding: "utf8" });
    if (r.stdout.trim() === "PONG") return;
    await new Promise((d) => setTimeout(d, 100));
  }
  throw new Error(`redis-server on port ${port} did not start`);
};

export const startTestRedis = async (): Promise<TestRedis> => {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "evosparse-redis-"));
  let server: ChildProcess | undefined;
  const clients: Redis[] = [];
  const start = async () => {
    server = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    await waitReady(port);
  };
  const stop = async () => {
    if (!server) return;
    const exited = new Promise((d) => server!.once("exit", d));
    spawnSync("redis-cli", ["-p", String(port), "shutdown", "save"]);
    await exited;
    server = undefined;
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    client: () => {
      const c = new Redis(port, "127.0.0.1", { maxRetriesPerRequest: null });
      // The outage test stops the server under it.
      c.on("error", () => {});
      clients.push(c);
      return c;
    },
    stop,
    start,
    dispose: async () => {
      for (const c of clients) c.disconnect();
      if (server) {
        const exited = new Promise((d) => server!.once("exit", d));
        server.kill("SIGKILL");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
};
