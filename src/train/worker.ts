/**
 * One data-parallel training worker: its own tfjs backend and a full copy of the model.
 * It computes gradients on its share of each batch; the coordinator sums the shares in a
 * fixed order and every worker applies the same AdamW update, so all copies stay equal.
 */
import { parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { initBackend, type BackendChoice } from "../backend/backend.ts";
import { loadArchitecturesFromEnvironment } from "../checkpoint/architectures/index.ts";
import { Decoder } from "../model/decoder.ts";
import type { HostBlock, HostGlobals, ModelSpec } from "../model/spec.ts";
import { serve } from "../workers/spawn.ts";
import { AdamW, type AdamWOptions } from "./adamw.ts";

export interface WorkerInit {
  readonly spec: ModelSpec;
  readonly globals: HostGlobals;
  readonly blocks: HostBlock[];
  readonly adamw: AdamWOptions;
  readonly backend: BackendChoice;
  /** Workers computing at the same time: the native backend gives each its share of the cores. */
  readonly share: number;
  readonly parameters?: Float32Array[];
  readonly optimizer?: { step: number; m: Float32Array[]; v: Float32Array[] };
}

export type WorkerRequest =
  | { kind: "grads"; ids: Int32Array; targets: Int32Array; batch: number; seqlen: number }
  | { kind: "apply"; grads: Float32Array[]; lr: number }
  | { kind: "nll"; windows: Array<{ ids: Int32Array; targets: Int32Array }> }
  | { kind: "state" };

const init = workerData.data as WorkerInit;
await loadArchitecturesFromEnvironment();
const backend = await initBackend(init.backend, { share: init.share });
const spec = init.spec;
const decoder = Decoder.create(spec, init.globals, { numBlocks: spec.numLayers, load: (i) => init.blocks[i]! }, { trainable: true });
const names = [...decoder.parameters().keys()];
const params = [...decoder.parameters().values()] as tf.Variable[];
if (init.parameters) params.forEach((p, i) => p.assign(tf.tensor(init.parameters![i]!, p.shape)));
const optimizer = new AdamW(params, init.adamw);
if (init.optimizer) optimizer.setState(init.optimizer);

// Reads are asynchronous: GPU backends have no synchronous ones.
const copy = async (t: tf.Tensor): Promise<Float32Array> => Float32Array.from((await t.data()) as Float32Array);

await serve(parentPort!, async (m: WorkerRequest) => {
  switch (m.kind) {
    case "grads": {
      const { value, grads } = tf.variableGrads(() => decoder.lossTensor(m.ids, m.targets, m.batch, m.seqlen), params);
      let loss: number;
      let out: Float32Array[];
      try {
        loss = (await value.data())[0]!;
        out = await Promise.all(params.map((p) => copy(grads[p.name]!)));
      } finally {
        value.dispose();
        tf.dispose(Object.values(grads));
      }
      return { value: { loss, grads: out }, transfer: out.map((g) => g.buffer as ArrayBuffer) };
    }
    case "apply": {
      const tensors = m.grads.map((g, i) => tf.tensor(g, params[i]!.shape));
      let gradNorm: number;
      try {
        gradNorm = await optimizer.apply(tensors, m.lr);
      } finally {
        tf.dispose(tensors);
      }
      return { value: { gradNorm } };
    }
    case "nll": {
      let nll = 0;
      let count = 0;
      for (const w of m.windows) {
        const r = await decoder.nll(w.ids, w.targets, 1, w.ids.length);
        nll += r.nll;
        count += r.count;
      }
      return { value: { nll, count } };
    }
    case "state": {
      const state = await optimizer.getState();
      return { value: { backend: backend.name, names, shapes: params.map((p) => p.shape), parameters: await Promise.all(params.map(copy)), ...state } };
    }
  }
});
