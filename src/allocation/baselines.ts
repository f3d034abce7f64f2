/**
 * Baseline allocations, per block: uniform, OWL and ATP. Each ends in the shared
 * projection, so its parameter-weighted mean is the target exactly and every block stays
 * inside the bounds, even where the paper's formula alone would leave [0, 1).
 */
import { defaultBounds, projectToTarget } from "./project.ts";
import type { Bounds } from "./project.ts";

export interface BlockOptions {
  /** Prunable weights per block; equal weights when absent (every block of one model has the same shapes). */
  readonly weights?: readonly number[];
  readonly bounds?: Bounds;
}

const checkBlocks = (blocks: number): void => {
  if (!Number.isInteger(blocks) || blocks < 1) throw new RangeError(`${blocks} is not a positive number of blocks`);
};

const project = (x: readonly number[], target: number, options: BlockOptions): number[] =>
  projectToTarget(x, options.weights ?? x.map(() => 1), target, options.bounds ?? defaultBounds);

export const uniform = (blocks: number, target: number, options: BlockOptions = {}): number[] => {
  checkBlocks(blocks);
  return project(new Array<number>(blocks).fill(target), target, options);
};

/** Rescales to [0, 1]; all-equal values carry no ranking, so they all map to 0. */
const minmax = (values: readonly number[]): number[] => {
  const low = Math.min(...values);
  const high = Math.max(...values);
  return high > low ? values.map((v) => (v - low) / (high - low)) : values.map(() => 0);
};

export interface OwlOptions extends BlockOptions {
  /** Half the spread of block densities; the OWL paper's default for LLaMA is 0.08. */
  readonly lambda?: number;
}

/**
 * OWL (Yin et al., 2023): block l keeps density r_l = 2λ minmax(D)_l + c, where D_l is its
 * share of outlier scores, and s_l = 1 - r_l, so blocks with more outliers are pruned less.
 * The paper picks c so the plain mean density is 1 - S; here the shared projection picks
 * it so the parameter-weighted mean sparsity is S. Both agree when blocks have equal
 * size and nothing hits a bound, and the projection stays exact otherwise.
 */
export const owl = (outlierShares: readonly number[], target: number, options: OwlOptions = {}): number[] => {
  checkBlocks(outlierShares.length);
  const lambda = options.lambda ?? 0.08;
  if (!Number.isFinite(lambda) || lambda < 0) throw new RangeError(`OWL lambda ${lambda} is not a finite non-negative number`);
  for (const share of outlierShares) {
    if (!Number.isFinite(share)) throw new RangeError(`outlier share ${share} is not a finite number`);
  }
  const density = minmax(outlierShares).map((d) => 2 * lambda * d);
  return project(density.map((r) => 1 - r), target, options);
};

/**
 * ATP (Huang et al., 2025): s_i = S - β(L-1)/2 + β i, a ramp centred on S, deeper blocks
 * pruned more for β > 0. The projection only matters when the ramp leaves the bounds
 * (β beyond the grid below) or the blocks differ in size.
 */
export const atpRamp = (blocks: number, target: number, beta: number, options: BlockOptions = {}): number[] => {
  checkBlocks(blocks);
  if (!Number.isFinite(beta)) throw new RangeError(`ATP beta ${beta} is not a finite number`);
  const ramp = Array.from({ length: blocks }, (_, i) => target - (beta * (blocks - 1)) / 2 + beta * i);
  return project(ramp, target, options);
};

export interface BetaGridOptions {
  /** The ATP paper's grid step. */
  readonly step?: number;
  /** Most positive β values to try; the step widens beyond this many. */
  readonly maxPoints?: number;
}

/**
 * β values for ATP's grid search. The paper searches 0 < β <= min(2S, 2(1-S)) / (L-1),
 * the largest β whose ramp stays in [0, 1], with step 0.002. Here the ramp must stay in
 * [lo, hi], so β_max = 2 min(S - lo, hi - S) / (L - 1). The grid starts at 0 (uniform,
 * the reference point), then steps of 0.002 up to β_max, and β_max itself; for shallow
 * models, where that would mean many trials, the step widens to β_max / maxPoints
 * (default 10) so a search costs a bounded number of evaluations.
 */
export const atpBetaGrid = (
  target: number,
  blocks: number,
  lo = defaultBounds.lo,
  hi = defaultBounds.hi,
  options: BetaGridOptions = {},
): number[] => {
  checkBlocks(blocks);
  if (!(lo <= target && target <= hi)) throw new RangeError(`target ${target} is outside the bounds [${lo}, ${hi}]`);
  const maxPoints = options.maxPoints ?? 10;
  if (!Number.isInteger(maxPoints) || maxPoints < 1) throw new RangeError(`maxPoints ${maxPoints} is not a positive integer`);
  const step = options.step ?? 0.002;
  if (!(step > 0) || !Number.isFinite(step)) throw new RangeError(`step ${step} is not a positive number`);
  if (blocks === 1) return [0];
  const betaMax = (2 * Math.min(target - lo, hi - target)) / (blocks - 1);
  if (!(betaMax > 0)) return [0];
  const spacing = Math.max(step, betaMax / maxPoints);
  const grid = [0];
  // Multiples of the spacing rather than repeated sums, so values print as round numbers.
  for (let k = 1; k * spacing < betaMax * (1 - 1e-9); k++) grid.push(k * spacing);
  grid.push(betaMax);
  return grid;
};

export interface DlpOptions extends BlockOptions {
  /** Half the spread of block densities; DLP's published value for LLaMA at 70% is 0.15. */
  readonly alpha?: number;
}

/**
 * DLP (Chen et al., 2025, ironartisan/DLP `get_dlp_ratios`): block l's score x_l is the
 * mean Wanda score over its weights; its importance is 1 - x_l / sum(x), min-max scaled to
 * [0, 2α] and centred on the density 1 - S, so blocks with larger mean scores keep fewer
 * weights. The shared projection then makes the parameter-weighted mean exactly S.
 */
export const dlp = (meanScores: readonly number[], target: number, options: DlpOptions = {}): number[] => {
  checkBlocks(meanScores.length);
  const alpha = options.alpha ?? 0.15;
  if (!Number.isFinite(alpha) || alpha < 0) throw new RangeError(`DLP alpha ${alpha} is not a finite non-negative number`);
  for (const x of meanScores) if (!Number.isFinite(x)) throw new RangeError(`DLP layer score ${x} is not a finite number`);
  const scores = meanScores.map(Math.abs);
  const total = scores.reduce((a, b) => a + b, 0);
  const importance = scores.map((x) => (total > 0 ? 1 - x / total : 1));
  const scaled = minmax(importance).map((v) => v * 2 * alpha);
  const mean = scaled.reduce((a, b) => a + b, 0) / scaled.length;
  return project(scaled.map((v) => 1 - (v - mean + (1 - target))), target, options);
};

export interface AlphaPruningOptions extends BlockOptions {
  /** Ratios span [1 - ε, 1 + ε] of the target; AlphaPruning's LLaMA-2-7B value for Wanda at 70% is 0.3. */
  readonly epsilon?: number;
}

/**
 * AlphaPruning (Lu et al., NeurIPS 2024, haiquanlu/AlphaPruning `ww_sparsity`, block-wise
 * mapping): block l's metric is the mean heavy-tail exponent α of its linears; it is
 * mapped linearly onto [1 - ε, 1 + ε] and scaled so the parameter-weighted mean sparsity
 * is S, so blocks with larger α (lighter tails, less well trained) are pruned more. The
 * projection only matters where a block would leave the bounds.
 */
export const alphaPruning = (blockAlphas: readonly number[], target: number, options: AlphaPruningOptions = {}): number[] => {
  checkBlocks(blockAlphas.length);
  const epsilon = options.epsilon ?? 0.3;
  if (!Number.isFinite(epsilon) || epsilon < 0 || epsilon >= 1) throw new RangeError(`AlphaPruning epsilon ${epsilon} is not in [0, 1)`);
  for (const a of blockAlphas) if (!Number.isFinite(a)) throw new RangeError(`AlphaPruning alpha ${a} is not a finite number`);
  const ratios = minmax(blockAlphas).map((v) => v * 2 * epsilon + (1 - epsilon));
  const weights = options.weights ?? blockAlphas.map(() => 1);
  const total = weights.reduce((a, b) => a + b, 0);
  const weighted = ratios.reduce((n, r, l) => n + r * weights[l]!, 0);
  const scaler = weighted > 0 ? (total * target) / weighted : 0;
  return project(ratios.map((r) => r * scaler), target, options);
};
