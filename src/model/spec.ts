/**
 * The model spec: everything the generic decoder needs to know about an architecture,
 * as data. Family differences (norm kind, positions, MLP, fused attention) are options
 * here, never separate code paths per family.
 */

export type Family = "llama" | "mistral" | "qwen2" | "opt" | "gpt2" | "llama2c";

/** LLaMA-3 style frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`). */
export interface Llama3RopeScaling {
  readonly factor: number;
  readonly lowFreqFactor: number;
  readonly highFreqFactor: number;
  readonly originalMaxPositions: number;
}

export type Positions =
  /** Rotary embeddings in the Hugging Face "rotate half" layout: pairs (j, j + headDim/2). */
  | { readonly kind: "rope"; readonly theta: number; readonly scaling?: Llama3RopeScaling }
  /** Learned absolute positions; the table row for position p is p + offset (OPT: 2). */
  | { readonly kind: "learned"; readonly offset: number };

/**
 * Roles of a block's linears, mapped to the family's prunable linear names.
 * Either q/k/v or a fused qkv (GPT-2's c_attn, output columns [q | k | v]).
 * gate is present for gated MLPs (SwiGLU): down(act(gate x) * up x); otherwise down(act(up x)).
 */
export interface LinearRoles {
  readonly q?: string;
  readonly k?: string;
  readonly v?: string;
  readonly qkv?: string;
  readonly o: string;
  readonly gate?: string;
  readonly up: string;
  readonly down: string;
}

/**
 * The sizes that may differ from block to block once structured pruning has removed whole
 * attention heads (a key/value head with the query heads sharing it) or MLP channels.
 * The head size and the hidden size stay the same for every block.
 */
export interface BlockShape {
  readonly numHeads: number;
  /** Key/value heads; fewer than numHeads means grouped-query attention. */
  readonly numKvHeads: number;
  readonly intermediateSize: number;
}

export interface ModelSpec {
  readonly family: Family;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  /**
   * numHeads, numKvHeads and intermediateSize are every block's sizes unless `blocks` gives
   * each block its own; read them through `blockShape(spec, block)` wherever a block is meant.
   * They stay the architecture's nominal values (for OPT and GPT-2, numHeads · headDim is the
   * hidden size).
   */
  readonly numHeads: number;
  /** Key/value heads; fewer than numHeads means grouped-query attention. */
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  /** Per-block sizes, one entry per block (length numLayers), when blocks differ. */
  readonly blocks?: readonly BlockShape[];
  /** Longest context the model was trained for; the default evaluation window. */
  readonly maxPositions: number;
  readonly norm: "rms" | "layer";
  readonly normEps: number;
  /** Pre-norm blocks (x + f(norm(x))); false is OPT's post-norm (norm(x + f(x))). */
  readonly normBefore: boolean;
  readonly positions: Positions;
  readonly activation: "silu" | "gelu_tanh" | "relu";
  /** Prunable linear names of a block in their canonical order (docs/methods.md vocabulary). */
  readonly linears: readonly string[];
  readonly roles: LinearRoles;
  /** Linears that carry a bias (Qwen2's q/k/v; every linear of OPT and GPT-2). */
  readonly biasedLinears?: readonly string[];
  /** The LM head reuses the token embedding. */
  readonly tiedEmbeddings: boolean;
  /** A final norm before the head (absent in OPT with do_layer_norm_before = false). */
  readonly finalNorm: boolean;
  /** OPT's word_embed_proj_dim when it differs from hiddenSize (project_in / project_out). */
  readonly embedDim: number;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number;
  /**
   * Mistral-style sliding-window attention span. The decoder attends over the whole
   * window, which is exact while the window is no longer than this span.
   */
  readonly slidingWindow?: number;
}

/** Weights in host memory: row-major float32 data with its shape. */
export interface HostTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * Weights still in their checkpoint: the decoder allocates the float32 array (on a heap
 * backend, a view of the backend's own memory) and `fill` writes the values into it,
 * converting from the file's dtype and layout on the way, so a streamed block is never
 * held as a separate float32 host copy. `fill` may throw a CheckpointError naming the file
 * and the tensor (a non-finite weight).
 */
export interface WeightSource {
  readonly shape: readonly number[];
  fill(into: Float32Array): void;
}

/** Weights the decoder can upload: on the host already, or still in the checkpoint. */
export type TensorLike = HostTensor | WeightSource;

export const isHostTensor = (t: TensorLike): t is HostTensor => (t as HostTensor).data !== undefined;

/** A linear layer, weight stored as [in, out] so that y = x W + b. */
export interface LinearOf<T> {
  readonly weight: T;
  readonly bias?: T;
}

export interface NormOf<T> {
  readonly weight: T;
  readonly bias?: T;
}

/** One decoder block: two norms and the prunable linears, keyed by spec.linears names. */
export interface BlockOf<T> {
  readonly attnNorm: NormOf<T>;
  readonly mlpNorm: NormOf<T>;
  readonly linears: Readonly<Record<string, LinearOf<T>>>;
}

/** The same block with every tensor mapped; `where` names it ("attnNorm.weight", "q.bias", ...), in a fixed order. */
export const mapBlock = <T, U>(b: BlockOf<T>, f: (t: T, where: string) => U): BlockOf<U> => {
  const norm = (n: NormOf<T>, part: string): NormOf<U> => ({ weight: f(n.weight, `${part}.weight`), ...(n.bias !== undefined ? { bias: f(n.bias, `${part}.bias`) } : {}) });
  return {
    attnNorm: norm(b.attnNorm, "attnNorm"),
    mlpNorm: norm(b.mlpNorm, "mlpNorm"),
    linears: Object.fromEntries(
      Object.entries(b.linears).map(([name, l]) => [name, { weight: f(l.weight, `${name}.weight`), ...(l.bias !== undefined ? { bias: f(l.bias, `${name}.bias`) } : {}) }]),
    ),
  };
};

export type HostLinear = LinearOf<HostTensor>;
export type HostNorm = NormOf<HostTensor>;
export type HostBlock = BlockOf<HostTensor>;
/** A block as a checkpoint or a candidate offers it: any tensor may still be in the file. */
export type SourceBlock = BlockOf<TensorLike>;

/** Everything outside the blocks. */
export interface HostGlobals {
  /** Token embedding [vocab, embedDim]. */
  readonly embed: HostTensor;
  /** Learned position table [maxPositions + offset, hiddenSize], when positions are learned. */
  readonly positions?: HostTensor;
  readonly finalNorm?: HostNorm;
  /** LM head as [embedDim, vocab]; absent when tied to the embedding. */
  readonly lmHead?: HostTensor;
  /** OPT project_in [embedDim, hiddenSize] and project_out [hiddenSize, embedDim]. */
  readonly projectIn?: HostTensor;
  readonly projectOut?: HostTensor;
}

/**
 * The weights outside the blocks as a checkpoint offers them without reading them whole:
 * the embedding by rows (only the tokens a pass needs) and the head by vocabulary ranges,
 * each [embedDim, count] in the model's layout (the tied embedding's rows, transposed,
 * when the head is tied). The small tensors come as they are.
 */
export interface GlobalSource {
  /** Rows of the token embedding, [ids.length, embedDim] row-major. */
  embedRows(ids: Int32Array): Float32Array;
  /** Columns [start, start + count) of the head: shape [embedDim, count]. */
  headColumns(start: number, count: number): TensorLike;
  readonly positions?: TensorLike;
  readonly finalNorm?: NormOf<TensorLike>;
  readonly projectIn?: TensorLike;
  readonly projectOut?: TensorLike;
}

/** The GlobalSource of globals already in host memory. */
export const hostGlobalSource = (spec: ModelSpec, g: HostGlobals): GlobalSource => {
  const d = spec.embedDim;
  return {
    embedRows: (ids) => {
      const out = new Float32Array(ids.length * d);
      const table = g.embed.data;
      for (let r = 0; r < ids.length; r++) out.set(table.subarray(ids[r]! * d, (ids[r]! + 1) * d), r * d);
      return out;
    },
    headColumns: (start, count) => {
      const out = new Float32Array(d * count);
      if (g.lmHead) {
        // [embedDim, vocab]: row j's columns start..start+count.
        const v = spec.vocabSize;
        for (let j = 0; j < d; j++) out.set(g.lmHead.data.subarray(j * v + start, j * v + start + count), j * count);
      } else {
        // Tied: the embedding's rows start..start+count, transposed.
        const e = g.embed.data;
        for (let t = 0; t < count; t++) for (let j = 0; j < d; j++) out[j * count + t] = e[(start + t) * d + j]!;
      }
      return { shape: [d, count], data: out };
    },
    ...(g.positions ? { positions: g.positions } : {}),
    ...(g.finalNorm ? { finalNorm: g.finalNorm } : {}),
    ...(g.projectIn ? { projectIn: g.projectIn } : {}),
    ...(g.projectOut ? { projectOut: g.projectOut } : {}),
  };
};

/** The spec's own sizes: every block's when `blocks` is absent. */
export const nominalBlockShape = (spec: ModelSpec): BlockShape => ({
  numHeads: spec.numHeads,
  numKvHeads: spec.numKvHeads,
  intermediateSize: spec.intermediateSize,
});

/** The sizes of one block: its entry in `spec.blocks`, or the spec's own when that is absent. */
export const blockShape = (spec: ModelSpec, block: number): BlockShape => {
  if (!Number.isInteger(block) || block < 0 || block >= spec.numLayers) {
    throw new RangeError(`block ${block} does not exist: the model has ${spec.numLayers} blocks`);
  }
  if (spec.blocks === undefined) return nominalBlockShape(spec);
  const own = spec.blocks[block];
  if (!own) throw new RangeError(`the spec gives ${spec.blocks.length} block shapes for ${spec.numLayers} blocks`);
  return own;
};

export const sameBlockShape = (a: BlockShape, b: BlockShape): boolean =>
  a.numHeads === b.numHeads && a.numKvHeads === b.numKvHeads && a.intermediateSize === b.intermediateSize;

/** The shape every block has, or undefined when blocks differ. */
export const uniformBlockShape = (spec: ModelSpec): BlockShape | undefined => {
  if (spec.blocks === undefined || spec.numLayers < 1) return nominalBlockShape(spec);
  const first = blockShape(spec, 0);
  for (let i = 1; i < spec.numLayers; i++) if (!sameBlockShape(blockShape(spec, i), first)) return undefined;
  return first;
};

/** Width of block `block`'s keys (and values): its key/value heads times the head size. */
export const kvDim = (spec: ModelSpec, block: number): number => blockShape(spec, block).numKvHeads * spec.headDim;

/** Shapes every linear of block `block` must have, as [in, out]. */
export const linearShapes = (spec: ModelSpec, block: number): Record<string, readonly [number, number]> => {
  const shape = blockShape(spec, block);
  const d = spec.hiddenSize;
  const q = shape.numHeads * spec.headDim;
  const kv = kvDim(spec, block);
  const f = shape.intermediateSize;
  const r = spec.roles;
  const shapes: Record<string, readonly [number, number]> = {};
  if (r.qkv) shapes[r.qkv] = [d, q + 2 * kv];
  if (r.q) shapes[r.q] = [d, q];
  if (r.k) shapes[r.k] = [d, kv];
  if (r.v) shapes[r.v] = [d, kv];
  shapes[r.o] = [q, d];
  if (r.gate) shapes[r.gate] = [d, f];
  shapes[r.up] = [d, f];
  shapes[r.down] = [f, d];
  return shapes;
};
