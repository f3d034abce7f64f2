/**
 * The evosparse command line: its commands, global options and failure handling, built
 * once here so the bin and the tests parse arguments the same way.
 */
import yargs, { type Argv, type CommandModule } from "yargs";
import { BACKEND_CHOICES } from "../backend/backend.ts";
import { UsageError } from "../errors.ts";
import { loadArchitectures } from "../checkpoint/architectures/index.ts";
import { evalCommand } from "./eval.ts";
import { pruneCommand } from "./prune.ts";
import { reportFailure, setVerbose } from "./run.ts";
import { searchCommand } from "./search.ts";
import { startCommand } from "./start.ts";
import { statsCommand } from "./stats.ts";
import { trainCommand } from "./train.ts";
import { workerCommand } from "./worker.ts";

/**
 * A yargs validation message on one line, a refused choice worded as the settings' own checks
 * word it (`--mode "weird" is not one of dense, sequential`), so the CLI and the API say the same.
 */
const yargsProblem = (message: string): string => {
  const choices = [...message.matchAll(/Argument: ([\w-]+), Given: (.*?), Choices: (.*)/g)];
  if (choices.length > 0) {
    return choices.map(([, flag, given, list]) => `--${flag} ${given!.trim()} is not one of ${list!.replace(/"/g, "").trim()}`).join("; ");
  }
  return message.replace(/\s*\n\s*/g, " ").trim();
};

export const COMMANDS = [evalCommand, startCommand, trainCommand, statsCommand, pruneCommand, searchCommand, workerCommand] as const;

export interface ProgramOptions {
  /** Replaces every command's handler (tests read the parsed flags without running a job). */
  readonly handler?: (command: string, argv: Record<string, unknown>) => void;
  /** Called on a usage failure instead of exiting the process. */
  readonly onFailure?: (error: unknown) => void;
}

export const program = (args: readonly string[], options: ProgramOptions = {}): Argv => {
  let cli = yargs([...args])
    .scriptName("evosparse")
    .usage("$0 <command> [options]\n\nDecide how sparse each layer of a language model should be, and prove it by perplexity.")
    .option("backend", { choices: BACKEND_CHOICES, default: "auto" as const, describe: "tfjs backend (auto: a hardware GPU through tensorflow-gpu or webgpu, then native, tensorflow, wasm, cpu)", global: true })
    .option("verbose", { type: "boolean", default: false, describe: "show stack traces on errors", global: true })
    .option("architecture", {
      type: "string",
      array: true,
      requiresArg: true,
      global: true,
      describe: "a module (.ts, .mts, .mjs file or package) exporting `architecture`: the record of a config.json model_type evosparse does not know",
    })
    // Numbers are parsed by each option (src/cli/flags.ts), so a refused value is shown as typed.
    .parserConfiguration({ "parse-numbers": false })
    .middleware((argv) => setVerbose(Boolean(argv.verbose)))
    // Architecture records are registered before any command opens a checkpoint.
    .middleware(async (argv) => {
      const specs = (argv.architecture as string[] | undefined) ?? [];
      if (specs.length === 0 || options.handler) return;
      try {
        await loadArchitectures(specs);
      } catch (error) {
        reportFailure(error);
        process.exit();
      }
    })
  for (const command of COMMANDS) {
    const handler = options.handler;
    cli = cli.command((handler ? { ...command, handler: (argv: Record<string, unknown>) => handler(command.command, argv) } : command) as unknown as CommandModule);
  }
  return cli
    .demandCommand(1, "name a command (see --help)")
    .strict()
    .recommendCommands()
    .fail((message, error) => {
      // yargs reports its own validation failures as YError, and option coercions throw
      // our UsageError: both are usage errors (exit 2).
      const usage = !error || error.name === "YError";
      const failure = usage ? new UsageError({ problem: `${yargsProblem(message ?? error?.message ?? "")} (see --help)` }) : error;
      if (options.onFailure) return options.onFailure(failure);
      reportFailure(failure);
      // yargs would otherwise go on to run the command with the rejected arguments.
      process.exit();
    })
    .help();
};
