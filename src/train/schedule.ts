/** Linear warmup to the peak rate, then cosine decay to minRatio of it at the last step. */
export const learningRate = (
  step: number,
  options: { readonly peak: number; readonly warmupSteps: number; readonly totalSteps: number; readonly minRatio?: number },
): number => {
  const { peak, warmupSteps, totalSteps } = options;
  const minRatio = options.minRatio ?? 0.1;
  if (step < warmupSteps) return (peak * (step + 1)) / warmupSteps;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  return peak * (minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
};
