/**
 * `evosparse search --screen` on the embedded model: msp's candidates screened on stage
 * minibatches through the real host, the population scored on the fitness windows, the
 * token budget kept, and the same history with 1 and 2 workers.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { embeddedModel, errorLines, evosparse, evosparseWithEnv, historyOf, jsonOf, tempRoot } from "./helpers/embedded.ts";

const root = tempRoot("search-screen");

describe("evosparse search --screen", () => {
  const args = [
    "search", "--method", "msp", "--fitness", "kl", "--model", embeddedModel, "--calib", "brown:calibration", "--fitness-data", "brown:validation", "--eval", "brown:test",
    "--nsamples", "2", "--seqlen", "64", "--fitness-windows", "2", "--eval-windows", "2", "--sparsity", "0.6", "--seed", "3",
    "--population", "3", "--generations", "20", "--screen", "8@200,4@400", "--budget-tokens", "8000",
  ];

  it("screens on minibatches, scores the population on the fitness windows, keeps the budget, and agrees across worker counts", () => {
    const one = join(root, "one");
    const a = jsonOf(evosparse(...args, "--out", one, "--json"));
    const b = jsonOf(evosparse(...args, "--out", join(root, "two"), "--workers", "2", "--json"));
    expect(historyOf(join(root, "two"))).toEqual(historyOf(one));
    expect(b.best).toEqual(a.best);
    expect(a.stoppedBy).toBe("budget");
    const [header, ...lines] = readFileSync(join(one, "history.csv"), "utf8").trim().split("\n");
    const names = header!.split(",");
    const rows = lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [names[i]!, v])));
    expect(rows.reduce((n, r) => n + Number(r.tokens), 0)).toBeLessThanOrEqual(8000);
    const fresh = (stage: string) => rows.filter((r) => r.stage === stage && r.cached === "false").map((r) => Number(r.tokens));
    expect(Math.min(...fresh("0"))).toBeGreaterThanOrEqual(200);
    expect(Math.min(...fresh("1"))).toBeGreaterThanOrEqual(400);
    // The population's scores: the two fitness windows of 64, every time.
    expect(new Set(fresh("2"))).toEqual(new Set([126]));
    expect(rows.filter((r) => r.stage === "0" && r.generation === "0").length).toBe(8);
    expect(rows.filter((r) => r.stage === "2" && r.generation === "0").length).toBe(3);
  });

  it("is refused for a method with its own stages, and when screens are smaller than the population", () => {
    const r = evosparse(...args.map((w) => (w === "msp" ? "evopress" : w)), "--out", join(root, "refused"));
    expect(r.code).toBe(2);
    expect(errorLines(r.stderr)).toEqual(["evosparse: --screen: method evopress runs its own strategy (its search space); dsa, msp and msp-nm screen"]);
    const small = evosparse(...args.map((w) => (w === "8@200,4@400" ? "2@200" : w)), "--out", join(root, "small"));
    expect(small.code).toBe(2);
    expect(errorLines(small.stderr)[0]).toMatch(/^evosparse: --screen 2@200: screening stage 0 candidates must be a whole number in \[3, Infinity\], got 2/);
  });

  const without = (flags: string[]) => args.filter((_, i) => !flags.includes(args[i]!) && !flags.includes(args[i - 1]!));

  it("derives the screen from the budget when none is given, and says when the fitness windows leave fewer than 30 generations", () => {
    const derived = without(["--screen", "--generations"]);
    const dir = join(root, "derived");
    const r = evosparse(...derived.map((w) => (w === "8000" ? "2000" : w)), "--out", dir);
    expect(r.code, r.stderr).toBe(0);
    const settings = JSON.parse(readFileSync(join(dir, "settings.json"), "utf8"));
    // The cheapest screen (2 candidates a place on one window); 2 places on the 2 fitness windows of 63 scored tokens.
    expect(settings.screen).toBe("6@63");
    const line = r.stderr.split("\n").find((l) => l.startsWith("plan: --screen"));
    // 6 candidates on one window of 63, then the 2 places: 378 + 252 tokens a generation.
    expect(line).toMatch(/then 2 places on the fitness windows; at most 630 tokens a generation, about 3 generations in the budget \(fewer than 30: the places on the fitness windows alone cost 252 tokens a generation\)$/);
    // The progress counts against the plan's generations, not the cap of a run without a budget (10).
    expect(r.stderr.split("\n").find((l) => l.startsWith("generation: "))).toMatch(/^generation: 1\/3 /);
  });

  it("derives the screen from a time budget, says how many generations it pays for, and counts progress against them", () => {
    const dir = join(root, "timed");
    const r = evosparse(...without(["--screen", "--generations", "--budget-tokens"]), "--time-budget", "12", "--out", dir);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, "settings.json"), "utf8")).screen).toMatch(/^\d+@63(,\d+@252)?$/);
    const line = r.stderr.split("\n").find((l) => l.startsWith("plan: --screen")) ?? "";
    const generations = /tokens a generation, about (\d+) generations in the budget/.exec(line);
    expect(generations, line).not.toBeNull();
    expect(r.stderr.split("\n").find((l) => l.startsWith("generation: "))).toMatch(new RegExp(`^generation: 1/${Math.max(1, Number(generations![1]))} `));
  });

  const firstProgress = (stderr: string) => stderr.split("\n").find((l) => l.startsWith("generation: ")) ?? "";

  it("a resumed time-budget run counts its progress at the rate it recorded, against the same plan", () => {
    const dir = join(root, "timed-resumed");
    const timed = [...without(["--screen", "--generations", "--budget-tokens"]), "--time-budget", "12", "--out", dir];
    const crash = evosparseWithEnv({ EVOSPARSE_CRASH_AFTER: "generation:1" }, ...timed);
    expect(crash.signal).toBe("SIGKILL");
    const planned = /^generation: 1\/(\d+) /.exec(firstProgress(crash.stderr));
    expect(planned, crash.stderr).not.toBeNull();
    const settings = JSON.parse(readFileSync(join(dir, "settings.json"), "utf8"));
    expect(settings.tokensPerSecond).toBeGreaterThan(0);
    const resumed = evosparse("search", "--resume", dir);
    expect(resumed.code, resumed.stderr).toBe(0);
    // The resumed run measures no new rate: its plan line and its progress count the same generations.
    expect(resumed.stderr.split("\n").find((l) => l.startsWith("plan: --screen"))).toContain(`about ${planned![1]} generations in the budget`);
    expect(firstProgress(resumed.stderr)).toMatch(new RegExp(`^generation: 2/${planned![1]} `));
  });

  it("an evaluation budget alone counts progress against the generations it pays for", () => {
    // No screen: generation 0 scores the population of 3, each later one its 2 places after the elite, so 9 evaluations pay for 4.
    const dir = join(root, "evals");
    const r = evosparse(...without(["--screen", "--generations", "--budget-tokens"]), "--budget-evals", "9", "--out", dir);
    expect(r.code, r.stderr).toBe(0);
    expect(firstProgress(r.stderr)).toMatch(/^generation: 1\/4 /);
    expect(JSON.parse(readFileSync(join(dir, "summary.json"), "utf8")).generations).toBe(4);
  });
});
