import type { BackendChoice } from "../backend/backend.ts";
import { defaultData, defaultModel, resultsDir } from "../defaults.ts";
import { evaluate } from "../eval/evaluate.ts";
import { startProgress, type Progress } from "./progress.ts";
import { runCommand } from "./run.ts";

/** The first-run job: measure the embedded model on its held-out test text. */
export const startCommand = {
  command: "start",
  describe: "Run the main job on the embedded default model",
  builder: {},
  handler: async (argv: { backend: BackendChoice }) => {
    let progress: Progress | undefined;
    const report = await runCommand(
      evaluate({
        model: defaultModel(),
        data: defaultData("test"),
        format: "text",
        backend: argv.backend,
        onStart: ({ windows, seqlen, backendDescription }) => {
          process.stderr.write(`evaluating the embedded model on the Brown test part: ${windows} windows of ${seqlen} tokens\nbackend: ${backendDescription}\n`);
          progress = startProgress("eval", windows);
        },
        onProgress: (done) => progress?.update(done),
      }),
    );
    progress?.stop();
    if (!report) return;
    process.stdout.write(
      `embedded model, Brown test part: perplexity ${report.ppl.toFixed(3)} per token, ${report.pplPerByte?.toFixed(3) ?? "?"} per byte ` +
        `(${report.tokens} tokens, ${report.bytes ?? "?"} bytes, seqlen ${report.seqlen}, ${report.seconds.toFixed(1)} s on ${report.backend})\n` +
        `search runs write their results to ${resultsDir()}/<method>-<timestamp>/\n`,
    );
  },
};
