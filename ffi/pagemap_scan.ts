/**
 * The PAGEMAP_SCAN ioctl (Linux 6.7) with a reusable argument and output vector,
 * and raw reads of `/proc/<pid>/pagemap` entries.
 *
 * @module
 */

import { PAGEMAP_SCAN } from "../uapi.ts";
import { addressOf, ioctl, pread } from "./libc.ts";
import { type PageRegion, SIZEOF_PM_SCAN_ARG } from "./structs.ts";

/** One scan's worth of buffers: the `pm_scan_arg` and a `page_region` vector, reused across calls. */
export class ScanBuffers {
  readonly #arg = new BigUint64Array(SIZEOF_PM_SCAN_ARG / 8);
  readonly #argBytes = new Uint8Array(this.#arg.buffer);
  readonly #vec: BigUint64Array;
  readonly #vecAddress: bigint;
  /** How many `page_region`s one ioctl can return. */
  readonly capacity: number;

  /** Buffers for up to `capacity` regions per ioctl. */
  constructor(capacity: number) {
    this.capacity = capacity;
    this.#vec = new BigUint64Array(Math.max(capacity, 1) * 3);
    this.#vecAddress = addressOf(this.#vec);
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

/**
 * Reads `count` 8-byte pagemap entries for the pages starting at `address` (one
 * `pread` for the whole run): the number of entries read, or `-errno`.
 */
export function readPagemapEntries(fd: number, address: bigint, pageSize: number, into: BigUint64Array): number {
  const offset = (address / BigInt(pageSize)) * 8n;
  const got = pread(fd, new Uint8Array(into.buffer, into.byteOffset, into.byteLength), into.byteLength, offset);
  return got < 0 ? got : got / 8;
}
