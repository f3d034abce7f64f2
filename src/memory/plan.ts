/**
 * Memory is planned, never hit. Before any work a run's peak is estimated from the
 * checkpoint's headers (the model's sizes, the file's dtype) and the settings, part by
 * part, and the cheapest way of running that fits is chosen: every block resident on the
 * backend when the model fits (fastest), else streamed block by block from the file; then,
 * if that is still too much, the head uploaded per pass, the calibration hidden states on
 * the host, pruned blocks and mask ranks in a scratch folder. A run that cannot fit is
 * refused in one line with the numbers and what would make it fit.
 *
 * The wasm heap, on which the wasm and native backends compute, holds at most 4 GiB and a
 * failed allocation there ends the process: what lives on it is planned against that limit
 * as well as against the machine's memory.
 */
import type { ModelSpec } from "../model/spec.ts";
import { linearShapes } from "../model/spec.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** What a process holds before any model: Node, TensorFlow.js, the wasm module, the tokenizer. */
export const BASELINE_BYTES = 280 * MiB;
/** What a worker thread holds before its model: its own V8 isolate, TensorFlow.js and wasm module. */
export const THREAD_BYTES = 160 * MiB;
/** The most the wasm heap can hold (wasm32), less room for the allocator's own fragmentation. */
export const WASM_HEAP_BYTES = 4 * GiB;
const HEAP_USABLE = 0.85;
/** Largest head chunk kept on the backend (model/head.ts's HEAD_CHUNK_BYTES). */
const HEAD_CHUNK_BYTES = 512 * MiB;
/** Hidden states a pass holds by default (model/decoder.ts). */
const PASS_BYTES = 256 * MiB;
/** Pruned blocks and ranks larger than this wait on disk whatever the budget. */
const SPILL_BYTES = 512 * MiB;
/** Weights sampled per block for DSA and MRP (prune/dense-statistics.ts). */
const SAMPLE_WEIGHTS = 2 ** 19;

/** The part that bounds the KL fitness's dense reference (its least recently used windows go first). */
export const KL_REFERENCE_PART = "dense reference (KL)";

/** The model's sizes, from its spec and the file's dtype: everything the plan needs. */
export interface ModelSizes {
  /** Weights of each block (linears, their biases, the norms). */
  readonly blocks: readonly number[];
  /** Prunable weights of each block. */
  readonly prunable: readonly number[];
  readonly largestLinear: number;
  /** Distinct linear inputs of the widest block: their widths (for Hessians). */
  readonly inputWidths: readonly number[];
  readonly head: number;
  readonly embedDim: number;
  readonly hidden: number;
  readonly ffn: number;
  readonly vocab: number;
  readonly bytesPerWeight: number;
}

export const modelSizes = (spec: ModelSpec, bytesPerWeight: number): ModelSizes => {
  const blocks: number[] = [];
  const prunable: number[] = [];
  let largestLinear = 0;
  let ffn = 0;
  let inputWidths: number[] = [];
  let widest = -1;
  for (let i = 0; i < spec.numLayers; i++) {
    const shapes = linearShapes(spec, i);
    let weights = 0;
    for (const [name, [inF, outF]] of Object.entries(shapes)) {
      weights += inF * outF + (spec.biasedLinears?.includes(name) ? outF : 0);
      largestLinear = Math.max(largestLinear, inF * outF);
    }
    prunable.push(Object.values(shapes).reduce((n, [a, b]) => n + a * b, 0));
    blocks.push(weights + 4 * spec.hiddenSize);
    const f = shapes[spec.roles.up]![1];
    ffn = Math.max(ffn, f);
    if (weights > widest) {
      widest = weights;
      // One input feeds the attention's projections, one the attention output's, one gate and up, one down.
      inputWidths = [spec.hiddenSize, shapes[spec.roles.o]![0], spec.hiddenSize, shapes[spec.roles.down]![0]];
    }
  }
  return {
    blocks,
    prunable,
    largestLinear,
    inputWidths,
    head: spec.vocabSize * spec.embedDim,
    embedDim: spec.embedDim,
    hidden: spec.hiddenSize,
    ffn,
    vocab: spec.vocabSize,
    bytesPerWeight,
  };
};

/** What the run does, as far as memory is concerned. */
export interface Workload {
  /**
   * Windows run through the model: their length, windows per forward pass, and (when
   * known) the most tokens one pass will hold (a pass never holds more than its windows).
   */
  readonly forward: { readonly seqlen: number; readonly batch: number; readonly tokens?: number };
  /** Calibration for pruning: windows, and how pruned blocks are made and kept. */
  readonly calibration?: {
    readonly windows: number;
    readonly sparsegpt: boolean;
    /** Hessians of every linear kept for the whole run (dense-mode SparseGPT fitness). */
    readonly keepHessians: boolean;
    /** Pruned blocks kept until export, in this many bytes a weight. */
    readonly storeBytes?: number;
  };
  /** Dense-mode fitness from mask ranks: every weight's rank, 1 to 4 bytes. */
  readonly ranks?: { readonly bytesPerWeight: number };
  /** KL fitness: the dense reference kept on the backend. */
  readonly klReference?: { readonly tokens: number; readonly topK: number };
  /**
   * Loss gradients: block by block (Fisher traces, structured importances: every block's
   * inputs for every window are kept through the backward pass), or `resident`, through
   * the whole model at once (HyWIA's fusion learning, LoRA recovery).
   */
  readonly gradients?: { readonly windows: number; readonly resident?: boolean };
  /** Model copies computing at once in this process (fitness worker threads). */
  readonly copies?: number;
  /** Of them, copies on worker threads of their own: each thread has its own isolate and backend. */
  readonly threads?: number;
}

export interface MemoryBudget {
  readonly bytes: number;
  /** "--memory" or "available". */
  readonly source: string;
  /** The backend's own limit (the wasm heap), or Infinity. */
  readonly backendBytes: number;
  /** Whether the backend's tensors live in this process's memory (wasm, native, cpu). */
  readonly backendInProcess: boolean;
  /** Free space where the run's scratch folder goes (what waits on disk must fit there); unlimited when absent. */
  readonly diskBytes?: number;
}

export interface MemoryPart {
  readonly what: string;
  readonly bytes: number;
  /** On the backend (the wasm heap) rather than in host memory. */
  readonly backend: boolean;
}

export interface MemoryPlan {
  readonly streamed: boolean;
  readonly streamedHead: boolean;
  readonly passTokens: number;
  readonly activations: "device" | "host" | "disk";
  /** Pruned blocks and mask ranks in a scratch folder instead of memory. */
  readonly spill: boolean;
  /** Pruned blocks a search may keep for reuse. */
  readonly cacheBytes: number;
  /** The estimated peak resident memory of the process. */
  readonly peakBytes: number;
  readonly backendPeakBytes: number;
  readonly budget: MemoryBudget;
  readonly parts: readonly MemoryPart[];
}

interface Choices {
  readonly streamed: boolean;
  readonly streamedHead: boolean;
  readonly passTokens: number;
  readonly activations: "device" | "host" | "disk";
  readonly spill: boolean;
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/** The parts of a run's peak under one set of choices. */
export const memoryParts = (m: ModelSizes, w: Workload, c: Choices): MemoryPart[] => {
  const parts: MemoryPart[] = [];
  const copies = Math.max(1, w.copies ?? 1);
  const add = (what: string, bytes: number, backend: boolean) => {
    if (bytes > 0) parts.push({ what, bytes, backend });
  };
  const largest = Math.max(...m.blocks);
  const chunk = Math.min(m.head * 4, HEAD_CHUNK_BYTES);
  const groupTokens = w.forward.seqlen * w.forward.batch;
  add("blocks on the backend", copies * (c.streamed ? largest * 4 : sum(m.blocks) * 4), true);
  add("head", copies * (c.streamedHead ? chunk : m.head * 4), true);
  add("hidden states of a pass", copies * Math.min(c.passTokens, w.forward.tokens ?? Infinity) * m.hidden * 4 * 2, true);
  // One window group's intermediates: q, k, v, attention output, gate, up and activation.
  add("one forward's intermediates", copies * groupTokens * (5 * m.hidden + 3 * m.ffn) * 4 + 256 * (chunk / (4 * m.embedDim)) * 4 * 4, true);
  if (c.streamed) add("blocks read ahead (file dtype)", copies * 2 * largest * m.bytesPerWeight, false);
  const cal = w.calibration;
  if (cal) {
    const states = 2 * cal.windows * w.forward.seqlen * m.hidden * 4;
    // On disk, one group's values pass through the host at a time.
    const group = 2 * w.forward.batch * w.forward.seqlen * m.hidden * 4;
    add("calibration hidden states", copies * (c.activations === "disk" ? group : states), c.activations === "device");
    // The dense block read for pruning (pruned linear by linear in its own arrays, a new
    // linear and its encoding beside it), and the calibration model's block on the backend.
    add("the block being pruned", copies * (largest * 4 + m.largestLinear * 6), false);
    add("the block being calibrated", copies * largest * 4, true);
    if (cal.storeBytes !== undefined && !c.spill) add("pruned blocks until export", sum(m.blocks) * cal.storeBytes, false);
    if (cal.sparsegpt) {
      const hessians = sum(m.inputWidths.map((d) => d * d * 8));
      const widest = Math.max(...m.inputWidths);
      add("Hessians (float64)", copies * (cal.keepHessians ? (m.blocks.length * hessians) : hessians), false);
      // One working copy of the widest Hessian (factorised in place) and the weights in float64.
      add("SparseGPT's solve", copies * (widest * widest * 8 + m.largestLinear * 14), false);
    }
  }
  if (w.ranks) {
    if (!c.spill) add("mask ranks", copies * sum(m.prunable) * w.ranks.bytesPerWeight, false);
    add("scoring one linear", copies * m.largestLinear * 20, false);
    add("score samples", copies * m.blocks.length * Math.min(SAMPLE_WEIGHTS, largest) * 9, false);
  }
  if (w.klReference) add(KL_REFERENCE_PART, copies * w.klReference.tokens * w.klReference.topK * 12, true);
  if (w.gradients?.resident) add("the whole model with its gradients", sum(m.blocks) * 4 * 3 + m.head * 4 * 2, true);
  else if (w.gradients) add("block inputs through the backward pass", w.gradients.windows * w.forward.seqlen * m.hidden * 4 * (m.blocks.length + 2) + largest * 4 * 2, true);
  if (w.threads) add("worker threads (an isolate and a backend each)", w.threads * THREAD_BYTES, false);
  return parts;
};

const totals = (parts: readonly MemoryPart[], budget: MemoryBudget) => {
  const backend = sum(parts.filter((p) => p.backend).map((p) => p.bytes));
  const host = sum(parts.filter((p) => !p.backend).map((p) => p.bytes));
  return { backend, peak: BASELINE_BYTES + host + (budget.backendInProcess ? backend : 0) };
};

export const formatBytes = (bytes: number): string =>
  bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.max(1, Math.round(bytes / MiB))} MiB`;

/**
 * The cheapest choices that fit, in order: everything resident; streamed blocks; then the
 * head per pass, shorter passes, calibration states on the host, pruned blocks and ranks
 * on disk. Returns the plan, or why nothing fits.
 */
export const planMemory = (
  m: ModelSizes,
  w: Workload,
  budget: MemoryBudget,
  /** `streamed`: the leanest plan whether or not more would fit (`--streamed`): streamed blocks and head, short passes, everything that can wait on the host or disk there. */
  force: { readonly streamed?: boolean } = {},
): MemoryPlan | { readonly refused: string; readonly parts: readonly MemoryPart[]; readonly peakBytes: number } => {
  const defaultPass = Math.max(w.forward.seqlen * w.forward.batch, Math.floor(PASS_BYTES / (8 * m.hidden)));
  // Pruned blocks and ranks are only ever read back in order, a block at a time: beyond a
  // modest size they wait on disk (the page cache serves them back) rather than in memory.
  const spillable = (w.calibration?.storeBytes ?? 0) * sum(m.blocks) + (w.ranks ? w.ranks.bytesPerWeight * sum(m.prunable) : 0);
  const preferSpill = spillable > Math.min(SPILL_BYTES, budget.bytes / 10);
  const minimalPass = w.forward.seqlen * w.forward.batch;
  const candidates: Choices[] = [];
  const canSpill = (w.calibration?.storeBytes ?? 0) > 0 || w.ranks !== undefined;
  // `--streamed` asks for the leanest way: every choice that saves memory, taken.
  if (force.streamed) candidates.push({ streamed: true, streamedHead: true, passTokens: minimalPass, activations: !w.calibration ? "device" : canSpill ? "disk" : "host", spill: canSpill });
  for (const streamed of force.streamed ? [] : [false, true]) {
    for (const activations of ["device", "host", "disk"] as const) {
      if (!w.calibration && activations !== "device") continue;
      for (const spill of preferSpill ? [true] : [false, true]) {
        if (!canSpill && spill) continue;
        // Calibration states on disk go to the scratch folder that spilling gives the run.
        if (activations === "disk" && !spill) continue;
        for (const streamedHead of [false, true]) {
          for (const passTokens of [defaultPass, Math.max(minimalPass, Math.floor(defaultPass / 4)), minimalPass]) {
            candidates.push({ streamed, streamedHead, passTokens, activations, spill });
          }
        }
      }
    }
  }
  // What waits on disk: calibration states there, pruned blocks and ranks spilled.
  const diskOf = (c: Choices): number =>
    (c.activations === "disk" && w.calibration ? Math.max(1, w.copies ?? 1) * 2 * w.calibration.windows * w.forward.seqlen * m.hidden * 4 : 0) + (c.spill ? spillable : 0);
  const fits = (c: Choices) => {
    const parts = memoryParts(m, w, c);
    const t = totals(parts, budget);
    const disk = diskOf(c);
    return { parts, ...t, disk, ok: t.peak <= budget.bytes && t.backend <= budget.backendBytes * HEAP_USABLE && disk <= (budget.diskBytes ?? Infinity) };
  };
  // Candidates are in order of preference; duplicates (a pass already minimal) are harmless.
  for (const c of candidates) {
    const f = fits(c);
    if (!f.ok) continue;
    return {
      ...c,
      cacheBytes: c.streamed ? 0 : 256 * MiB,
      peakBytes: f.peak,
      backendPeakBytes: f.backend,
      budget,
      parts: f.parts,
    };
  }
  const leanest = fits({ streamed: true, streamedHead: true, passTokens: minimalPass, activations: w.calibration && canSpill ? "disk" : w.calibration ? "host" : "device", spill: canSpill });
  const heavy = [...leanest.parts].sort((a, b) => b.bytes - a.bytes).slice(0, 3).map((p) => `${p.what} ${formatBytes(p.bytes)}`).join(", ");
  const overBackend = leanest.backend > budget.backendBytes * HEAP_USABLE;
  const overDisk = leanest.peak <= budget.bytes && !overBackend && leanest.disk > (budget.diskBytes ?? Infinity);
  const refused = overDisk
    ? `needs about ${formatBytes(leanest.disk)} of scratch space on disk (what does not fit the ${formatBytes(budget.bytes)} of memory waits there), more than the ${formatBytes(budget.diskBytes!)} free there`
    : overBackend
    ? `needs about ${formatBytes(leanest.backend)} on the backend even streamed (${heavy}), more than its ${formatBytes(budget.backendBytes)} heap holds`
    : `needs about ${formatBytes(leanest.peak)} even streamed (${heavy}), more than the ${formatBytes(budget.bytes)} ${budget.source === "--memory" ? "given by --memory" : "available"}`;
  return { refused, parts: leanest.parts, peakBytes: leanest.peak };
};

/** The plan in one line, as runs print it. */
export const describePlan = (plan: MemoryPlan): string => {
  const how = plan.streamed
    ? `streamed (one block on the backend, the next read ahead)${plan.streamedHead ? ", head uploaded per pass" : ""}`
    : "resident";
  const extras = [
    plan.activations === "host" ? "calibration states on the host" : plan.activations === "disk" ? "calibration states on disk" : undefined,
    plan.spill ? "pruned blocks and ranks on disk" : undefined,
  ].filter((x) => x !== undefined);
  return `memory: ${how}${extras.length ? `, ${extras.join(", ")}` : ""}; estimated peak ${formatBytes(plan.peakBytes)} of ${formatBytes(plan.budget.bytes)} ${plan.budget.source === "--memory" ? "(--memory)" : "available"}`;
};

/** What a report says of memory: the plan, its estimate, and the peak the process reached. */
export interface MemoryReport {
  readonly plan: string;
  readonly estimatedPeakBytes: number;
  readonly peakRssBytes: number;
}

export const memoryReport = (plan: MemoryPlan): MemoryReport => ({
  plan: describePlan(plan),
  estimatedPeakBytes: plan.peakBytes,
  // ru_maxrss is in kilobytes on Linux.
  peakRssBytes: process.resourceUsage().maxRSS * 1024,
});
