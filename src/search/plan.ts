/**
 * Stage plans derived from a fitness budget. A search given `--budget-tokens` (or
 * `--time-budget`, turned into tokens by the measured rate) and no plan of its own gets one
 * sized to the budget: many cheap generations (MIN_GENERATIONS at least, where the budget
 * allows one window per stage) rather than a few expensive ones, and no generation cap, so
 * the run ends when the budget does.
 *
 * Costs are counted in whole fitness windows: a stage of t tokens draws windows until it
 * holds t scored tokens, so a plan's stage asks for a whole number of windows' tokens. A
 * stage scored with the final protocol (exact) also forwards the calibration windows its
 * sequential prune runs on, for every candidate: `exactTokens` more each, counted in the
 * budget like fitness tokens.
 */

/** Generations a derived plan aims for at least. */
export const MIN_GENERATIONS = 30;

export interface PlanStage {
  readonly survivors: number;
  readonly tokens: number;
  /** Scored with the run's final protocol (Fidelity.exact). */
  readonly exact?: boolean;
}

/** A staged (1+λ) plan: λ children, then stages on growing minibatches. */
export interface StagedPlan {
  readonly offspring: number;
  readonly stages: readonly PlanStage[];
}

/** Shapes of a staged plan in window units, richest first: λ, then (survivors, windows) per stage. */
const STAGED_SHAPES: readonly { readonly offspring: number; readonly stages: readonly (readonly [number, number])[] }[] = [
  // EvoPress's 1:4:16 token ladder with 16 children, as its published plans scale it.
  { offspring: 16, stages: [[4, 1], [2, 4], [1, 16]] },
  // Fewer children on larger minibatches before more children on smaller ones: at 70% on
  // stories260K, 8 children with 3 then 9 windows of 512 tokens did better than 16 on 1 then 4.
  { offspring: 8, stages: [[2, 3], [1, 9]] },
  { offspring: 8, stages: [[2, 2], [1, 6]] },
  { offspring: 8, stages: [[2, 1], [1, 4]] },
  { offspring: 8, stages: [[2, 1], [1, 2]] },
  { offspring: 4, stages: [[1, 1]] },
];

/** Candidates stage s of a plan scores: the children, or the survivors of the stage before (the parent joins the last). */
const stageCandidates = (offspring: number, survivorsBefore: number | undefined, last: boolean): number => (survivorsBefore ?? offspring) + (last ? 1 : 0);

/**
 * Tokens one generation of a plan costs when every child is new, windows holding
 * `windowTokens` scored tokens each, and each candidate of an exact stage `exactTokens` more.
 */
export const stagedTokens = (plan: StagedPlan, windowTokens: number, exactTokens = 0): number =>
  plan.stages.reduce((n, stage, s) => {
    const candidates = stageCandidates(plan.offspring, plan.stages[s - 1]?.survivors, s === plan.stages.length - 1);
    return n + candidates * (Math.ceil(stage.tokens / windowTokens) * windowTokens + (stage.exact ? exactTokens : 0));
  }, 0);

/** Evaluations one generation of a staged plan makes when every candidate is new: each stage's candidates. */
export const stagedEvaluations = (plan: StagedPlan): number =>
  plan.stages.reduce((n, _, s) => n + stageCandidates(plan.offspring, plan.stages[s - 1]?.survivors, s === plan.stages.length - 1), 0);

/** What one generation of a plan costs when every candidate is new. */
export interface GenerationCost {
  readonly tokens: number;
  readonly evaluations: number;
}

/**
 * Generations a run's limits let it finish at a generation's cost: the least of its
 * generation cap and what each budget pays for (0 when a budget is less than one
 * generation); undefined when nothing but time limits it. An estimate: repeated candidates
 * are cached and free, so a run can go further.
 */
export const plannedGenerations = (cost: GenerationCost, limits: { readonly generations?: number; readonly budgetTokens?: number; readonly budgetEvals?: number }): number | undefined => {
  const paidFor = (budget: number | undefined, each: number) => (budget === undefined ? undefined : Math.floor(budget / Math.max(1, each)));
  const counts = [limits.generations, paidFor(limits.budgetTokens, cost.tokens), paidFor(limits.budgetEvals, cost.evaluations)].filter((n): n is number => n !== undefined);
  return counts.length === 0 ? undefined : Math.min(...counts);
};

export interface DerivedPlan<P> {
  readonly plan: P;
  /** Tokens one generation costs when every candidate is new (cached ones are free). */
  readonly tokensPerGeneration: number;
  /** Generations the budget pays for at that cost; more when candidates repeat. */
  readonly generations: number;
}

const checkBudget = (budgetTokens: number, windowTokens: number): void => {
  if (!(Number.isFinite(budgetTokens) && budgetTokens >= 1)) throw new RangeError(`a budget of ${budgetTokens} tokens: a positive number is needed`);
  if (!(Number.isInteger(windowTokens) && windowTokens >= 1)) throw new RangeError(`windows of ${windowTokens} tokens: a whole number >= 1 is needed`);
};

/**
 * The staged plan for a budget: the richest shape whose generation, each stage's windows
 * scaled by the largest whole factor that fits, leaves MIN_GENERATIONS in the budget; the
 * cheapest shape at one window a stage when none does. With `exactTokens`, the last stage
 * is exact, each of its candidates costs that many tokens more (its calibration), and only
 * shapes with a stage before it are taken.
 */
export const stagedPlanFor = (budgetTokens: number, windowTokens: number, maxStageWindows = Infinity, exactTokens?: number): DerivedPlan<StagedPlan> => {
  checkBudget(budgetTokens, windowTokens);
  const extra = exactTokens ?? 0;
  if (!(Number.isInteger(extra) && extra >= 0)) throw new RangeError(`an exact stage costing ${exactTokens} tokens more: a whole number >= 0 is needed`);
  const perGeneration = budgetTokens / MIN_GENERATIONS;
  const planOf = (shape: (typeof STAGED_SHAPES)[number], scale: number): StagedPlan => ({
    offspring: shape.offspring,
    stages: shape.stages.map(([survivors, windows], s) => ({ survivors, tokens: windows * scale * windowTokens, ...(exactTokens !== undefined && s === shape.stages.length - 1 ? { exact: true } : {}) })),
  });
  const cost = (shape: (typeof STAGED_SHAPES)[number], scale: number) => stagedTokens(planOf(shape, scale), windowTokens, extra);
  // An exact plan keeps a stage before its exact one: a single exact stage would prune every child sequentially.
  const shapes = exactTokens === undefined ? STAGED_SHAPES : STAGED_SHAPES.filter((s) => s.stages.length > 1);
  const shape = shapes.find((s) => cost(s, 1) <= perGeneration) ?? shapes[shapes.length - 1]!;
  const widest = Math.max(...shape.stages.map(([, windows]) => windows));
  let scale = 1;
  while (scale < Math.floor(maxStageWindows / widest) && cost(shape, scale + 1) <= perGeneration) scale++;
  const plan = planOf(shape, scale);
  const tokensPerGeneration = stagedTokens(plan, windowTokens, extra);
  return { plan, tokensPerGeneration, generations: Math.floor(budgetTokens / tokensPerGeneration) };
};

/** The plan of a run without a budget: 16 children on one window, the best 4 and the parent on four. */
export const defaultStagedPlan = (windowTokens: number): StagedPlan => ({
  offspring: 16,
  stages: [
    { survivors: 4, tokens: windowTokens },
    { survivors: 1, tokens: 4 * windowTokens },
  ],
});

/** A generational GA's screening plan: candidates per screen on how many tokens. */
export interface ScreenPlan {
  readonly screen: readonly { readonly candidates: number; readonly tokens: number }[];
}

/** `--screen` text of a plan: 64@1024,16@4096. */
export const screenText = (plan: ScreenPlan): string => plan.screen.map((s) => `${s.candidates}@${s.tokens}`).join(",");

/** Places a generation scores on the fitness windows: the population after its elites (the GA's default, one). */
export const screenedPlaces = (population: number, elites = Math.min(1, population - 1)): number => Math.max(1, population - elites);

/**
 * Fitness tokens one screened generation costs at most: each screen's candidates on their
 * minibatch (whole windows, as the fitness scores them), then `places` on the fitness windows.
 */
export const screenTokensPerGeneration = (plan: ScreenPlan, windowTokens: number, places: number, fitnessTokens: number): number =>
  places * fitnessTokens + plan.screen.reduce((n, s) => n + s.candidates * Math.ceil(s.tokens / windowTokens) * windowTokens, 0);

/** Evaluations one screened generation makes at most: every screen's candidates, then the places. */
export const screenEvaluations = (plan: ScreenPlan, places: number): number => places + plan.screen.reduce((n, s) => n + s.candidates, 0);

/**
 * The screening plan of a generational method (dsa, msp) for a budget. Each generation
 * scores the population's places after the elite on the fitness windows (`fitnessTokens`
 * each), which the plan cannot change; the screens before them get what the budget has left
 * for MIN_GENERATIONS: 4 candidates per place on one window, then 2 per place on four
 * windows when that fits too, else one screen of 2 per place on one window. When even the
 * fitness windows alone leave fewer generations, the cheapest screen is kept and the
 * derived generation count says how few.
 */
export const screenPlanFor = (budgetTokens: number, windowTokens: number, population: number, fitnessTokens: number, elites = Math.min(1, population - 1)): DerivedPlan<ScreenPlan> => {
  checkBudget(budgetTokens, windowTokens);
  const places = screenedPlaces(population, elites);
  const perGeneration = budgetTokens / MIN_GENERATIONS;
  const options: ScreenPlan[] = [
    { screen: [{ candidates: 4 * population, tokens: windowTokens }, { candidates: 2 * population, tokens: 4 * windowTokens }] },
    { screen: [{ candidates: 4 * population, tokens: windowTokens }] },
    { screen: [{ candidates: 2 * population, tokens: windowTokens }] },
  ];
  const cost = (plan: ScreenPlan) => screenTokensPerGeneration(plan, windowTokens, places, fitnessTokens);
  const plan = options.find((p) => cost(p) <= perGeneration) ?? options[options.length - 1]!;
  return { plan, tokensPerGeneration: cost(plan), generations: Math.floor(budgetTokens / cost(plan)) };
};

/** One line saying what a staged plan does: candidates of each stage and their minibatch. */
export const describeStagedPlan = (plan: StagedPlan, windowTokens: number, exactCalibration?: number): string =>
  plan.stages
    .map((stage, s) => {
      const windows = Math.ceil(stage.tokens / windowTokens);
      const who = s === 0 ? `${plan.offspring} children` : `the best ${plan.stages[s - 1]!.survivors}`;
      return `${who}${s === plan.stages.length - 1 ? " and the parent" : ""} on ${windows} window${windows > 1 ? "s" : ""} (${stage.tokens} tokens${stage.exact ? `, pruned sequentially${exactCalibration !== undefined ? ` on ${exactCalibration} calibration window${exactCalibration > 1 ? "s" : ""}` : ""}` : ""})`;
    })
    .join(", then ");
