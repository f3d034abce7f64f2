/**
 * Calibration statistics of one linear's inputs, accumulated batch by batch on the host.
 * A batch X is row-major [tokens, in]: one row per token, one column per input feature.
 * Accumulation is in float64 so that the sum over hundreds of thousands of tokens does not
 * lose the small features.
 */

const batchTokens = (what: string, length: number, inFeatures: number): number => {
  if (length % inFeatures !== 0) {
    throw new RangeError(`${what}: ${length} values are not whole rows of ${inFeatures} input features`);
  }
  return length / inFeatures;
};

const checkFeatures = (what: string, inFeatures: number): void => {
  if (!Number.isInteger(inFeatures) || inFeatures < 1) {
    throw new RangeError(`${what}: input feature count ${inFeatures} must be a positive integer`);
  }
};

/** Sum of squares of every input feature over all tokens seen: Wanda's ||X_j||_2 squared. */
export class InputNormAccumulator {
  readonly sumSquares: Float64Array;
  private seen = 0;

  constructor(readonly inFeatures: number) {
    checkFeatures("InputNormAccumulator", inFeatures);
    this.sumSquares = new Float64Array(inFeatures);
  }

  get tokens(): number {
    return this.seen;
  }

  add(x: Float32Array): void {
    const tokens = batchTokens("InputNormAccumulator.add", x.length, this.inFeatures);
    const d = this.inFeatures;
    for (let t = 0; t < tokens; t++) {
      const row = t * d;
      for (let j = 0; j < d; j++) this.sumSquares[j] += x[row + j] * x[row + j];
    }
    this.seen += tokens;
  }

  /** Adds per-feature sums of squares computed elsewhere (e.g. on the device) for `tokens` tokens. */
  addSumSquares(sumSquares: ArrayLike<number>, tokens: number): void {
    if (sumSquares.length !== this.inFeatures) {
      throw new RangeError(`InputNormAccumulator.addSumSquares: ${sumSquares.length} sums for ${this.inFeatures} features`);
    }
    for (let j = 0; j < this.inFeatures; j++) this.sumSquares[j] += sumSquares[j];
    this.seen += tokens;
  }

  /** ||X_j||_2 for every input feature j. */
  norms(): Float32Array {
    return Float32Array.from(this.sumSquares, Math.sqrt);
  }
}

/**
 * SparseGPT's layer Hessian H = (2/n) sum_t x_t x_t^T, kept as a running average exactly
 * as sparsegpt.py's add_batch does: H *= n/(n+b); n += b; H += (2/n) X^T X. sparsegpt.py
 * counts n in sequences, here in tokens; H only changes by a constant factor, which
 * SparseGPT's result does not depend on (the damping is relative to mean(diag H)).
 */
export class HessianAccumulator {
  /** Row-major [in, in], symmetric. */
  private readonly h: Float64Array;
  private seen = 0;

  constructor(readonly inFeatures: number) {
    checkFeatures("HessianAccumulator", inFeatures);
    this.h = new Float64Array(inFeatures * inFeatures);
  }

  get tokens(): number {
    return this.seen;
  }

  add(x: Float32Array): void {
    const tokens = batchTokens("HessianAccumulator.add", x.length, this.inFeatures);
    if (tokens === 0) return;
    const d = this.inFeatures;
    const gram = new Float64Array(d * d);
    // Lower triangle only, mirrored afterwards: X^T X is symmetric.
    for (let t = 0; t < tokens; t++) {
      const row = t * d;
      for (let a = 0; a < d; a++) {
        const xa = x[row + a];
        if (xa === 0) continue;
        const ga = a * d;
        for (let b = 0; b <= a; b++) gram[ga + b] += xa * x[row + b];
      }
    }
    for (let a = 0; a < d; a++) for (let b = 0; b < a; b++) gram[b * d + a] = gram[a * d + b];
    this.addGram(gram, tokens);
  }

  /** Adds X^T X of a batch of `tokens` tokens computed elsewhere (e.g. by a device matMul). */
  addGram(gram: ArrayLike<number>, tokens: number): void {
    const d = this.inFeatures;
    if (gram.length !== d * d) {
      throw new RangeError(`HessianAccumulator.addGram: ${gram.length} values for a [${d}, ${d}] Gram matrix`);
    }
    if (!Number.isInteger(tokens) || tokens < 0) {
      throw new RangeError(`HessianAccumulator.addGram: token count ${tokens} must be a non-negative integer`);
    }
    if (tokens === 0) return;
    const keep = this.seen / (this.seen + tokens);
    this.seen += tokens;
    const scale = 2 / this.seen;
    for (let e = 0; e < this.h.length; e++) this.h[e] = this.h[e] * keep + scale * gram[e];
  }

  /** A copy of H, row-major [in, in]. */
  hessian(): Float64Array {
    return this.h.slice();
  }
}
