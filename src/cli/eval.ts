import type { Argv } from "yargs";
import type { BackendChoice } from "../backend/backend.ts";
import { TEXT_FORMATS, type TextFormat } from "../data/text-source.ts";
import { evaluate } from "../jobs/eval.ts";
import { defaultData, defaultModel } from "../defaults.ts";
import { startProgress, type Progress } from "./progress.ts";
import { runCommand } from "./run.ts";
import { memoryOptions, numberOption, SEQLEN, WHOLE_POSITIVE } from "./flags.ts";

export const evalCommand = {
  command: "eval",
  describe: "Measure a model's perplexity on a text",
  builder: (y: Argv) =>
    memoryOptions(y)
      .option("model", { type: "string", describe: "Hugging Face folder, llama2.c .bin, or a folder holding one", default: defaultModel() })
      .option("tokenizer", { type: "string", describe: "tokenizer file (overrides the one beside the checkpoint)" })
      // Named as prune and search name them (--eval, --eval-format, --eval-windows); the first names stay as aliases.
      .option("eval", { alias: "data", type: "string", describe: "evaluation text", default: defaultData("test") })
      .option("eval-format", { alias: "format", choices: TEXT_FORMATS, default: "text" as TextFormat, describe: "text: one stream; jsonl: documents joined with blank lines; stories: each story on its own" })
      .option("field", { type: "string", default: "text", describe: "jsonl field holding the text" })
      .option("seqlen", numberOption("seqlen", { ...SEQLEN, describe: "window length (default: the model's context)" }))
      .option("bos", { type: "boolean", default: false, describe: "put BOS in front of each window" })
      .option("eval-windows", { alias: "max-windows", ...numberOption("eval-windows", { ...WHOLE_POSITIVE, describe: "score at most this many windows (default: all)" }) })
      .option("batch", numberOption("batch", { ...WHOLE_POSITIVE, default: 1, describe: "windows per forward pass" }))
      .option("json", { type: "boolean", default: false, describe: "print one JSON object" }),
  handler: async (argv: {
    model: string;
    tokenizer?: string;
    eval: string;
    evalFormat: TextFormat;
    field: string;
    seqlen?: number;
    bos: boolean;
    evalWindows?: number;
    batch: number;
    streamed: boolean;
    memory?: number;
    json: boolean;
    backend: BackendChoice;
  }) => {
    let progress: Progress | undefined;
    const report = await runCommand(
      evaluate({
        model: argv.model,
        data: argv.eval,
        format: argv.evalFormat,
        field: argv.field,
        bos: argv.bos,
        backend: argv.backend,
        streamed: argv.streamed,
        ...(argv.memory !== undefined ? { memoryMib: argv.memory } : {}),
        batch: argv.batch,
        ...(argv.tokenizer ? { tokenizer: argv.tokenizer } : {}),
        ...(argv.seqlen !== undefined ? { seqlen: argv.seqlen } : {}),
        ...(argv.evalWindows !== undefined ? { maxWindows: argv.evalWindows } : {}),
        onStart: ({ windows, seqlen, backendDescription, memory }) => {
          if (!argv.json) process.stderr.write(`backend: ${backendDescription}; ${windows} windows of ${seqlen} tokens\n${memory}\n`);
          progress = startProgress("eval", windows, { quiet: argv.json });
        },
        onProgress: (done) => progress?.update(done),
      }),
    );
    progress?.stop();
    if (!report) return;
    if (argv.json) {
      const { ppl, nll, tokens, windows, seqlen, backend, seconds, tokensPerSecond, bytes, pplPerByte, memory } = report;
      process.stdout.write(JSON.stringify({ ppl, nll, tokens, windows, seqlen, backend, seconds, tokensPerSecond, bytes, pplPerByte, memory }) + "\n");
    } else {
      process.stdout.write(
        `perplexity ${report.ppl.toFixed(4)} (nll ${report.nll.toFixed(4)}) on ${report.tokens} tokens in ${report.windows} windows of ${report.seqlen}; ` +
          (report.pplPerByte !== undefined ? `per byte ${report.pplPerByte.toFixed(4)}; ` : "") +
          `${report.seconds.toFixed(1)} s, ${report.tokensPerSecond.toFixed(0)} tokens/s on ${report.backend}\n`,
      );
    }
  },
};
