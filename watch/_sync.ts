/**
 * The `sync` write-watch backend: write-protect faults served by a
 * {@linkcode FaultHandler} Worker with the `unprotect` policy (and
 * `_sync_policy.ts`), which records each page written; any thread can write, the
 * first write to a page after a reset waits for the Worker. Internal; how it keeps
 * every write (untouched pages, removals, moves, growth, shared pages) and its one
 * limit: `docs/write-watch.md`, "The sync backend".
 *
 * @example
 * ```ts
 * import { Region, WriteWatch } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using watch = WriteWatch.start(mem, { backend: "sync" });
 * mem.bytes[2 * Region.pageSize] = 1; // the main isolate waits while the handler's Worker records page 2
 * console.log(watch.backend, [...watch.collect()]); // sync [2]
 * ```
 *
 * @module
 */

import { kernelRelease } from "../kernel/access.ts";
import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import { FaultHandler } from "../handler/fault_handler.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { kernelProfile, type UntouchedFill, type UntouchedPages, untouchedPages } from "../kernel/profile.ts";
import { readMaps } from "../kernel/maps.ts";
import { fillUntouched, visitDataPages } from "../kernel/_page_contents.ts";
import { policies } from "../handler/policies.ts";
import type { Range } from "../kernel/range.ts";
import { bitmapBytes, type PageRun, pageRuns } from "../handler/tracked_pages.ts";
import { Feature } from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend } from "./_backend.ts";
import { missingFeatures } from "./_features.ts";
import { SYNC_STATE, type SyncWatchPolicyOptions } from "./_sync_policy.ts";
import type { RunList } from "./write_set.ts";

const POLICY = new URL("./_sync_policy.ts", import.meta.url);
/**
 * The most pages a watch can grow to: 2^28 pages (1 TiB of 4 KiB pages). The
 * handler's bitmaps reserve room for them (32 MiB of address space each) and
 * commit memory only as the span grows.
 */
const MAX_PAGES = 2 ** 28;
const NEEDED: readonly Feature[] = [
  Feature.PAGEFAULT_FLAG_WP,
  Feature.EVENT_REMOVE,
  Feature.EVENT_REMAP,
  Feature.EVENT_UNMAP,
];

/**
 * Why the handler's Worker could not load this package's modules, if it could not:
 * a Worker reads its modules from disk with the read permission, which the
 * library itself does not need (`--allow-ffi` alone runs everything else).
 */
function workerCannotLoad(): string | undefined {
  const home = new URL("../", import.meta.url); // the package's root: the Worker loads modules from all over it
  if (home.protocol !== "file:") return undefined;
  const path = decodeURIComponent(home.pathname).replace(/\/$/, "");
  let state: string;
  try {
    state = Deno.permissions.querySync({ name: "read", path }).state;
  } catch {
    return undefined;
  }
  if (state === "granted") return undefined;
  return `its fault handler runs in a Worker that loads this package's modules from ${path}, ` +
    `which needs read permission there (--allow-read=${path})`;
}

function fill(uffd: Userfaultfd, address: bigint, length: number, how: UntouchedFill): void {
  const rc = fillUntouched(uffd.fd, address, length, how);
  if (rc < 0) {
    const operation = how === "uffd-zeropage" ? "UFFDIO_ZEROPAGE" : "MADV_POPULATE_READ";
    throw failure(operation, rc, { start: address, length });
  }
}

/** A range that tells the handler its page size (so that it does not read `/proc/self/smaps`). */
function withPageSize(range: Range): Range {
  return Object.assign({ pageSize: PAGE_SIZE }, range);
}

/** Appends `runs` moved by `offset` to `out`, leaving out the pages of `lost` (sorted `[first, count, …]`). */
function addExcept(out: RunList, runs: readonly PageRun[], offset: number, lost: Uint32Array): void {
  if (lost.length === 0) {
    for (const r of runs) out.add(offset + r.firstPage, r.pages);
    return;
  }
  let k = 0;
  for (const r of runs) {
    let first = offset + r.firstPage;
    const end = first + r.pages;
    while (first < end) {
      while (k < lost.length && lost[k]! + lost[k + 1]! <= first) k += 2;
      if (k >= lost.length || lost[k]! >= end) {
        out.add(first, end - first);
        break;
      }
      if (lost[k]! > first) out.add(first, lost[k]! - first);
      first = lost[k]! + lost[k + 1]!;
    }
  }
}

/**
 * Whether a partial page at the edge of the span may hold someone else's data: the
 * mapping around it reaches past the span on that side (a malloc heap, or memory
 * merged with its neighbours). Such a page is never protected: a thread writing
 * there would wait on the handler — and if that thread were the handler's own
 * (its allocator's data next to a watched `ArrayBuffer`), it would wait for good.
 */
function mayBeShared(page: bigint, spanStart: bigint, spanEnd: bigint, side: "first" | "last"): boolean {
  let maps;
  try {
    maps = readMaps();
  } catch {
    return true;
  }
  const m = maps.find((m) => m.start <= page && page < m.end);
  if (m === undefined) return true;
  return side === "first" ? m.start < spanStart : m.end > spanEnd;
}

class SyncBackend implements WriteWatchBackend {
  readonly name = "sync" as const;
  readonly #address: bigint;
  #pages: number;
  /** The protected pages are `[#first, #end)`; the others are shared with other data and reported every time. */
  readonly #first: number;
  #end: number;
  readonly #uffd: Userfaultfd;
  #handler: FaultHandler;
  readonly #options: SyncWatchPolicyOptions;
  /** The registered ranges, in order (the span, then each grown tail). */
  readonly #ranges: Range[] = [];
  /** Lent to a live snapshot: its Workers read the userfaultfd; calls wait for `resume()`. */
  #lent = false;
  /** How holes are filled before protection; `undefined` where markers cover them (WP_UNPOPULATED, shared memory). */
  readonly #fill: UntouchedFill | undefined;
  readonly #lost: Uint8Array;
  readonly #state: Int32Array;
  #lostGeneration = 0;
  #lostRuns = new Uint32Array(0);
  #closed = false;

  constructor(span: WatchedSpan) {
    this.#address = span.address;
    this.#pages = span.pages;
    const spanEnd = span.address + BigInt(span.pages) * PAGE_SIZE_N;
    const skipFirst = span.partial?.first === true && mayBeShared(span.address, span.address, spanEnd, "first");
    const skipLast = span.partial?.last === true && mayBeShared(spanEnd - PAGE_SIZE_N, span.address, spanEnd, "last");
    this.#first = skipFirst ? 1 : 0;
    this.#end = Math.max(this.#first, skipLast ? span.pages - 1 : span.pages);
    const tracked = this.#end - this.#first;
    this.#uffd = Userfaultfd.open({
      require: span.shared ? [...NEEDED, Feature.WP_HUGETLBFS_SHMEM] : NEEDED,
      features: [Feature.WP_UNPOPULATED],
      decline: span.decline,
    });
    let handler: FaultHandler | undefined;
    try {
      // Shared memory keeps markers on untouched pages whatever the features.
      this.#fill = !span.shared && !this.#uffd.features.has(Feature.WP_UNPOPULATED)
        ? kernelProfile().untouchedFill
        : undefined;
      this.#lost = new Uint8Array(
        new SharedArrayBuffer(Math.max(1, bitmapBytes(tracked)), { maxByteLength: bitmapBytes(MAX_PAGES) }),
      );
      this.#state = new Int32Array(new SharedArrayBuffer(4 * SYNC_STATE.SIZE));
      const range = { address: span.address + BigInt(this.#first) * PAGE_SIZE_N, length: tracked * PAGE_SIZE };
      if (tracked > 0) this.#uffd.register(range, { wp: true });
      const options: SyncWatchPolicyOptions = {
        base: Number(range.address),
        removedAsWritten: !span.shared,
        fill: this.#fill ?? null,
        lost: this.#lost.buffer as SharedArrayBuffer,
        state: this.#state.buffer as SharedArrayBuffer,
      };
      this.#options = options;
      if (tracked > 0) this.#ranges.push(range);
      // Serving before anything is protected: the main isolate may write at once.
      handler = this.#startHandler();
      if (tracked > 0) {
        if (this.#fill) fill(this.#uffd, range.address, range.length, this.#fill);
        this.#uffd.writeProtect(range);
      }
      this.#handler = handler;
    } catch (e) {
      try {
        handler?.stopSync();
      } catch { /* failing already */ }
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
    // From the end of the protected pages: a partial last page is whole once the memory grew past it.
    // (Memory that grows — a WebAssembly.Memory, a resizable ArrayBuffer — is a reservation of its
    // own: its new last page is not shared with other data.)
    const from = this.#end;
    const tail = { address: this.#address + BigInt(from) * PAGE_SIZE_N, length: (pages - from) * PAGE_SIZE };
    const tracked = pages - this.#first;
    const lost = this.#lost.buffer as SharedArrayBuffer;
    if (lost.byteLength < bitmapBytes(tracked)) lost.grow(bitmapBytes(tracked));
    // Registered, tracked by the handler, and only then protected: a fault the
    // handler could not place would be resolved without being recorded.
    this.#uffd.register(tail, { wp: true });
    this.#handler.addRanges([withPageSize(tail)]);
    this.#ranges.push(tail);
    this.#pages = pages;
    this.#end = pages;
    if (this.#fill) fill(this.#uffd, tail.address, tail.length, this.#fill);
    this.#uffd.writeProtect(tail);
    // After protection, a page holding data was written before (or just after,
    // which the next scan reports too): report it now.
    visitDataPages(tail, (first, count) => written.add(from + first, count), { content: true });
  }

  /** What never-touched pages cost: see `WriteWatch.untouched`. */
  get untouched(): UntouchedPages {
    return untouchedPages(this.#fill);
  }

  scan(reset: boolean, written: RunList, lost: RunList): void {
    this.#check();
    if (reset) this.#prepare();
    // The kernel lets a thread's madvise/munmap return as soon as the handler has
    // read its event, before the policy has recorded it. collect() runs between two
    // batches, after that; the shared bitmap must wait for it with a round trip.
    else this.#handler.control("barrier");
    const runs = reset ? this.#handler.collect() : this.#handler.written();
    const lostRuns = this.#lostNow();
    // Pages shared with other data are not watched: always reported (documented conservative case).
    if (this.#first > 0) written.add(0, this.#first);
    addExcept(written, runs, this.#first, lostRuns);
    if (this.#end < this.#pages) written.add(this.#end, this.#pages - this.#end);
    for (let i = 0; i < lostRuns.length; i += 2) lost.add(lostRuns[i]!, lostRuns[i + 1]!);
  }

  reset(): void {
    this.#check();
    this.#prepare();
    this.#handler.collect();
  }

  /**
   * Lends the userfaultfd to a live snapshot (`LiveSnapshot.take` of watched memory):
   * the handler stops (serving what is queued), the ranges stay registered and
   * protected as they are, and the snapshot's Workers read the faults until
   * {@linkcode resume}. Call `scan(true, …)` first: the handler's bitmap is gone with it.
   */
  lend(): Userfaultfd {
    this.#check();
    this.#handler.stopSync();
    this.#lent = true;
    return this.#uffd;
  }

  /**
   * Takes the userfaultfd back after a snapshot: the handler starts again (serving the
   * writers that faulted meanwhile), removed ranges are filled again, and the whole
   * span is protected again — every page the snapshot let through was recorded by it
   * and is the caller's to report.
   */
  resume(): void {
    if (!this.#lent) return;
    this.#lent = false;
    if (this.#closed) return; // stopped while lent: the snapshot's references were the last
    this.#handler = this.#startHandler();
    for (const r of this.#ranges) {
      if (this.#fill) fill(this.#uffd, r.address as bigint, Number(r.length), this.#fill);
      this.#uffd.writeProtect(r);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (!this.#lent) this.#handler.stopSync();
    } catch { /* a failed handler has closed the userfaultfd already; its error reached the calls that met it */ }
    if (!this.#lent) {
      // Unregistered before the close, not by it: Linux 6.18 clears the protection when the last reference closes,
      // but Debian's 6.1.0-50 leaves the uffd-wp bits in the PTEs (pagemap still reports the pages protected, and a
      // later registration of them starts protected by nobody); UFFDIO_UNREGISTER clears them on both, and wakes
      // every waiter. (While lent, the snapshot holds the last references and ends the registration itself.)
      for (const r of this.#ranges) {
        try {
          this.#uffd.unregister(r);
        } catch { /* closed by a failed handler, or the range is gone: the close below is all that is left */ }
      }
    }
    // The last reference: the kernel unregisters what is left, clears its protection and wakes every waiter.
    this.#uffd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** A handler over every registered range (the span and its grown tails). */
  #startHandler(): FaultHandler {
    return FaultHandler.startSync(this.#uffd, policies.module(POLICY, this.#options, "syncWatchPolicy"), {
      ranges: this.#ranges.map(withPageSize),
      maxPages: Math.max(MAX_PAGES, this.#end - this.#first),
    });
  }

  /** Without `WP_UNPOPULATED`, removed ranges must hold pages again before they are re-protected. */
  #prepare(): void {
    // Always asked, not only when the policy's "removed" flag is up: a zap returns as soon as
    // the handler has read its event, possibly before the policy noted it. The control runs
    // after that batch, so it sees every removal whose caller has returned.
    if (this.#fill) this.#handler.control("populate");
  }

  /** The lost pages (span numbering) as `[first, count, …]`, re-read from the policy's bitmap when it changed. */
  #lostNow(): Uint32Array {
    const generation = Atomics.load(this.#state, SYNC_STATE.LOST_GENERATION);
    if (generation !== this.#lostGeneration) {
      this.#lostGeneration = generation;
      const runs = pageRuns(this.#lost, this.#end - this.#first);
      this.#lostRuns = new Uint32Array(runs.flatMap((r) => [this.#first + r.firstPage, r.pages]));
    }
    return this.#lostRuns;
  }

  #check(): void {
    if (this.#closed) {
      throw new UffdError({ errno: ERRNO.EBADF, operation: "WriteWatch", detail: "the watch is stopped" });
    }
    if (this.#lent) {
      throw new UffdError({
        errno: ERRNO.EBUSY,
        operation: "WriteWatch",
        detail: "a live snapshot of this memory is running: its writes reach the watch when it is done",
        hint: "await snap.done before asking the watch",
      });
    }
  }
}

/**
 * The `sync` backend: available where userfaultfd has write-protect faults and the
 * `EVENT_REMOVE`, `EVENT_REMAP` and `EVENT_UNMAP` events (Linux 5.7+), with
 * `WP_UNPOPULATED` (6.4) or else `MADV_POPULATE_READ` (5.14) or `UFFDIO_ZEROPAGE`
 * to fill never-touched pages (`kernelProfile().untouchedFill`); shared memory also
 * needs `WP_HUGETLBFS_SHMEM`.
 *
 * @example
 * ```ts
 * import { syncBackend } from "./_sync.ts";
 * console.log(syncBackend.unavailable({ address: 0n, pages: 1, shared: false }) ?? "available");
 * ```
 */
export const syncBackend: BackendProvider = Object.freeze({
  name: "sync" as const,
  unavailable(span: WatchedSpan): string | undefined {
    const needed = span.shared ? [...NEEDED, Feature.WP_HUGETLBFS_SHMEM] : NEEDED;
    const reason = missingFeatures(span, needed, "write-protect faults work from Linux 5.7");
    if (reason !== undefined) return reason;
    const features = Userfaultfd.supported().features;
    const load = workerCannotLoad();
    if (load !== undefined) return load;
    const unpopulated = features.has(Feature.WP_UNPOPULATED) && !span.decline?.includes(Feature.WP_UNPOPULATED);
    if (!span.shared && !unpopulated && kernelProfile().untouchedFill === "none") {
      return `without WP_UNPOPULATED (Linux 6.4) untouched pages must be populated with MADV_POPULATE_READ, ` +
        `which this kernel (${kernelRelease()}) lacks (Linux 5.14)`;
    }
    return undefined;
  },
  create(span: WatchedSpan): WriteWatchBackend {
    return new SyncBackend(span);
  },
});
