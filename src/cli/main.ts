import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { BACKEND_CHOICES } from "../backend/backend.ts";
import { evalCommand } from "./eval.ts";
import { startCommand } from "./start.ts";
import { trainCommand } from "./train.ts";
import { statsCommand } from "./stats.ts";
import { pruneCommand } from "./prune.ts";
import { searchCommand } from "./search.ts";
import { reportFailure, setVerbose } from "./run.ts";
import { UsageError } from "../errors.ts";

await yargs(hideBin(process.argv))
  .scriptName("evosparse")
  .usage("$0 <command> [options]\n\nDecide how sparse each layer of a language model should be, and prove it by perplexity.")
  .option("backend", { choices: BACKEND_CHOICES, default: "auto" as const, describe: "tfjs backend (auto: tensorflow-gpu, tensorflow, wasm, then cpu)", global: true })
  .option("verbose", { type: "boolean", default: false, describe: "show stack traces on errors", global: true })
  .middleware((argv) => setVerbose(Boolean(argv.verbose)))
  .command(evalCommand as never)
  .command(startCommand as never)
  .command(trainCommand as never)
  .command(statsCommand as never)
  .command(pruneCommand as never)
  .command(searchCommand as never)
  .demandCommand(1, "name a command (see --help)")
  .strict()
  .recommendCommands()
  .fail((message, error) => {
    // yargs reports its own validation failures as YError: those are usage errors (exit 2).
    const usage = !error || error.name === "YError";
    reportFailure(usage ? new UsageError({ problem: `${message ?? error?.message} (see --help)` }) : error);
    // yargs would otherwise go on to run the command with the rejected arguments.
    process.exit();
  })
  .help()
  .parseAsync();
