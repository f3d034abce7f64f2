import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { defaultModel } from "../defaults.ts";
import { workerJob } from "../jobs/worker.ts";
import { numberOption, WHOLE_POSITIVE } from "./flags.ts";
import { runCommand } from "./run.ts";

export interface WorkerArgs {
  streamed: boolean;
  queue: string;
  model: string[];
  concurrency: number;
  memory?: number;
  lockSeconds: number;
  backend: BackendChoice;
}

/** Resolves on the first SIGINT or SIGTERM; a second one exits at once. */
const stopSignal = (): Promise<void> =>
  new Promise((resolve) => {
    let asked = false;
    const onSignal = () => {
      if (asked) process.exit(130);
      asked = true;
      resolve();
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });

export const workerCommand = {
  command: "worker",
  describe: "Score fitness jobs from a job queue for searches run with --queue (any number of machines; stops cleanly on SIGINT/SIGTERM)",
  builder: (y: Argv) =>
    y
      .option("queue", { type: "string", demandOption: true, requiresArg: true, describe: "Redis of the queue: redis://[user:password@]host:port[/db], rediss:// for TLS" })
      .option("model", { type: "string", array: true, default: [defaultModel()], describe: "model copies this worker serves (a search's model must be byte-identical to one of them)" })
      .option("concurrency", numberOption("concurrency", { ...WHOLE_POSITIVE, default: 1, describe: "jobs scored at once, each on its own worker thread with its own model copy" }))
      .option("memory", numberOption("memory", { ...WHOLE_POSITIVE, describe: "MiB the served runs' models may hold together (default: 80% of the memory free at start)" }))
      .option("lock-seconds", numberOption("lock-seconds", { ...WHOLE_POSITIVE, default: 30, describe: "a job whose worker stops answering for this long is given to another worker" }))
      .option("streamed", { type: "boolean", default: false, describe: "use as little memory as each run allows, even where more would fit (the results are the same)" }),
  handler: async (argv: WorkerArgs) => {
    await runCommand(
      workerJob({
        queue: argv.queue,
        models: argv.model,
        concurrency: argv.concurrency,
        ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
        lockSeconds: argv.lockSeconds,
        streamed: argv.streamed,
        backend: argv.backend,
        log: (line) => process.stderr.write(line + "\n"),
        until: stopSignal(),
      }),
    );
    // Worker threads and sockets are closed; nothing else should keep the process.
    process.exit();
  },
};
