/**
 * Argument checks shared by the public entry points, so that a wrong type is a
 * `TypeError` that names the operation, and a wrong value a `UffdError` with the
 * errno the kernel would give — never a native "cannot read properties of null"
 * or an FFI conversion error. Every module checks its arguments with these (one
 * message per kind of mistake). Internal.
 *
 * @module
 */

import { invalid } from "./errors.ts";

const EMPTY = Object.freeze({});

/**
 * An options bag: omitted (`undefined`, read as a shared empty object, so hot
 * paths allocate nothing) or an object; anything else is a `TypeError`.
 */
export function optionsBag<T extends object>(value: T | undefined, operation: string): T {
  if (value === undefined) return EMPTY as T;
  if (value === null || typeof value !== "object") {
    throw new TypeError(`${operation}: options must be an object, not ${describe(value)}`);
  }
  return value;
}

/**
 * A C `int` argument (flags, advice, protection): a number that is a 32-bit
 * integer. Another type is a `TypeError`; a number out of range is `EINVAL`.
 */
export function cInt(value: unknown, operation: string, name: string): number {
  if (typeof value !== "number") {
    throw new TypeError(`${operation}: ${name} must be a number, not ${describe(value)}`);
  }
  if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw invalid(operation, `${name} must be a 32-bit integer`, { [name]: value });
  }
  return value;
}

/** A bigint argument (a mask, an address); another type is a `TypeError`. */
export function bigintArg(value: unknown, operation: string, name: string): bigint {
  if (typeof value !== "bigint") {
    throw new TypeError(`${operation}: ${name} must be a bigint, not ${describe(value)}`);
  }
  return value;
}

/** A short description of a value's type for messages: `null`, `an array`, `string`… */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

/**
 * A count option: `fallback` when omitted, else an integer in `[1, max]`. Another
 * type is a `TypeError`; a number out of range is `EINVAL`, whose message names
 * the range (`in [1, 4096]`, or `a positive integer` without a `max`).
 */
export function positiveInteger(
  value: unknown,
  operation: string,
  name: string,
  fallback?: number,
  max: number = Infinity,
): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== "number") throw new TypeError(`${operation}: ${name} must be a number`);
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    const range = max === Infinity ? "a positive integer" : `an integer in [1, ${max}]`;
    throw invalid(operation, `${name} must be ${range}`, { [name]: value });
  }
  return value;
}

/** An optional boolean option: `false` when omitted; another type is a `TypeError`. */
export function flag(value: unknown, operation: string, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") throw new TypeError(`${operation}: ${name} must be a boolean`);
  return value;
}
