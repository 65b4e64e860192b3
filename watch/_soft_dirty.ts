/**
 * The `soft-dirty` write-watch backend: `clear_refs` 4 and pagemap bit 55, where
 * the kernel really sets the bit ({@linkcode softDirtySupported}, measured).
 * Process-wide and not atomic. Internal: `docs/write-watch.md`, "The soft-dirty
 * backend".
 *
 * The kernel keeps the soft-dirty bit per page table entry: a transparent huge page
 * mapped by one PMD has one bit for its 512 pages, and one write would report all of
 * them. The backend therefore splits the huge pages of the watched span into page
 * entries when it starts (a mapping boundary inside a PMD splits it) and makes the
 * span `MADV_NOHUGEPAGE`, so that no new one forms: each page is then answered for
 * itself, as the other backends do.
 *
 * @example
 * ```ts
 * import { softDirtyBackend } from "./_soft_dirty.ts";
 * console.log(softDirtyBackend.unavailable({ address: 0n, pages: 1, shared: false }) ?? "available");
 * ```
 *
 * @module
 */

import { kernelRelease } from "../kernel/access.ts";
import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { MADV_HUGEPAGE, MADV_NOHUGEPAGE, MS_ASYNC, O_CLOEXEC, O_WRONLY } from "../ffi/linux.ts";
import { thpTraits } from "../kernel/profile.ts";
import { unmappedParts } from "../kernel/maps.ts";
import { readPagemapRaw, softDirtySupported } from "../kernel/pagemap.ts";
import { PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP } from "../ffi/uapi.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend } from "./_backend.ts";
import type { RunList } from "./write_set.ts";

/** Writes "4" to /proc/self/clear_refs through libc (Deno's file APIs refuse /proc without --allow-all). */
function clearRefs(): void {
  const fd = libc.open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  const rc = fd < 0 ? fd : libc.write(fd, CLEAR_SOFT_DIRTY);
  if (fd >= 0) libc.close(fd);
  if (rc < 0) {
    throw failure(
      "clear_refs",
      rc,
      undefined,
      "soft-dirty needs a kernel built with CONFIG_MEM_SOFT_DIRTY and a writable /proc/self/clear_refs",
      "writing 4 to /proc/self/clear_refs failed",
    );
  }
}

const CLEAR_SOFT_DIRTY = new TextEncoder().encode("4");

/**
 * Makes `[address, address + pages)` `MADV_NOHUGEPAGE` and splits the transparent
 * huge pages already in it into page entries: for each PMD-aligned block, a mapping
 * boundary one page into the block (`MADV_HUGEPAGE` on that page, then back) splits
 * its PMD, and the pieces merge again. Where the kernel has no transparent huge pages
 * (or they are off), nothing is done. Advice the kernel refuses is left alone: the
 * answers are then per huge page there, conservative (more pages, never fewer).
 */
function splitHugePages(address: bigint, pages: number): void {
  const thp = thpTraits();
  if (thp === null || thp.enabled === "never" || !thp.pmdSize || pages === 0) return;
  const length = BigInt(pages) * PAGE_SIZE_N;
  const end = address + length;
  if (libc.madvise(address, length, MADV_NOHUGEPAGE) < 0) return;
  const pmd = BigInt(thp.pmdSize);
  for (let block = (address + pmd - 1n) / pmd * pmd; block + PAGE_SIZE_N <= end; block += pmd) {
    libc.madvise(block, PAGE_SIZE_N, MADV_HUGEPAGE);
    libc.madvise(block, PAGE_SIZE_N, MADV_NOHUGEPAGE);
  }
  // A huge page that straddles the span's start: the NOHUGEPAGE above put a boundary inside it already.
}

class SoftDirtyBackend implements WriteWatchBackend {
  readonly name = "soft-dirty" as const;
  readonly untouched = "unpopulated" as const;
  readonly #address: bigint;
  #pages: number;
  #entries: BigUint64Array;
  /** Pages resident at the last reset: one that is not any more was zapped, which counts as written. */
  #resident: Uint8Array;
  #closed = false;

  constructor(span: WatchedSpan) {
    this.#address = span.address;
    this.#pages = span.pages;
    this.#entries = new BigUint64Array(span.pages);
    this.#resident = new Uint8Array(span.pages);
    splitHugePages(span.address, span.pages);
    this.reset();
  }

  get pages(): number {
    return this.#pages;
  }

  extend(pages: number, _written: RunList): void {
    this.#check();
    if (pages <= this.#pages) return;
    splitHugePages(this.#address + BigInt(this.#pages) * PAGE_SIZE_N, pages - this.#pages);
    const entries = new BigUint64Array(pages);
    const resident = new Uint8Array(pages);
    resident.set(this.#resident);
    this.#entries = entries;
    this.#resident = resident;
    this.#pages = pages;
    // A new mapping is soft-dirty as a whole (VM_SOFTDIRTY) until the next
    // clear_refs: the next scan reports every new page, which is conservative.
  }

  scan(reset: boolean, written: RunList, lost: RunList): void {
    this.#check();
    const range = { address: this.#address, length: this.#pages * PAGE_SIZE };
    const entries = readPagemapRaw(range, { into: this.#entries });
    for (let i = 0; i < this.#pages; i++) {
      const e = entries[i]!;
      const zapped = this.#resident[i] === 1 && (e & (PM_PRESENT | PM_SWAP)) === 0n;
      if ((e & PM_SOFT_DIRTY) !== 0n || zapped) written.add(i, 1);
    }
    if (reset) this.#clear(entries);
    this.#findLost(lost);
  }

  reset(): void {
    this.#check();
    const range = { address: this.#address, length: this.#pages * PAGE_SIZE };
    this.#clear(readPagemapRaw(range, { into: this.#entries }));
  }

  #clear(entries: BigUint64Array): void {
    clearRefs();
    for (let i = 0; i < this.#pages; i++) this.#resident[i] = (entries[i]! & (PM_PRESENT | PM_SWAP)) !== 0n ? 1 : 0;
  }

  close(): void {
    this.#closed = true;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #findLost(lost: RunList): void {
    const length = BigInt(this.#pages) * PAGE_SIZE_N;
    const rc = libc.msync(this.#address, length, MS_ASYNC);
    if (rc === 0) return;
    const holes = unmappedParts(this.#address, this.#address + length);
    if (holes === undefined) return lost.add(0, this.#pages);
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
 * The `soft-dirty` backend: available only where {@linkcode softDirtySupported}
 * measured that the kernel sets the soft-dirty bit.
 *
 * @example
 * ```ts
 * import { softDirtySupported } from "@uffd/uffd";
 * import { softDirtyBackend } from "./_soft_dirty.ts";
 * console.log(softDirtySupported() === (softDirtyBackend.unavailable({ address: 0n, pages: 1, shared: false }) === undefined)); // true
 * ```
 */
export const softDirtyBackend: BackendProvider = Object.freeze({
  name: "soft-dirty" as const,
  unavailable(_span: WatchedSpan): string | undefined {
    if (softDirtySupported()) return undefined;
    return `this kernel (${kernelRelease()}) was built without CONFIG_MEM_SOFT_DIRTY: it accepts clear_refs 4 ` +
      "and the SOFT_DIRTY category but never sets the soft-dirty bit (softDirtySupported() is false)";
  },
  create(span: WatchedSpan): WriteWatchBackend {
    const why = softDirtyBackend.unavailable(span);
    if (why !== undefined) {
      throw new UffdError({ errno: ERRNO.EOPNOTSUPP, operation: "WriteWatch", detail: `soft-dirty backend: ${why}` });
    }
    return new SoftDirtyBackend(span);
  },
});
