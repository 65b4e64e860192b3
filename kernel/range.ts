/**
 * Address ranges and their validation. Every operation that takes a range checks
 * it here before any system call: the types, page alignment, a non-zero length,
 * and that `address + length` stays below 2^64.
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { pageRange } from "./range.ts";
 * const r = pageRange({ address: 0x10000n, length: 2 * Region.pageSize }, "example");
 * console.log(r.start, r.len); // 65536n 8192n
 * ```
 *
 * @module
 */

import { invalid } from "./errors.ts";
import { describe } from "./_validate.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";

/** A span of memory: a start address and a length in bytes. A `Region` is a `Range`. */
export interface Range {
  /** The first byte's address. */
  readonly address: bigint;
  /** Length in bytes. */
  readonly length: number | bigint;
}

/** Something that can widen itself to whole pages (a `Region` over memory it does not own, for example). */
export interface PageSpanned {
  /** The smallest page-aligned range that covers it. */
  readonly pageSpan: Range;
}

/** A range as `start`/`len` bigints, ready for the kernel. */
export interface KernelRange {
  /** Page-aligned start. */
  readonly start: bigint;
  /** Page-multiple length. */
  readonly len: bigint;
}

const LIMIT = 1n << 64n;

/** Converts a length given as a number or bigint, refusing what is not a non-negative integer. */
export function toLength(length: unknown, operation: string, name = "length"): bigint {
  if (typeof length === "bigint") {
    if (length < 0n) throw invalid(operation, `${name} must not be negative`, { [name]: length });
    return length;
  }
  if (typeof length !== "number") {
    throw new TypeError(`${operation}: ${name} must be a number or a bigint, not ${describe(length)}`);
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw invalid(operation, `${name} must be a non-negative safe integer`, { [name]: length });
  }
  return BigInt(length);
}

/** Refuses anything but a bigint address in `[0, 2^64)`. */
export function toAddress(address: unknown, operation: string, name = "address"): bigint {
  if (typeof address !== "bigint") {
    throw new TypeError(`${operation}: ${name} must be a bigint, not ${describe(address)}`);
  }
  if (address < 0n || address >= LIMIT) {
    throw invalid(operation, `${name} must be in [0, 2^64)`, { [name]: address });
  }
  return address;
}

/**
 * Validates a range for a page-granular kernel operation: the address and length
 * must be page-aligned, the length non-zero and the end at most 2^64. A value with
 * a `pageSpan` (a `Region` over memory it does not own) is widened to whole pages.
 *
 * @example
 * ```ts
 * import { pageRange } from "./range.ts";
 * try { pageRange({ address: 1n, length: 4096 }, "demo"); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function pageRange(range: Range | (Range & PageSpanned), operation: string): KernelRange {
  if (range === null || typeof range !== "object") {
    throw new TypeError(`${operation}: a range must be an object with address and length, not ${describe(range)}`);
  }
  if ("mapped" in range && range.mapped === false) {
    throw invalid(operation, "the region has been unmapped", { address: range.address });
  }
  const spanned = "pageSpan" in range ? range.pageSpan : range;
  const start = toAddress(spanned.address, operation);
  const len = toLength(spanned.length, operation);
  if (start % PAGE_SIZE_N !== 0n) {
    throw invalid(operation, `address must be page-aligned (${PAGE_SIZE})`, { start, len });
  }
  if (len === 0n) throw invalid(operation, "length must not be zero", { start, len });
  if (len % PAGE_SIZE_N !== 0n) {
    throw invalid(operation, `length must be a multiple of the page size (${PAGE_SIZE})`, { start, len });
  }
  if (start + len > LIMIT) throw invalid(operation, "address + length overflows 2^64", { start, len });
  return { start, len };
}

/** Rounds an address down to its page. */
export function pageFloor(address: bigint): bigint {
  if (typeof address !== "bigint") throw new TypeError(`pageFloor: address must be a bigint, not ${describe(address)}`);
  return address - (address % PAGE_SIZE_N);
}

/** Rounds an address up to the next page boundary. */
export function pageCeil(address: bigint): bigint {
  if (typeof address !== "bigint") throw new TypeError(`pageCeil: address must be a bigint, not ${describe(address)}`);
  const rest = address % PAGE_SIZE_N;
  return rest === 0n ? address : address + PAGE_SIZE_N - rest;
}

/** A validated page range as plain numbers, filled by {@linkcode pageRangeInto}. */
export interface NumericRange {
  /** Page-aligned start. */
  start: number;
  /** Page-multiple length. */
  len: number;
}

/** A bigint's 64 bits as two 32-bit halves: `Number(bigint)` costs several times this on a hot path. */
const wide = new BigUint64Array(1);
const halves = new Uint32Array(wide.buffer);
const SAFE_N = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * A non-negative bigint below 2^53 as a number, or -1 for anything else (a
 * negative or larger bigint), without `Number()`'s conversion.
 *
 * @example
 * ```ts
 * import { bigintToSafeNumber } from "./range.ts";
 * console.log(bigintToSafeNumber(0x7f0000001000n), bigintToSafeNumber(-1n)); // 139637976731648 -1
 * ```
 */
export function bigintToSafeNumber(value: bigint): number {
  if (value < 0n || value > SAFE_N) return -1;
  wide[0] = value;
  return halves[1]! * 4294967296 + halves[0]!;
}

/**
 * {@linkcode pageRange} for a call's hot path: the same checks and the same
 * errors, but the result goes into `out` as numbers, without allocating and
 * without a number→bigint conversion. Returns `false` (leaving `out` alone) for a
 * valid range that ends above 2^53, which no user-space address does on x86_64
 * or aarch64: the caller then takes the bigint path, and the kernel answers.
 *
 * @example
 * ```ts
 * import { type NumericRange, pageRangeInto } from "./range.ts";
 * const out: NumericRange = { start: 0, len: 0 };
 * pageRangeInto({ address: 0x10000n, length: 8192 }, "example", out);
 * console.log(out.start, out.len); // 65536 8192
 * ```
 */
export function pageRangeInto(range: Range | (Range & PageSpanned), operation: string, out: NumericRange): boolean {
  if (range !== null && typeof range === "object" && !("mapped" in range && range.mapped === false)) {
    const spanned = "pageSpan" in range ? range.pageSpan : range;
    const address = spanned.address;
    const length = spanned.length;
    if (typeof address === "bigint") {
      const start = bigintToSafeNumber(address);
      const len = typeof length === "number" ? length : typeof length === "bigint" ? bigintToSafeNumber(length) : -1;
      if (
        start >= 0 && len > 0 && start % PAGE_SIZE === 0 && len % PAGE_SIZE === 0 &&
        start + len <= Number.MAX_SAFE_INTEGER
      ) {
        out.start = start;
        out.len = len;
        return true;
      }
    }
  }
  // Anything else: the general check throws the precise error, or passes a range above 2^53.
  pageRange(range, operation);
  return false;
}
