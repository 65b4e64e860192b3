/**
 * The `async` write-watch backend (Linux 6.7+): a `WP_ASYNC` userfaultfd, so that
 * the kernel resolves every write itself, and `PAGEMAP_SCAN` with
 * `PM_SCAN_WP_MATCHING` to read and re-protect the written pages in one walk.
 * Internal; the kernel behaviour it relies on: `docs/write-watch.md`.
 *
 * @example
 * ```ts
 * import { Region, WriteWatch } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using watch = WriteWatch.start(mem, { backend: "async" });
 * mem.bytes[0] = 1;
 * console.log(watch.backend, [...watch.collect()]); // async [0]
 * ```
 *
 * @module
 */

import { kernelRelease } from "../kernel/access.ts";
import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { MS_ASYNC } from "../ffi/linux.ts";
import { unmappedParts } from "../kernel/maps.ts";
import { kernelProfile } from "../kernel/profile.ts";
import { visitDataPages } from "../kernel/_page_contents.ts";
import { hasPagemapScan, PagemapScanner, type PreparedQuery, prepareQuery } from "../kernel/pagemap_scan.ts";
import { Feature } from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend } from "./_backend.ts";
import { missingFeatures } from "./_features.ts";
import type { RunList } from "./write_set.ts";

/** Regions per PAGEMAP_SCAN ioctl: 4096 × 24 bytes. */
const VECTOR_LENGTH = 4096;

let queries: { collect: PreparedQuery; written: PreparedQuery; notAllowed: PreparedQuery };

function prepared(): typeof queries {
  // Kernels before the July 2026 stable fixes answer WRITTEN right only on the fast
  // path (mask == return mask == WRITTEN): where the profile saw other masks disagree,
  // written() asks the fast path too (the span is registered from end to end; pages
  // that left it are found by notAllowed and reported lost either way).
  const masked = kernelProfile().pagemapScan.writtenMasked !== false;
  return queries ??= {
    // Exactly WRITTEN/WRITTEN: the kernel's fast path for get-and-clear.
    collect: prepareQuery({ require: ["WRITTEN"], report: ["WRITTEN"], writeProtect: true }),
    // Without WP_MATCHING the kernel walks unregistered mappings too (every page
    // there is "written"): require WPALLOWED so they are skipped like in collect.
    written: masked
      ? prepareQuery({ require: ["WRITTEN", "WPALLOWED"], report: ["WRITTEN"] })
      : prepareQuery({ require: ["WRITTEN"], report: ["WRITTEN"] }),
    notAllowed: prepareQuery({ require: ["WPALLOWED"], invert: ["WPALLOWED"], report: ["WPALLOWED"] }),
  };
}

class AsyncBackend implements WriteWatchBackend {
  readonly name = "async" as const;
  readonly untouched = "unpopulated" as const;
  #pages: number;
  readonly #address: bigint;
  #range: { address: bigint; length: number };
  readonly #uffd: Userfaultfd;
  readonly #scanner: PagemapScanner;
  #written: RunList | undefined;
  #lost: RunList | undefined;
  readonly #toWritten = (first: number, pages: number) => this.#written!.add(first, pages);
  readonly #toLost = (first: number, pages: number) => this.#lost!.add(first, pages);
  #closed = false;

  constructor(span: WatchedSpan) {
    prepared();
    this.#address = span.address;
    this.#pages = span.pages;
    this.#range = { address: span.address, length: span.pages * PAGE_SIZE };
    this.#uffd = Userfaultfd.open({
      require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED],
      features: [Feature.WP_HUGETLBFS_SHMEM],
      decline: span.decline,
    });
    try {
      this.#scanner = new PagemapScanner({ vectorLength: VECTOR_LENGTH });
      this.#uffd.register(this.#range, { wp: true });
      this.#uffd.writeProtect(this.#range);
    } catch (e) {
      this.#uffd.close();
      throw e;
    }
  }

  get pages(): number {
    return this.#pages;
  }

  extend(pages: number, written: RunList): void {
    this.#check();
    if (pages <= this.#pages) return;
    const tail = {
      address: this.#address + BigInt(this.#pages) * PAGE_SIZE_N,
      length: (pages - this.#pages) * PAGE_SIZE,
    };
    this.#uffd.register(tail, { wp: true });
    this.#uffd.writeProtect(tail);
    // After protection, a page that holds data was written before (or just after,
    // which the next scan reports too): report it now. Pages holding only zeros are
    // what they were when the memory grew (and, where read faults allocate, most
    // likely only read): not reported.
    const offset = this.#pages;
    visitDataPages(tail, (first, count) => written.add(offset + first, count), { content: true });
    this.#pages = pages;
    this.#range = { address: this.#address, length: pages * PAGE_SIZE };
  }

  scan(reset: boolean, written: RunList, lost: RunList): void {
    this.#check();
    this.#written = written;
    try {
      this.#scanner.visit(this.#range, reset ? queries.collect : queries.written, this.#toWritten);
    } finally {
      this.#written = undefined;
    }
    this.#findLost(lost);
  }

  reset(): void {
    this.#check();
    this.#uffd.writeProtect(this.#range);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#scanner.close();
    this.#uffd.close(); // unregisters the span and clears every uffd-wp bit
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Pages no longer registered (VMA-level scan) and holes (`msync` says ENOMEM). */
  #findLost(lost: RunList): void {
    this.#lost = lost;
    try {
      this.#scanner.visit(this.#range, queries.notAllowed, this.#toLost);
    } finally {
      this.#lost = undefined;
    }
    const rc = libc.msync(this.#address, BigInt(this.#range.length), MS_ASYNC);
    if (rc === 0) return;
    if (rc !== -ERRNO.ENOMEM) throw failure("msync", rc, { start: this.#address });
    const end = this.#address + BigInt(this.#range.length);
    const holes = unmappedParts(this.#address, end);
    if (holes === undefined) {
      // The maps cannot be read (no --allow-read): the whole span is in doubt.
      lost.add(0, this.#pages);
      return;
    }
    for (const h of holes) {
      lost.add(Number((h.start - this.#address) / PAGE_SIZE_N), Number((h.end - h.start) / PAGE_SIZE_N));
    }
  }

  #check(): void {
    if (this.#closed) {
      throw new UffdError({ errno: ERRNO.EBADF, operation: "WriteWatch", detail: "the watch is stopped" });
    }
  }
}

/**
 * The `async` backend: available where userfaultfd has `WP_ASYNC` and
 * `WP_UNPOPULATED` and the kernel has `PAGEMAP_SCAN` (Linux 6.7+); shared memory
 * also needs `WP_HUGETLBFS_SHMEM`.
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { asyncBackend } from "./_async.ts";
 * console.log(asyncBackend.unavailable({ address: 0n, pages: 1, shared: false }) ?? "available");
 * ```
 */
export const asyncBackend: BackendProvider = Object.freeze({
  name: "async" as const,
  unavailable(span: WatchedSpan): string | undefined {
    const needed: Feature[] = [Feature.WP_ASYNC, Feature.WP_UNPOPULATED];
    if (span.shared) needed.push(Feature.WP_HUGETLBFS_SHMEM);
    const reason = missingFeatures(span, needed, "Linux 6.7+");
    if (reason !== undefined) return reason;
    if (!hasPagemapScan()) return `this kernel (${kernelRelease()}) has no PAGEMAP_SCAN (Linux 6.7+)`;
    return undefined;
  },
  create(span: WatchedSpan): WriteWatchBackend {
    return new AsyncBackend(span);
  },
});
