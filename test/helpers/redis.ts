/**
 * A redis-server of the test's own on a free loopback port, stopped after the file's tests;
 * absent binary: the tests that need it skip with a message (CI installs Debian's
 * redis-server, so nothing is skipped there).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

const waitReady = async (cli: readonly string[]): Promise<void> => {
  for (let i = 0; i < 100; i++) {
    const r = spawnSync("redis-cli", [...cli, "ping"], { encoding: "utf8" });
    if (r.stdout.trim() === "PONG") return;
    await new Promise((d) => setTimeout(d, 100));
  }
  throw new Error(`redis-server (${cli.join(" ")}) did not start`);
};

/** Why a TLS server cannot be made here (openssl writes its certificates), or undefined. */
export const opensslMissing: string | undefined = spawnSync("openssl", ["version"]).status === 0 ? undefined : "openssl is not installed";

/**
 * A certificate authority and a server certificate for 127.0.0.1 in `dir`: ca.pem (what
 * clients trust, through NODE_EXTRA_CA_CERTS), server.pem and server.key.
 */
const writeCertificates = (dir: string): void => {
  const openssl = (...args: string[]) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
  };
  openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=evosparse test CA");
  openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1");
  writeFileSync(join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf");
};

/** With `tls`, the server speaks only TLS (rediss://) and `ca` is the file clients must trust. */
export const startTestRedis = async (options: { readonly tls?: boolean } = {}): Promise<TestRedis & { readonly ca?: string }> => {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "evosparse-redis-"));
  if (options.tls) writeCertificates(dir);
  const listen = options.tls
    ? ["--port", "0", "--tls-port", String(port), "--tls-cert-file", join(dir, "server.pem"), "--tls-key-file", join(dir, "server.key"), "--tls-ca-cert-file", join(dir, "ca.pem"), "--tls-auth-clients", "no"]
    : ["--port", String(port)];
  const cli = options.tls ? ["--tls", "--cacert", join(dir, "ca.pem"), "-p", String(port)] : ["-p", String(port)];
  let server: ChildProcess | undefined;
  const clients: Redis[] = [];
  const start = async () => {
    server = spawn("redis-server", [...listen, "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    await waitReady(cli);
  };
  const stop = async () => {
    if (!server) return;
    const exited = new Promise((d) => server!.once("exit", d));
    spawnSync("redis-cli", [...cli, "shutdown", "save"]);
    await exited;
    server = undefined;
  };
  await start();
  return {
    url: `${options.tls ? "rediss" : "redis"}://127.0.0.1:${port}`,
    port,
    ...(options.tls ? { ca: join(dir, "ca.pem") } : {}),
    client: () => {
      const c = new Redis(port, "127.0.0.1", { maxRetriesPerRequest: null, ...(options.tls ? { tls: { ca: readFileSync(join(dir, "ca.pem")) } } : {}) });
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
