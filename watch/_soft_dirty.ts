/**
 * The `soft-dirty` write-watch backend: `clear_refs` 4 and pagemap bit 55, where
 * the kernel really sets the bit ({@linkcode softDirtySupported}, measured).
 * Process-wide and not atomic. Internal: `docs/write-watch.md`, "The soft-dirty
 * backend".
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
import { MS_ASYNC, O_CLOEXEC, O_WRONLY } from "../ffi/linux.ts";
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
    this.reset();
  }

  get pages(): number {
    return this.#pages;
  }

  extend(pages: number, _written: RunList): void {
    this.#check();
    if (pages <= this.#pages) return;
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
