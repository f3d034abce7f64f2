/**
 * A search with the defaults on the embedded model: the stage plan derived from
 * --budget-tokens (recorded, ends on the budget, >= 90% of it spent), the warm start (the
 * baseline with the best score on the fitness windows, as the search would begin from
 * it), the same history with 1
 * and 2 workers and after a resume, and the baselines setting.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defaultBaselines } from "../src/defaults.ts";
import { beatenLine, winnerOf, type FinalResult } from "../src/jobs/search.ts";
import { embeddedModel, errorLines, evosparse, historyOf, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-defaults");

const spentTokens = (dir: string): number => {
  const [header, ...lines] = readFileSync(join(dir, "history.csv"), "utf8").trim().split("\n");
  const column = header!.split(",").indexOf("tokens");
  return lines.reduce((n, l) => n + Number(l.split(",")[column]), 0);
};

describe("evosparse search with the defaults", () => {
  const budget = 12_000;
  const small = [
    "search", "--method", "evopress", "--fitness", "kl", "--model", embeddedModel, "--nsamples", "2", "--seqlen", "64",
    "--eval-windows", "2", "--sparsity", "0.6", "--seed", "3", "--budget-tokens", String(budget),
  ];
  const baselines = ["--baselines", "uniform,owl,atp"];

  it("derives and records a plan from the budget, warm-starts from the best baseline, and agrees across workers and a resume", () => {
    const one = join(root, "one");
    const a = jsonOf(evosparse(...small, ...baselines, "--out", one, "--json"));
    // The plan: recorded in the settings, paid for at least 30 times by the budget; the run ends on the budget.
    const plan = a.settings.plan;
    expect(plan.from).toBe(`--budget-tokens ${budget}`);
    expect(plan.generations).toBeGreaterThanOrEqual(30);
    expect(JSON.parse(readFileSync(join(one, "settings.json"), "utf8")).plan).toEqual(plan);
    expect(a.settings.generations).toBeUndefined();
    expect(a.stoppedBy).toBe("budget");
    expect(a.generations).toBeGreaterThanOrEqual(30);
    const spent = spentTokens(one);
    expect(spent).toBeLessThanOrEqual(budget);
    expect(spent).toBeGreaterThanOrEqual(0.9 * budget);
    // The warm start: the candidate with the lowest score on the fitness windows, where the
    // final table's validation is measured (uniform is on the levels as given: the same score).
    const scores = a.start.scores as Record<string, number>;
    expect(Object.keys(scores).sort()).toEqual(["atp", "owl", "uniform"]);
    expect(a.start.tokens).toBeGreaterThan(plan.stages[0].tokens);
    expect(scores[a.start.method]).toBe(Math.min(...Object.values(scores)));
    // The final table: the search and every baseline, the winner the lowest validation fitness.
    expect(a.final.results.map((r: FinalResult) => r.method)).toEqual(["evopress", "uniform", "owl", "atp"]);
    expect(scores.uniform).toBe(a.final.results.find((r: FinalResult) => r.method === "uniform").validation);
    expect(a.winner).toBe(winnerOf(a.final.results));
    for (const name of ["uniform", "owl", "atp"]) expect(readFileSync(join(one, `${name}-allocation.csv`), "utf8")).toMatch(/^block,linear,params,sparsity,n,m/);

    // Two workers: the same history.
    const two = join(root, "two");
    jsonOf(evosparse(...small, ...baselines, "--out", two, "--workers", "2", "--json"));
    expect(historyOf(two)).toEqual(historyOf(one));

    // Stopped after 5 generations, then resumed without a cap: the same history as one run.
    const resumed = join(root, "resumed");
    jsonOf(evosparse(...small, ...baselines, "--out", resumed, "--generations", "5", "--json"));
    const c = jsonOf(evosparse("search", "--resume", resumed, "--generations", "100000", "--json"));
    expect(c.settings.plan).toEqual(plan);
    expect(historyOf(resumed)).toEqual(historyOf(one));

    // --start uniform opts out of the warm start: no start recorded, a different search.
    // Without --baselines: the default list.
    const cold = jsonOf(evosparse(...small, "--out", join(root, "cold"), "--start", "uniform", "--json"));
    expect(cold.start).toBeUndefined();
    expect(cold.settings.start).toBe("uniform");
    expect(cold.settings.baselines).toBe(defaultBaselines.join(","));
    expect(cold.final.results.map((r: FinalResult) => r.method)).toEqual(["evopress", ...defaultBaselines]);
  }, 1_200_000);

  it("judges each baseline as the search would begin from it, under SparseGPT's levels too, and shows the levels' factoring", () => {
    const dir = join(root, "sparsegpt");
    // Without --json, as a user runs it: the levels' factoring is followed linear by linear
    // (plain lines off a terminal), from 0 to its total, in place of a line a block.
    const run = evosparse(...small, "--metric", "sparsegpt", ...baselines, "--out", dir);
    expect(run.code, run.stderr).toBe(0);
    const built = [...run.stderr.matchAll(/^factors: (\d+)\/(\d+) \(\d+ s elapsed, ETA [^)]+\)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(built.length).toBeGreaterThanOrEqual(2);
    const total = built[0]![1]!;
    expect(built[0]).toEqual([0, total]);
    expect(built.at(-1)).toEqual([total, total]);
    for (const [done, of] of built) {
      expect(of).toBe(total);
      expect(done).toBeLessThanOrEqual(total);
    }
    expect(run.stderr).not.toMatch(/factored/);
    // Only the levels the search asked for were made: fewer than half of the default
    // space's (45 and more a linear, test/levels).
    const made = readdirSync(join(dir, "levels")).filter((f) => /^block-\d+$/.test(f)).flatMap((b) => readdirSync(join(dir, "levels", b)));
    expect(made.length).toBeGreaterThan(0);
    expect(made.length).toBeLessThan((total * 45) / 2);
    const a = JSON.parse(readFileSync(join(dir, "summary.json"), "utf8"));
    // Every baseline is scored, rounded to the levels the run built (as given, only uniform is on them).
    const scores = a.start.scores as Record<string, number>;
    expect(Object.keys(scores).sort()).toEqual(["atp", "owl", "uniform"]);
    for (const v of Object.values(scores)) expect(Number.isFinite(v)).toBe(true);
    expect(scores[a.start.method]).toBe(Math.min(...Object.values(scores)));
    // The final table scores every baseline as given (off the levels: pruned from the dense
    // Hessians) on the same fitness windows: uniform alike, the rounded ones not.
    const validation = Object.fromEntries((a.final.results as FinalResult[]).map((r) => [r.method, r.validation]));
    for (const [name, v] of Object.entries(validation)) expect(typeof v, name).toBe("number");
    expect(scores.uniform).toBe(validation.uniform);
    expect(scores.owl).not.toBe(validation.owl);
    expect(scores.atp).not.toBe(validation.atp);
  }, 600_000);

  it("prunes the last stage's candidates with the final protocol by default under Wanda, counting their calibration in the budget", () => {
    const budget = 40_000;
    const args = [...small.slice(0, -2), "--budget-tokens", String(budget), "--baselines", "uniform,owl"];
    const dir = join(root, "exact");
    const a = jsonOf(evosparse(...args, "--out", dir, "--json"));
    const plan = a.settings.plan;
    const last = plan.stages.length - 1;
    // All of the run's calibration windows by default (the final protocol itself): recorded.
    expect(a.settings.exactCalibration).toBe(2);
    expect(last).toBeGreaterThan(0);
    expect(plan.stages.map((st: { exact?: boolean }) => st.exact === true)).toEqual(plan.stages.map((_: unknown, i: number) => i === last));
    expect(plan.generations).toBeGreaterThanOrEqual(30);
    // The warm start is judged as the parent is: pruned sequentially.
    expect(a.start.exact).toBe(true);
    // Every exact evaluation spent its minibatch and the 2 calibration windows of 64 tokens; the budget holds them all.
    const [header, ...lines] = readFileSync(join(dir, "history.csv"), "utf8").trim().split("\n");
    const column = (name: string) => header!.split(",").indexOf(name);
    const fresh = lines.map((l) => l.split(",")).filter((f) => f[column("cached")] === "false");
    const exactTokens = fresh.filter((f) => Number(f[column("stage")]) === last).map((f) => Number(f[column("tokens")]));
    expect(exactTokens.length).toBeGreaterThan(0);
    expect(new Set(exactTokens)).toEqual(new Set([plan.stages[last].tokens + 2 * 64]));
    const spent = spentTokens(dir);
    expect(spent).toBeLessThanOrEqual(budget);
    expect(spent).toBeGreaterThanOrEqual(0.9 * budget);
    // Stopped after 4 generations and resumed: the same history, exact scores included.
    const resumed = join(root, "exact-resumed");
    jsonOf(evosparse(...args, "--out", resumed, "--generations", "4", "--json"));
    jsonOf(evosparse("search", "--resume", resumed, "--generations", "100000", "--json"));
    expect(historyOf(resumed)).toEqual(historyOf(dir));

    // Magnitude prunes alike in both modes, and without a budget nothing bounds the exact stage's cost: no exact stage.
    const m = jsonOf(evosparse(...args, "--metric", "magnitude", "--generations", "1", "--out", join(root, "exact-magnitude"), "--json"));
    expect(m.settings.plan.stages.some((st: { exact?: boolean }) => st.exact === true)).toBe(false);
    const unbounded = jsonOf(evosparse(...small.slice(0, -2), "--baselines", "uniform", "--generations", "1", "--out", join(root, "exact-no-budget"), "--json"));
    expect(unbounded.settings.plan.from).toBe("no budget: the default plan");
    // An evaluation budget alone: the default plan (16 children, then the best 4 and the parent) for the generations it pays for.
    const evals = evosparse(...small.slice(0, -2), "--baselines", "uniform", "--budget-evals", "42", "--out", join(root, "exact-evals"));
    expect(evals.code, evals.stderr).toBe(0);
    expect(evals.stderr.split("\n").find((l) => l.startsWith("plan ("))).toMatch(/^plan \(--budget-evals 42: the default plan\): .*, about 2 generations in the budget$/);
    expect(evals.stderr.split("\n").find((l) => l.startsWith("generation: "))).toMatch(/^generation: 1\/2 /);
    expect(unbounded.settings.plan.stages.some((st: { exact?: boolean }) => st.exact === true)).toBe(false);
    // More calibration windows than the run has: refused in one line.
    const refused = evosparse(...args, "--exact-calibration", "3", "--out", join(root, "exact-refused"));
    expect(refused.code).not.toBe(0);
    expect(errorLines(refused.stderr)).toEqual(["evosparse: --exact-calibration 3 is above --nsamples 2: the exact stage prunes with the first of the run's calibration windows"]);
  }, 600_000);

  it("refuses an unknown baseline in one line, before writing anything", () => {
    const out = join(root, "refused");
    const r = evosparse(...small, "--baselines", "uniform,nosuch", "--out", out);
    expect(r.code).not.toBe(0);
    expect(existsSync(out)).toBe(false);
    expect(errorLines(r.stderr)).toEqual([`evosparse: --baselines: unknown method "nosuch"; known: ${["alphapruning", "atp", "dlp", "dsa", "evopress", "mrp", "msp", "msp-nm", "owl", "uniform"].join(", ")}`]);
  });

  it("says what a space's own plan costs, and refuses in one line a budget that runs out before its first generation ends", () => {
    const r = evosparse(...small.slice(0, -2), "--space", "evopress-published.json", "--baselines", "uniform", "--budget-tokens", "20000", "--out", join(root, "published"));
    // 64 children on 2048 tokens, the best 8 on 16384, the best 2 and the parent on 65536 (33, 261 and 1041 windows of 63 scored tokens).
    expect(r.stderr.split("\n").find((l) => l.startsWith("plan ("))).toMatch(
      /^plan \(the space evopress-published\.json\): 64 children on 33 windows .*; 461349 tokens a generation, about 0 generations in the budget \(fewer than 30: the plan of evopress-published\.json costs that much; without --space the run derives one from the budget\)$/,
    );
    expect(r.code).toBe(2);
    expect(errorLines(r.stderr)).toEqual([
      "evosparse: --budget-tokens 20000 ran out in the search's first generation, before its last stage chose a best: one generation of its plan costs more (the plan line says how much); give a larger budget or a cheaper plan",
    ]);
  });
});

describe("the winner of the final table", () => {
  const row = (method: string, validation: number | null): FinalResult => ({ method, validation, test: 1, sparsities: [] });
  it("is the lowest validation fitness, the search's on a tie, and a beaten search says so in one line", () => {
    expect(winnerOf([row("evopress", 3.6), row("owl", 3.7)])).toBe("evopress");
    expect(winnerOf([row("evopress", 3.627), row("owl", 3.599), row("uniform", 4)])).toBe("owl");
    expect(winnerOf([row("evopress", 3.6), row("owl", 3.6)])).toBe("evopress");
    expect(winnerOf([row("evopress", null), row("owl", 3.6)])).toBe("owl");
    const line = beatenLine("evopress", "owl", [row("evopress", 3.627), row("owl", 3.599)], "kl");
    expect(line).toBe("owl beats the evopress search on validation kl (3.5990 against 3.6270): best-allocation.csv holds the search's best, owl-allocation.csv owl's");
    expect(line).not.toMatch(/\n/);
  });
});
