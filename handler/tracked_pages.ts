/**
 * The pages a fault handler tracks: the registered ranges it was started with,
 * numbered one after the other (the first range's pages are 0…n-1, the next
 * range continues at n), and page sets over that numbering as bitmaps (one bit
 * per page) in shared memory, read as runs of consecutive pages.
 *
 * The numbering is fixed when the handler starts: a range that later moves
 * (`mremap` with `EVENT_REMAP`) keeps its page numbers at its new address.
 *
 * @example
 * ```ts
 * import { pageRuns } from "./tracked_pages.ts";
 * const bitmap = new Uint8Array([0b1110_0001, 0b0000_0001]);
 * console.log(pageRuns(bitmap, 16)); // [{ firstPage: 0, pages: 1 }, { firstPage: 5, pages: 4 }]
 * ```
 *
 * @module
 */

import { invalid } from "../kernel/errors.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { pageRange, type Range } from "../kernel/range.ts";

/** A registered range as a handler tracks it. */
export interface TrackedRange {
  /** Its address when the handler started. */
  readonly address: bigint;
  /** Length in bytes. */
  readonly length: number;
  /** The number of its first page in the handler's page numbering. */
  readonly firstPage: number;
  /** Number of pages. */
  readonly pages: number;
  /** The registration's modes, as `Userfaultfd.registrations` names them (`"wp"`, `"missing+wp"`, …). */
  readonly mode: string;
  /** The size of the pages backing it: the base page size, or the huge page size on hugetlbfs. */
  readonly pageSize: number;
}

/** Consecutive pages `[firstPage, firstPage + pages)` in a handler's page numbering. */
export interface PageRun {
  /** The first page's number. */
  readonly firstPage: number;
  /** Number of pages. */
  readonly pages: number;
}

/** The page size backing `address`, from `/proc/self/smaps` (the base page size when unreadable). */
function kernelPageSize(address: bigint): number {
  try {
    const smaps = Deno.readTextFileSync("/proc/self/smaps");
    let inside = false;
    for (const line of smaps.split("\n")) {
      const header = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
      if (header) inside = BigInt(`0x${header[1]}`) <= address && address < BigInt(`0x${header[2]}`);
      else if (inside && line.startsWith("KernelPageSize:")) return Number(/(\d+)/.exec(line)![1]) * 1024;
    }
  } catch { /* no /proc: assume base pages */ }
  return PAGE_SIZE;
}

/**
 * Numbers the pages of `ranges` one range after the other, from `firstPage`. Each
 * range must lie inside one of `registrations` (whose mode it takes); ranges must
 * not overlap each other nor those `already` tracked. A range with a numeric
 * `pageSize` (a `Region`) brings its page size; otherwise it is read from
 * `/proc/self/smaps`.
 */
export function trackRanges(
  ranges: Iterable<Range>,
  registrations: readonly { start: bigint; end: bigint; mode: string }[],
  operation: string,
  firstPage = 0,
  already: readonly TrackedRange[] = [],
): TrackedRange[] {
  const tracked: TrackedRange[] = [];
  let next = firstPage;
  for (const range of ranges) {
    const { start, len } = pageRange(range, operation);
    const end = start + len;
    const home = registrations.find((r) => r.start <= start && end <= r.end);
    if (!home) {
      throw invalid(operation, "the range is not registered on this userfaultfd (register it before starting)", {
        start,
        len,
      });
    }
    const clash = [...already, ...tracked].find((t) => t.address < end && start < t.address + BigInt(t.length));
    if (clash) throw invalid(operation, "tracked ranges overlap", { start, len, other: clash.address });
    const pages = Number(len) / PAGE_SIZE;
    const given = (range as { pageSize?: unknown }).pageSize;
    const pageSize = typeof given === "number" ? given : kernelPageSize(start);
    tracked.push(
      Object.freeze({ address: start, length: Number(len), firstPage: next, pages, mode: home.mode, pageSize }),
    );
    next += pages;
  }
  return tracked;
}

/** Bytes of a bitmap with one bit per page. */
export function bitmapBytes(pages: number): number {
  return Math.ceil(pages / 8);
}

/**
 * The runs of set bits in the first `pages` bits of `bitmap` (bit `i % 8` of byte
 * `i >> 3` is page `i`).
 *
 * @example
 * ```ts
 * import { pageRuns } from "./tracked_pages.ts";
 * console.log(pageRuns(new Uint8Array([0xff, 0x01]), 16)); // [{ firstPage: 0, pages: 9 }]
 * ```
 */
export function pageRuns(bitmap: Uint8Array, pages: number): PageRun[] {
  const runs: PageRun[] = [];
  let first = -1;
  const bytes = Math.min(bitmap.length, bitmapBytes(pages));
  for (let b = 0; b < bytes; b++) {
    const byte = bitmap[b]!;
    if (byte === 0 || byte === 0xff) {
      // A whole byte of the same bit: close or extend the current run in one step.
      if (byte === 0 && first >= 0) {
        runs.push({ firstPage: first, pages: b * 8 - first });
        first = -1;
      } else if (byte === 0xff && first < 0) first = b * 8;
      continue;
    }
    for (let bit = 0; bit < 8; bit++) {
      const page = b * 8 + bit;
      if (page >= pages) break;
      if (byte & (1 << bit)) {
        if (first < 0) first = page;
      } else if (first >= 0) {
        runs.push({ firstPage: first, pages: page - first });
        first = -1;
      }
    }
  }
  if (first >= 0) runs.push({ firstPage: first, pages: Math.min(pages, bytes * 8) - first });
  return runs;
}
