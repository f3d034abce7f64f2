/**
 * Numeric settings: what a value may be, in words and as a check. A value is either
 * accepted and used exactly as given, or refused with one line naming its flag.
 *
 * yargs' own `type: "number"` turns `abc` into NaN and `0x10` into 16, so the raw text
 * would be lost; the command line passes the text and these rules accept plain decimal
 * numbers only.
 */
import { UsageError } from "../errors.ts";

export interface NumberRule {
  /** A whole number (a safe integer). */
  readonly whole?: boolean;
  readonly min?: number;
  readonly max?: number;
  /** The bound `min` itself is refused (e.g. a time budget > 0). */
  readonly minExclusive?: boolean;
  /** The bound `max` itself is refused (e.g. a sparsity < 1). */
  readonly maxExclusive?: boolean;
}

const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** What the rule accepts, in words: "a whole number >= 1", "a number in [0, 1)". */
export const describeRule = (rule: NumberRule): string => {
  const kind = rule.whole ? "a whole number" : "a number";
  const { min, max } = rule;
  if (min !== undefined && max !== undefined) return `${kind} in ${rule.minExclusive ? "(" : "["}${min}, ${max}${rule.maxExclusive ? ")" : "]"}`;
  if (min !== undefined) return `${kind} ${rule.minExclusive ? ">" : ">="} ${min}`;
  if (max !== undefined) return `${kind} ${rule.maxExclusive ? "<" : "<="} ${max}`;
  return kind;
};

/** The value of `--flag` under `rule`, or a UsageError naming the flag and what it takes. */
export const parseNumberFlag = (flag: string, raw: unknown, rule: NumberRule): number => {
  const refuse = (shown: string): never => {
    throw new UsageError({ problem: `--${flag} ${shown} is not ${describeRule(rule)}` });
  };
  if (Array.isArray(raw)) throw new UsageError({ problem: `--${flag} is given ${raw.length} times: give it once` });
  let value: number;
  if (typeof raw === "number") value = raw;
  else if (typeof raw === "string") {
    const text = raw.trim();
    if (text === "") throw new UsageError({ problem: `--${flag} needs a value: ${describeRule(rule)}` });
    if (!DECIMAL.test(text)) refuse(JSON.stringify(raw));
    value = Number(text);
  } else {
    throw new UsageError({ problem: `--${flag} needs a value: ${describeRule(rule)}` });
  }
  const shown = typeof raw === "string" ? raw.trim() : String(raw);
  if (!Number.isFinite(value)) refuse(shown);
  if (rule.whole && Number.isInteger(value) && !Number.isSafeInteger(value)) {
    // A whole number all the same, only too large to be held exactly: say so.
    throw new UsageError({
      problem: value > 0 ? `--${flag} ${shown} is too large: the largest whole number it takes is ${Number.MAX_SAFE_INTEGER}` : `--${flag} ${shown} is too small: the smallest whole number it takes is ${Number.MIN_SAFE_INTEGER}`,
    });
  }
  if (rule.whole && !Number.isSafeInteger(value)) refuse(shown);
  if (rule.min !== undefined && (value < rule.min || (rule.minExclusive && value === rule.min))) refuse(shown);
  if (rule.max !== undefined && (value > rule.max || (rule.maxExclusive && value === rule.max))) refuse(shown);
  // -0 is 0 for every flag; keep the printed settings free of "-0".
  return value === 0 ? 0 : value;
};

/** Common rules. */
export const WHOLE_POSITIVE: NumberRule = { whole: true, min: 1 };
export const WHOLE_NON_NEGATIVE: NumberRule = { whole: true, min: 0 };
/** Any safe integer: the whole-number check already bounds it. */
export const SEED: NumberRule = { whole: true };
/** A window must hold at least two tokens for one of them to be scored. */
export const SEQLEN: NumberRule = { whole: true, min: 2 };
export const SPARSITY: NumberRule = { min: 0, max: 1, maxExclusive: true };

