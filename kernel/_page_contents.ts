/**
 * Which pages of private anonymous memory hold data, and how never-touched pages
 * are made to carry write protection — both decided from the kernel profile
 * (`profile.ts`), never assumed:
 *
 * - {@linkcode fillUntouched} maps something into the never-touched pages of a
 *   registered range so that `UFFDIO_WRITEPROTECT` has a PTE to protect there (the
 *   old QEMU workaround where `WP_UNPOPULATED` is not used): `MADV_POPULATE_READ`
 *   where it maps the shared zero page, `UFFDIO_ZEROPAGE` on the holes where only
 *   that maps it (a kernel whose read faults allocate), and `MADV_POPULATE_READ`
 *   allocating real pages where nothing maps the zero page.
 * - {@linkcode PageBits} reads which pages are write-protected and which may hold
 *   data, through `PAGEMAP_SCAN` or, before Linux 6.7, the entries of
 *   `/proc/<pid>/pagemap` (the uffd-wp bit, present, exclusive, PFN), as the
 *   profile's `pageBits` decides; Workers get the decision as a {@linkcode PageBitsPlan}.
 * - {@linkcode visitDataPages} finds the pages that may hold data: present and not
 *   the zero page, or swapped out — through `PAGEMAP_SCAN` where the kernel has it and
 *   its `PFNZERO` answers hold, else through `/proc/self/pagemap` (PFN against the
 *   zero page's where PFNs are visible; a page not mapped exclusively counts as data
 *   otherwise, the safe side). With `content: true` the candidates are also read, and
 *   a page holding only zeros is left out — needed where a read fault allocates
 *   (a page only read then looks like one written).
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { visitDataPages } from "./_page_contents.ts";
 * using mem = Region.map(4 * Region.pageSize);
 * mem.bytes[Region.pageSize] = 1;
 * visitDataPages(mem, (first, pages) => console.log(first, pages)); // 1 1
 * ```
 *
 * @module
 */

import { byMapping } from "./maps.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import { kernelProfile, type UntouchedFill } from "./profile.ts";
import { MADV_POPULATE_READ } from "../ffi/linux.ts";
import { openPagemap, readPagemapRaw, releasePagemap } from "./pagemap.ts";
import { PagemapScanner, type PreparedQuery } from "./pagemap_scan.ts";
import { readPagemapEntries } from "../ffi/_pagemap_scan.ts";
import { ERRNO, failure, UffdError } from "./errors.ts";
import {
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  PAGE_IS_WRITTEN,
  PM_FILE,
  PM_MMAP_EXCLUSIVE,
  PM_PFN_MASK,
  PM_PRESENT,
  PM_SWAP,
  PM_UFFD_WP,
} from "../ffi/uapi.ts";

/** Pagemap entries read at a time (512 KiB of entries, 256 MiB of memory). */
const CHUNK = 65536;

/** A page-aligned span. */
export interface PageSpan {
  /** First byte (page-aligned). */
  readonly address: bigint;
  /** Length in bytes (a multiple of the page size). */
  readonly length: number;
}

/** Called with runs of pages, numbered from the start of the span. */
export type RunVisitor = (firstPage: number, pages: number) => void;

let entries: BigUint64Array | undefined;

/** Reads the pagemap entries of `pages` pages from `address` into a reused array. */
function readEntries(address: bigint, pages: number): BigUint64Array {
  entries ??= new BigUint64Array(CHUNK);
  return readPagemapRaw({ address, length: pages * PAGE_SIZE }, { into: entries }).subarray(0, pages);
}

/**
 * Makes the never-touched pages of `[address, address + length)` — registered on the
 * userfaultfd `fd` — present, the way `how` says (see `UntouchedFill` in
 * `profile.ts`), so that protecting the range protects them too. Pages that
 * hold something already are left alone. Returns 0, or `-errno` (`-EAGAIN` while an
 * address-space change of the range is in flight: read its event and call again).
 *
 * @param fd The userfaultfd the range is registered on (used by `"uffd-zeropage"`).
 * @param how The profile's decision, passed to Workers that cannot measure it themselves.
 * @returns 0 or `-errno`.
 *
 * @example
 * ```ts
 * import { kernelProfile, Region, Userfaultfd } from "@uffd/uffd";
 * import { fillUntouched } from "./_page_contents.ts";
 * using mem = Region.map(4 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { wp: true });
 * console.log(fillUntouched(uffd.fd, mem.address, mem.length, kernelProfile().untouchedFill)); // 0
 * ```
 */
export function fillUntouched(fd: number, address: bigint, length: number, how: UntouchedFill): number {
  if (length === 0) return 0;
  if (how === "populate-read" || how === "populate-allocates") {
    return libc.madvise(address, BigInt(length), MADV_POPULATE_READ);
  }
  if (how === "none") return -ERRNO.EOPNOTSUPP!;
  const pages = length / PAGE_SIZE;
  for (let done = 0; done < pages;) {
    const want = Math.min(CHUNK, pages - done);
    const chunk = address + BigInt(done) * PAGE_SIZE_N;
    const raw = readEntries(chunk, want);
    for (let i = 0; i < want;) {
      if ((raw[i]! & (PM_PRESENT | PM_SWAP)) !== 0n) {
        i++;
        continue;
      }
      let end = i + 1;
      while (end < want && (raw[end]! & (PM_PRESENT | PM_SWAP)) === 0n) end++;
      const rc = zeroRun(fd, Number(chunk) + i * PAGE_SIZE, (end - i) * PAGE_SIZE);
      if (rc < 0) return rc;
      i = end;
    }
    done += want;
  }
  return 0;
}

/** `UFFDIO_ZEROPAGE` over a run of holes; a page populated meanwhile (EEXIST) is stepped over. */
function zeroRun(fd: number, start: number, length: number): number {
  const end = start + length;
  while (start < end) {
    let rc = resolve.zeropage(fd, start, end - start, 0);
    if (rc === -ERRNO.ENOENT! && end - start > PAGE_SIZE) {
      rc = byMapping(start, end - start, (a, n) => resolve.zeropage(fd, a, n, 0)); // runs into the next mapping
    }
    if (rc >= end - start) return 0;
    if (rc >= 0) {
      start += rc; // a partial run: go on from there
      continue;
    }
    if (rc !== -ERRNO.EEXIST!) return rc;
    start += PAGE_SIZE; // someone populated this page meanwhile: it holds what they put there
  }
  return 0;
}

/** Whether any swap device is on (`/proc/swaps` lists more than its header); unknown counts as on. */
export function swapActive(): boolean {
  const swaps = libc.readTextFile("/proc/swaps");
  return typeof swaps !== "string" || swaps.trim().split("\n").length > 1;
}

/**
 * How {@linkcode PageBits} reads the kernel's page bits, decided once from the profile
 * (`pageBitsPlan()`) and passed as is to Workers, which do not measure a profile of
 * their own. Structured-cloneable.
 */
export interface PageBitsPlan {
  /** `PAGEMAP_SCAN` exists and its `PFNZERO` answers hold; otherwise `/proc/<pid>/pagemap` is read. */
  readonly scan: boolean;
  /** The pagemap's uffd-wp bit (57, Linux 5.17) is set on protected pages (what `unprotected()` reads without `scan`). */
  readonly wpBit: boolean;
  /** The shared zero page's frame number, when this process may see PFNs; `null` otherwise. */
  readonly zeroPfn: bigint | null;
  /** The huge zero page's first frame number (its frames: this and the next `pmdPages - 1`), or `null`. */
  readonly hugeZeroPfn: bigint | null;
  /** Pages in one PMD (512 with 4 KiB pages). */
  readonly pmdPages: number;
  /** A swap device is on: swapped pages hold data (a uffd-wp marker also reads as swapped). */
  readonly swap: boolean;
}

/**
 * The running kernel's {@linkcode PageBitsPlan}, from `kernelProfile()`.
 *
 * @example
 * ```ts
 * import { pageBitsPlan } from "./_page_contents.ts";
 * console.log(typeof pageBitsPlan().scan); // boolean
 * ```
 */
export function pageBitsPlan(): PageBitsPlan {
  const profile = kernelProfile();
  return Object.freeze({
    scan: profile.pageBits === "pagemap-scan",
    wpBit: profile.pagemap.uffdWpBit === true,
    zeroPfn: profile.pagemap.pfnVisible ? profile.zeroPage.zeroPfn : null,
    hugeZeroPfn: profile.pagemap.pfnVisible ? profile.zeroPage.hugeZeroPfn : null,
    pmdPages: (profile.thp?.pmdSize ?? 2 << 20) / PAGE_SIZE,
    swap: swapActive(),
  });
}

const SCAN = {
  /** No uffd-wp bit: a page (or hole) a write would not fault on. */
  unprotected: query(PAGE_IS_WRITTEN),
  /** Resident and not the shared zero page: holds data. */
  data: query(PAGE_IS_PRESENT | PAGE_IS_PFNZERO, PAGE_IS_PFNZERO),
  /** Swapped out (a uffd-wp marker also reads as swapped: only consulted when swap is on). */
  swapped: query(PAGE_IS_SWAPPED),
};

/**
 * A PAGEMAP_SCAN query built by hand: `prepareQuery` would probe the kernel's categories
 * first. These exist on every kernel with PAGEMAP_SCAN.
 */
function query(required: bigint, inverted = 0n): PreparedQuery {
  return Object.freeze({ flags: 0n, inverted, required, anyOf: 0n, report: 0n, maxPages: 0 });
}

/**
 * The page bits the library decides from — which pages of private anonymous memory
 * are write-protected, which hold data — read through `PAGEMAP_SCAN` where the plan
 * says it works, else from the 64-bit entries of `/proc/<pid>/pagemap` (Linux before
 * 6.7): present, exclusive, PFN against the zero page's, swapped, and the uffd-wp bit.
 * It keeps one pagemap fd of its own (by pid, so that a Worker's does not outlive it)
 * and reused buffers: no allocation per call. Close it when done.
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { PageBits, pageBitsPlan } from "./_page_contents.ts";
 * using mem = Region.map(4 * Region.pageSize);
 * mem.bytes[Region.pageSize] = 1;
 * using bits = new PageBits(pageBitsPlan());
 * bits.data(mem, (first, pages) => console.log(first, pages)); // 1 1
 * ```
 */
export class PageBits implements Disposable {
  readonly #plan: PageBitsPlan;
  readonly #scanner: PagemapScanner | undefined;
  readonly #fd: number;
  #entries: BigUint64Array | undefined;

  /** Opens `/proc/<pid>/pagemap` (this process by default). */
  constructor(plan: PageBitsPlan, pid: number = libc.getpid()) {
    this.#plan = plan;
    if (plan.scan) {
      this.#scanner = new PagemapScanner({ pid, vectorLength: 4096 });
      this.#fd = -1;
    } else {
      this.#fd = openPagemap(pid, "pagemap");
    }
  }

  /**
   * Visits the runs of pages of `span` that carry no write protection (a write would
   * not fault there: unprotected, or a hole without a marker); with `first`, stops
   * after the first page found. Returns the number of pages visited.
   *
   * @throws {UffdError} `EOPNOTSUPP` on a kernel with neither PAGEMAP_SCAN nor the pagemap's uffd-wp bit (before 5.17).
   */
  unprotected(span: PageSpan, visit: RunVisitor, options?: { first?: boolean }): number {
    if (this.#scanner) {
      const q = options?.first ? ANY_UNPROTECTED : SCAN.unprotected;
      return this.#scanner.visit(span, q, visit).pages;
    }
    if (!this.#plan.wpBit) {
      throw new UffdError({
        errno: ERRNO.EOPNOTSUPP,
        operation: "pagemap",
        detail: "this kernel reports write protection neither through PAGEMAP_SCAN (6.7+) nor in " +
          "/proc/self/pagemap (bit 57, 5.17+)",
      });
    }
    let visited = 0;
    this.#walk(span, (e) => (e & PM_UFFD_WP) === 0n, (first, pages) => {
      visited += pages;
      visit(first, pages);
    }, options?.first === true);
    return visited;
  }

  /**
   * Visits the runs of pages of `span` that may hold data: present and not the shared
   * zero page, or swapped out when swap is on. Without PFNs a page not mapped
   * exclusively counts as data (it may be a forked child's copy), the safe side.
   */
  data(span: PageSpan, visit: RunVisitor): void {
    if (this.#scanner) {
      this.#scanner.visit(span, SCAN.data, visit);
      if (this.#plan.swap) this.#scanner.visit(span, SCAN.swapped, visit);
      return;
    }
    const zeroPfn = this.#plan.zeroPfn;
    // The huge zero page's frames [hugeZero, hugeEnd), computed once: no bigint made per pagemap entry.
    const hugeZero = this.#plan.hugeZeroPfn ?? -1n;
    const hugeEnd = this.#plan.hugeZeroPfn === null ? -1n : hugeZero + BigInt(this.#plan.pmdPages);
    const swap = this.#plan.swap;
    this.#walk(
      span,
      (e) => {
        if ((e & PM_PRESENT) !== 0n) {
          // The zero page is never mapped exclusively; without PFNs a shared page might be a
          // forked child's copy of data, so only a PFN equal to the zero page's says "zero".
          // The huge zero page's frames (THP `always`: a populate-read or read fault maps it) are zeros too.
          if ((e & PM_MMAP_EXCLUSIVE) !== 0n || (e & PM_FILE) !== 0n || zeroPfn === null) return true;
          const pfn = e & PM_PFN_MASK;
          return pfn !== zeroPfn && (pfn < hugeZero || pfn >= hugeEnd);
        }
        return swap && (e & PM_SWAP) !== 0n;
      },
      visit,
      false,
    );
  }

  /** Closes the pagemap fd. Harmless twice. */
  close(): void {
    this.#scanner?.close();
    if (this.#fd >= 0) releasePagemap(this.#fd);
    (this as { close(): void }).close = () => {};
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Runs of pages whose pagemap entry satisfies `test`, read a chunk at a time. */
  #walk(span: PageSpan, test: (entry: bigint) => boolean, visit: RunVisitor, first: boolean): void {
    if (span.length === 0) return;
    const entries = this.#entries ??= new BigUint64Array(CHUNK);
    const pages = span.length / PAGE_SIZE;
    let runFirst = -1;
    let runEnd = -1;
    for (let done = 0; done < pages;) {
      const want = Math.min(CHUNK, pages - done);
      const address = span.address + BigInt(done) * PAGE_SIZE_N;
      const got = readPagemapEntries(this.#fd, address, PAGE_SIZE, entries.subarray(0, want));
      if (got < 0) throw failure("pagemap", got, { start: address, pages: want });
      if (got === 0) break;
      for (let i = 0; i < got; i++) {
        if (!test(entries[i]!)) continue;
        const page = done + i;
        if (first) {
          visit(page, 1);
          return;
        }
        if (page === runEnd) runEnd++;
        else {
          if (runFirst >= 0) visit(runFirst, runEnd - runFirst);
          runFirst = page;
          runEnd = page + 1;
        }
      }
      done += got;
    }
    if (runFirst >= 0) visit(runFirst, runEnd - runFirst);
  }
}

const ANY_UNPROTECTED: PreparedQuery = Object.freeze({ ...SCAN.unprotected, maxPages: 1 });

/**
 * Visits the runs of pages of a span of private anonymous memory that may hold data:
 * present and not the shared zero page, or swapped out (only asked when swap is on:
 * a uffd-wp marker also reads as swapped). Pages never touched, or mapping the zero
 * page, are not visited. Through `PAGEMAP_SCAN` where the kernel has it and its
 * `PFNZERO` answers hold, else through `/proc/self/pagemap` ({@linkcode PageBits}).
 *
 * @param span The memory, page-aligned.
 * @param visit Receives `(firstPage, pages)` runs, in address order when swap is off.
 * @param options `content: true` also reads each candidate and leaves out the pages
 *   that hold only zeros — for a kernel whose read faults allocate, where a page only
 *   read is otherwise a candidate (it costs a read of every candidate page).
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { visitDataPages } from "./_page_contents.ts";
 * using mem = Region.map(8 * Region.pageSize);
 * mem.bytes[2 * Region.pageSize] = 7;
 * mem.bytes.fill(0, 5 * Region.pageSize, 6 * Region.pageSize); // written, but only zeros
 * const runs: number[][] = [];
 * visitDataPages(mem, (first, pages) => runs.push([first, pages]), { content: true });
 * console.log(runs); // [[2, 1]]
 * ```
 */
export function visitDataPages(span: PageSpan, visit: RunVisitor, options?: { content?: boolean }): void {
  if (span.length === 0) return;
  const out: RunVisitor = options?.content ? nonZero(span.address, visit) : visit;
  using bits = new PageBits(pageBitsPlan());
  bits.data(span, out);
}

/** A visitor that reads each page of a run and passes on only the runs of pages holding a non-zero byte. */
function nonZero(base: bigint, visit: RunVisitor): RunVisitor {
  return (first, count) => {
    const words = new Int32Array(libc.bufferAt(base + BigInt(first) * PAGE_SIZE_N, count * PAGE_SIZE));
    const perPage = PAGE_SIZE / 4;
    let runFirst = -1;
    for (let p = 0; p < count; p++) {
      let zero = true;
      for (let w = p * perPage, end = w + perPage; w < end; w++) {
        if (words[w] !== 0) {
          zero = false;
          break;
        }
      }
      if (!zero && runFirst < 0) runFirst = p;
      if (zero && runFirst >= 0) {
        visit(first + runFirst, p - runFirst);
        runFirst = -1;
      }
    }
    if (runFirst >= 0) visit(first + runFirst, count - runFirst);
  };
}
