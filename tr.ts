import { train } from "./src/train/train.ts";
const [dim, layers, heads, kv, ffn, batch, seqlen] = process.argv.slice(2).map(Number);
let r; try { r = await train({ data: "brown:train", validation: "brown:validation", out: "/tmp/trainprobe", size: { hiddenSize: dim, numLayers: layers, numHeads: heads, numKvHeads: kv, intermediateSize: ffn, contextLength: 512 },
  steps: 12, batch, seqlen, lr: 3e-3, warmupSteps: 5, weightDecay: 0.1, seed: 0, evalEvery: 0, evalWindows: 4, backend: "wasm",
  onStart: (i) => console.log(i), onStep: (s) => console.log(s.step, s.trainLoss.toFixed(3), s.seconds.toFixed(2)) }); } catch (e) { console.log((e as Error).stack?.split("\n").slice(0, 14).join("\n")); process.exit(1); }
const per = (r.log.at(-1)!.seconds - r.log[1]!.seconds) / (r.log.length - 2);
console.log("s/step", per.toFixed(3), "tokens/s", (batch * seqlen / per).toFixed(0), "params", r.parameters);
