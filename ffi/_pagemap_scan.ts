/**
 * The PAGEMAP_SCAN ioctl (Linux 6.7) with a reusable argument and output vector,
 * and raw reads of `/proc/<pid>/pagemap` entries.
 *
 * @module
 */

import { PAGEMAP_SCAN } from "./uapi.ts";
import { addressOf, ioctl, pread } from "./_libc.ts";
import { type PageRegion, SIZEOF_PM_SCAN_ARG } from "./_structs.ts";

/** One scan's worth of buffers: the `pm_scan_arg` and a `page_region` vector, reused across calls. */
export class ScanBuffers {
  readonly #arg = new BigUint64Array(SIZEOF_PM_SCAN_ARG / 8);
  readonly #argBytes = new Uint8Array(this.#arg.buffer);
  readonly #arg32 = new Uint32Array(this.#arg.buffer);
  readonly #vec: BigUint64Array;
  readonly #vec32: Uint32Array;
  readonly #vecAddress: bigint;
  /** How many `page_region`s one ioctl can return. */
  readonly capacity: number;

  /** Buffers for up to `capacity` regions per ioctl. */
  constructor(capacity: number) {
    this.capacity = capacity;
    this.#vec = new BigUint64Array(Math.max(capacity, 1) * 3);
    this.#vec32 = new Uint32Array(this.#vec.buffer);
    this.#vecAddress = addressOf(this.#vec);
    this.#arg[0] = BigInt(SIZEOF_PM_SCAN_ARG);
  }

  /**
   * Runs one PAGEMAP_SCAN over `[start, end)`: the number of regions written, or
   * `-errno`. Read them with {@linkcode region}; the walk stopped at {@linkcode walkEnd}.
   */
  scan(
    fd: number,
    start: bigint,
    end: bigint,
    flags: bigint,
    maxPages: bigint,
    categoryInverted: bigint,
    categoryMask: bigint,
    categoryAnyofMask: bigint,
    returnMask: bigint,
    vecLen: number = this.capacity,
  ): number {
    const a = this.#arg;
    a[0] = BigInt(SIZEOF_PM_SCAN_ARG);
    a[1] = flags;
    a[2] = start;
    a[3] = end;
    a[4] = 0n;
    a[5] = vecLen === 0 ? 0n : this.#vecAddress;
    a[6] = BigInt(vecLen);
    a[7] = maxPages;
    a[8] = categoryInverted;
    a[9] = categoryMask;
    a[10] = categoryAnyofMask;
    a[11] = returnMask;
    return ioctl(fd, PAGEMAP_SCAN, this.#argBytes);
  }

  /**
   * Sets the query of the following {@linkcode scanFrom} calls (flags and category
   * masks), so that a walk over many ioctls converts no bigint per call.
   */
  setQuery(
    flags: bigint,
    categoryInverted: bigint,
    categoryMask: bigint,
    categoryAnyofMask: bigint,
    returnMask: bigint,
  ): void {
    const a = this.#arg;
    a[0] = BigInt(SIZEOF_PM_SCAN_ARG);
    a[1] = flags;
    a[8] = categoryInverted;
    a[9] = categoryMask;
    a[10] = categoryAnyofMask;
    a[11] = returnMask;
  }

  /**
   * Runs one PAGEMAP_SCAN over `[start, end)` with the query set by
   * {@linkcode setQuery}. Addresses and `maxPages` are plain numbers (below 2^53,
   * which every user-space address on x86_64 and aarch64 is): nothing is allocated.
   * Returns the number of regions written, or `-errno`.
   */
  scanFrom(fd: number, start: number, end: number, maxPages: number, vecLen: number = this.capacity): number {
    const a = this.#arg32;
    setU64(a, 4, start);
    setU64(a, 6, end);
    setU64(a, 8, 0);
    if (vecLen === 0) setU64(a, 10, 0);
    else this.#arg[5] = this.#vecAddress;
    setU64(a, 12, vecLen);
    setU64(a, 14, maxPages);
    return ioctl(fd, PAGEMAP_SCAN, this.#argBytes);
  }

  /** `walk_end` of the last walk as a number. */
  get walkEndNumber(): number {
    return this.#arg32[9]! * 4294967296 + this.#arg32[8]!;
  }

  /** Start address of region `i` of the last scan, as a number. */
  startOf(i: number): number {
    return this.#vec32[i * 6 + 1]! * 4294967296 + this.#vec32[i * 6]!;
  }

  /** End address (exclusive) of region `i` of the last scan, as a number. */
  endOf(i: number): number {
    return this.#vec32[i * 6 + 3]! * 4294967296 + this.#vec32[i * 6 + 2]!;
  }

  /** Categories of region `i` of the last scan, as a number (every `PAGE_IS_*` bit fits in 32 bits). */
  categoriesOf(i: number): number {
    return this.#vec32[i * 6 + 4]!;
  }

  /** Where the last walk ended (`walk_end`). */
  get walkEnd(): bigint {
    return this.#arg[4]!;
  }

  /** Start of region `i` of the last scan. */
  regionStart(i: number): bigint {
    return this.#vec[i * 3]!;
  }

  /** End (exclusive) of region `i` of the last scan. */
  regionEnd(i: number): bigint {
    return this.#vec[i * 3 + 1]!;
  }

  /** Categories of region `i` of the last scan. */
  regionCategories(i: number): bigint {
    return this.#vec[i * 3 + 2]!;
  }

  /** Region `i` of the last scan as an object. */
  region(i: number): PageRegion {
    return { start: this.regionStart(i), end: this.regionEnd(i), categories: this.regionCategories(i) };
  }
}

/** Writes a non-negative number below 2^53 as the u64 at u32 index `i` (little-endian). */
function setU64(words: Uint32Array, i: number, value: number): void {
  words[i] = value % 4294967296;
  words[i + 1] = Math.floor(value / 4294967296);
}

/**
 * Reads `count` 8-byte pagemap entries for the pages starting at `address` (one
 * `pread` for the whole run): the number of entries read, or `-errno`.
 */
export function readPagemapEntries(fd: number, address: bigint, pageSize: number, into: BigUint64Array): number {
  const offset = (address / BigInt(pageSize)) * 8n;
  const got = pread(fd, new Uint8Array(into.buffer, into.byteOffset, into.byteLength), into.byteLength, offset);
  return got < 0 ? got : got / 8;
}
