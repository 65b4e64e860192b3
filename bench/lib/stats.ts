/**
 * The few statistics `bench/compare.ts` reports: medians, the spread that flags
 * a noisy result, and the per-pair ratio ours / C.
 *
 * @example
 * ```ts
 * import { summarize } from "./stats.ts";
 * const s = summarize([100, 104, 98]);
 * console.log(s.median, s.spread.toFixed(2)); // 100 0.06
 * ```
 *
 * @module
 */

/** A set of repeated measurements, summarized. */
export interface Summary {
  /** Every value, in run order. */
  readonly values: readonly number[];
  /** The median. */
  readonly median: number;
  /** The smallest value. */
  readonly min: number;
  /** The largest value. */
  readonly max: number;
  /** `(max - min) / median`: how far apart the runs were. */
  readonly spread: number;
}

/** The median of a non-empty list (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Median, min, max and spread of a list of measurements. */
export function summarize(values: readonly number[]): Summary {
  const m = median(values);
  const min = Math.min(...values);
  const max = Math.max(...values);
  return { values: [...values], median: m, min, max, spread: m > 0 ? (max - min) / m : 0 };
}

/** The per-pair ratios `ours[i] / c[i]`, summarized (run i of each side ran back to back). */
export function ratios(ours: readonly number[], c: readonly number[]): Summary {
  const n = Math.min(ours.length, c.length);
  const values: number[] = [];
  for (let i = 0; i < n; i++) values.push(ours[i]! / c[i]!);
  return summarize(values);
}

/** The per-pair differences `ours[i] - c[i]`, summarized (for a goal on the cost above the reference). */
export function differences(ours: readonly number[], c: readonly number[]): Summary {
  const n = Math.min(ours.length, c.length);
  const values: number[] = [];
  for (let i = 0; i < n; i++) values.push(ours[i]! - c[i]!);
  const m = median(values);
  return { values, median: m, min: Math.min(...values), max: Math.max(...values), spread: 0 };
}
