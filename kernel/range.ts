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
