/**
 * The Worker of a `LiveSnapshot` (a `node:worker_threads` Worker, started from a
 * `data:` bootstrap like a `FaultHandler`'s). One thread does everything: it
 * write-protects the target, serves the write-protect faults, runs the
 * background copier between fault batches, reads the address-space events, and
 * owns the per-page state — so "save the old content, then unprotect" and "the
 * copier skips pages already saved" need no locking: each page is saved once,
 * by whichever comes first, and unprotected only after. Internal.
 *
 * Why not a `FaultHandler` policy: the guarantees below need control over *when*
 * messages are read (an event's read is what lets the kernel go on), the events
 * of a batch handled before its faults, and background work between batches.
 *
 * The loop: `poll([uffd, eventfd], 0 while the copier has work)` → faults
 * (batched `read`): save the page if it is not saved, unprotect it → one copier
 * chunk (`chunkPages` pages in address order: copy, then one `UFFDIO_WRITEPROTECT`
 * over the chunk) → again. A fault waits at most one chunk.
 *
 * Address-space changes of the target (kernel facts in `docs/kernel-notes.md`):
 * - `MADV_DONTNEED` (`EVENT_REMOVE`): the kernel queues the event *before* it
 *   zaps, and the zapping thread waits until the event is read. Before each
 *   `read`, the Worker probes whether an event is in flight (`UFFDIO_WRITEPROTECT`
 *   on a page of its own that is not registered: `EAGAIN` while the userfaultfd's
 *   `mmap_changing` count is raised, `ENOENT` otherwise). If one is, it saves every
 *   page left (no unprotecting: that is `EAGAIN` too) and only then reads the event
 *   and closes the userfaultfd: the old content is saved first, always. An event
 *   that slips in between the probe and the `read` (or every one, with
 *   `holdChanges: false`) is handled before the faults of its batch: pages of the
 *   removed range not saved yet are saved if they are provably intact (still
 *   write-protected before and after the copy, which a zap would have undone), and
 *   otherwise the snapshot fails, naming the pages. Never a silently wrong page.
 * - `munmap` / `mremap` (`EVENT_UNMAP` / `EVENT_REMAP`): the kernel unmaps first
 *   and queues the event afterwards, so the old content may be gone; reads of the
 *   target use `process_vm_readv` (EFAULT, not SIGSEGV). Any such event over the
 *   target read before the snapshot completes fails it. Completion itself waits for
 *   a clean probe (or reads the events in flight), so a change that began before
 *   the last copies is never missed.
 *
 * Every failure, abort or exit path closes the userfaultfd first — which removes
 * every protection and wakes every thread blocked in a fault, the main isolate
 * included — and only then reports.
 *
 * @module
 */

import process from "node:process";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { ERRNO, UffdError } from "./errors.ts";
import * as libc from "./ffi/libc.ts";
import { MessageBatch } from "./ffi/message_batch.ts";
import { PollSet } from "./ffi/pollset.ts";
import * as resolve from "./ffi/resolve_ops.ts";
import type { UffdMsg } from "./ffi/structs.ts";
import { serializeError } from "./handler_protocol.ts";
import { latencyBucket } from "./handler_stats.ts";
import { MADV_POPULATE_READ, POLLERR, POLLIN, POLLNVAL } from "./linux.ts";
import { PagemapScanner, type PreparedQuery } from "./pagemap.ts";
import { Region } from "./region.ts";
import { openSink, type PageSink } from "./snapshot_sinks.ts";
import { PROGRESS, SNAP_CTRL, SNAP_STATE, type SnapshotMessage, type SnapshotWorkerData } from "./snapshot_protocol.ts";
import {
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  PAGE_IS_WRITTEN,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFDIO_WRITEPROTECT_MODE_WP,
} from "./uapi.ts";
import { Userfaultfd } from "./userfaultfd.ts";

const P = libc.PAGE_SIZE;
const EAGAIN = ERRNO.EAGAIN!;
const ENOENT = ERRNO.ENOENT!;
const EINTR = ERRNO.EINTR!;
const MODE_WP = Number(UFFDIO_WRITEPROTECT_MODE_WP);
/** Per-page state. */
const UNSAVED_ZERO = 0;
const UNSAVED_DATA = 1;
const SAVED = 2;
/** How long completion waits for an address-space change in flight to show its event. */
const SETTLE_MS = 10_000;
/** Rounds of protect-and-check before setup gives up on memory that keeps being dropped. */
const SETUP_ROUNDS = 50;

/** The snapshot was aborted from the main side. */
class Aborted extends Error {}

/** A snapshot that would be wrong: fails with the pages named. */
function torn(detail: string, hint?: string): UffdError {
  return new UffdError({ errno: ERRNO.EIO, operation: "LiveSnapshot", detail, hint });
}

function pageList(runs: [number, number][]): string {
  const text = runs.slice(0, 8).map(([a, n]) => (n === 1 ? `${a}` : `${a}..${a + n - 1}`)).join(", ");
  return runs.length > 8 ? `${text}, …` : text;
}

/** Whether any swap device is on (`/proc/swaps` lists more than its header); unknown counts as on. */
function swapActive(): boolean {
  const swaps = libc.readTextFile("/proc/swaps");
  return typeof swaps !== "string" || swaps.trim().split("\n").length > 1;
}

/**
 * A PAGEMAP_SCAN query built by hand: `prepareQuery` would probe the kernel's
 * categories through `/proc/self/pagemap`, which `pagemap.ts` keeps open for the
 * rest of the isolate's life — one fd leaked per snapshot Worker. These four
 * categories exist on every kernel with PAGEMAP_SCAN (checked by `take()`).
 */
function query(required: bigint, inverted = 0n): PreparedQuery {
  return Object.freeze({ flags: 0n, inverted, required, anyOf: 0n, report: 0n, maxPages: 0 });
}

const queries = {
  /** No uffd-wp bit: a page (or hole) a write would not fault on. */
  unprotected: query(PAGE_IS_WRITTEN),
  /** Resident and not the shared zero page: holds data. */
  data: query(PAGE_IS_PRESENT | PAGE_IS_PFNZERO, PAGE_IS_PFNZERO),
  /** Swapped out (a uffd-wp marker also reads as swapped: only consulted when swap is on). */
  swapped: query(PAGE_IS_SWAPPED),
};

function prepared(): typeof queries {
  return queries;
}

/** The snapshot's loop. One per Worker. */
class SnapshotLoop {
  readonly #data: SnapshotWorkerData;
  readonly #uffd: Userfaultfd;
  readonly #fd: number;
  readonly #efd: number;
  readonly #ctrl: Int32Array;
  readonly #progress: Float64Array;
  readonly #poll: PollSet;
  readonly #batch: MessageBatch;
  /** Its own pagemap fd (by pid: `"self"` would keep one open for the Worker's isolate after it is gone). */
  readonly #scanner = new PagemapScanner({ pid: libc.getpid(), vectorLength: 4096 });
  readonly #base: number;
  readonly #pages: number;
  readonly #end: number;
  readonly #state: Uint8Array;
  readonly #efdBuffer = new Uint8Array(8);
  /** A private page of the Worker's own, never registered: the probe's target. */
  readonly #probePage: Region;
  readonly #probeAddress: number;
  #sink: PageSink | undefined;
  #remaining: number;
  #cursor = 0;
  /** An address-space change is in flight (an unprotect said EAGAIN): save everything left first (`holdChanges`). */
  #changing = false;
  /** Pages whose writer is still to be woken: their unprotect said EAGAIN (retried once the events are read). */
  readonly #pendingWake: number[] = [];
  /** Faults read while setting up, served once the target is protected. */
  readonly #setupFaults: number[] = [];
  /** Pages of removals read while setting up: their zap may come after the protection. */
  readonly #setupRemoved: [number, number][] = [];

  constructor(data: SnapshotWorkerData) {
    this.#data = data;
    this.#uffd = Userfaultfd.adopt(data.uffd);
    this.#fd = data.uffd.fd;
    this.#efd = data.eventFd;
    this.#ctrl = new Int32Array(data.control);
    this.#progress = new Float64Array(data.progress);
    this.#poll = new PollSet([this.#fd, this.#efd]);
    this.#batch = new MessageBatch(data.batch);
    this.#base = data.base;
    this.#pages = data.pages;
    this.#end = data.base + data.pages * P;
    this.#state = new Uint8Array(data.pages);
    this.#remaining = data.pages;
    this.#probePage = Region.map(P);
    this.#probeAddress = Number(this.#probePage.address);
    this.#progress[PROGRESS.pages] = data.pages;
  }

  /**
   * Write-protects the span, checks that every page of it is protected (retrying
   * where pages were dropped meanwhile), sorts the pages into those holding data
   * and those that are zero, and opens the sink. Faults are not served until this
   * returns: every thread that hit a protected page waits until the whole span is
   * protected, which is what makes the snapshot one moment in time.
   */
  setup(): number {
    const d = this.#data;
    const span = { address: BigInt(this.#base), length: this.#pages * P };
    const q = prepared();
    this.#sink = openSink(
      d.sink,
      { base: this.#base, pages: this.#pages, head: d.head, length: d.length },
      d.chunkPages,
      this.#ctrl,
      d.queue ? new Int32Array(d.queue) : undefined,
    );
    for (let round = 0;; round++) {
      if (round === SETUP_ROUNDS) {
        throw torn("the target's pages kept being dropped while it was being write-protected");
      }
      if (!d.wpUnpopulated) {
        // Without WP_UNPOPULATED a never-touched page has no PTE to protect: map the zero page there first.
        const rc = libc.madvise(span.address, BigInt(span.length), MADV_POPULATE_READ);
        if (rc < 0 && rc !== -EINTR && rc !== -EAGAIN) {
          throw new UffdError({ errno: -rc, operation: "MADV_POPULATE_READ", args: { start: span.address } });
        }
      }
      const rc = resolve.writeprotect(this.#fd, this.#base, span.length, MODE_WP);
      if (rc === -EAGAIN) {
        // An address-space change of the target is in flight: read its event, then protect again.
        this.#setupMessages();
        this.#poll.poll(1);
        continue;
      }
      if (rc < 0) {
        throw new UffdError({ errno: -rc, operation: "UFFDIO_WRITEPROTECT", args: { start: span.address } });
      }
      const summary = this.#scanner.visit(span, { ...q.unprotected, maxPages: 1 }, () => {});
      if (summary.pages === 0) break;
    }
    // Sort the pages: data (resident, not the zero page; swapped when swap is on), or zero.
    const state = this.#state;
    this.#scanner.visit(span, q.data, (first, n) => state.fill(UNSAVED_DATA, first, first + n));
    if (swapActive()) this.#scanner.visit(span, q.swapped, (first, n) => state.fill(UNSAVED_DATA, first, first + n));
    let dataPages = 0;
    for (let i = 0; i < this.#pages; i++) if (state[i] === UNSAVED_DATA) dataPages++;
    const list = new Uint32Array(dataPages);
    const ranks = new Int32Array(d.sink.kind === "file" ? this.#pages : 0);
    for (let i = 0, j = 0; i < this.#pages; i++) {
      if (state[i] !== UNSAVED_DATA) continue;
      if (ranks.length > 0) ranks[i] = j;
      list[j++] = i;
    }
    this.#sink.layout(list, ranks);
    this.#progress[PROGRESS.startedAt] = performance.timeOrigin + performance.now();
    return dataPages;
  }

  /** Serves faults and copies until every page is saved; then closes the userfaultfd. */
  run(): FileWrittenOrNone {
    const poll = this.#poll;
    const ctrl = this.#ctrl;
    // A removal read while setting up may zap its pages only now: save them first, if provably intact.
    for (const [first, end] of this.#setupRemoved.splice(0)) this.#rescue(first, end);
    for (const address of this.#setupFaults.splice(0)) this.#fault(address, performance.now());
    for (;;) {
      this.#checkAbort();
      if (this.#changing && this.#remaining > 0) this.#saveAll();
      if (this.#remaining === 0) break;
      if (this.#pendingWake.length > 0) this.#retryWakes();
      const throttled = this.#cursor < this.#pages && this.#sink!.throttled();
      Atomics.store(ctrl, SNAP_CTRL.THROTTLED, throttled ? 1 : 0);
      const copierWork = this.#cursor < this.#pages && !throttled;
      const ready = poll.poll(copierWork ? 0 : this.#pendingWake.length > 0 ? 1 : throttled ? 50 : -1);
      if (ready < 0 && ready !== -EINTR) {
        throw new UffdError({ errno: -ready, operation: "poll", args: { fd: this.#fd } });
      }
      if (poll.revents(1) & POLLIN) libc.read(this.#efd, this.#efdBuffer);
      const revents = poll.revents(0);
      if (revents & (POLLERR | POLLNVAL)) {
        throw new UffdError({
          errno: revents & POLLNVAL ? ERRNO.EBADF! : ERRNO.EINVAL!,
          operation: "poll",
          detail: `revents 0x${revents.toString(16)} on the userfaultfd`,
        });
      }
      if (revents & POLLIN) this.#serve();
      if (copierWork && !this.#changing && this.#remaining > 0) this.#copyChunk();
    }
    this.#settle();
    this.#progress[PROGRESS.finishedAt] = performance.timeOrigin + performance.now();
    // Closing removes every protection left and wakes every waiting writer.
    this.#uffd.close();
    return this.#sink!.finish();
  }

  /** Gives up: removes a partly written file. */
  discard(): void {
    this.#sink?.discard();
  }

  /** Releases what the loop holds in the process (after the userfaultfd is closed): its page, its pagemap fd. */
  close(): void {
    this.#probePage.unmap();
    this.#scanner.close();
  }

  // --- faults and events ---

  /** Unprotects the pages whose writers could not be woken while an event was in flight. */
  #retryWakes(): void {
    const pending = this.#pendingWake;
    for (let k = 0; k < pending.length;) {
      const rc = resolve.writeprotect(this.#fd, pending[k]!, P, 0);
      if (rc === -EAGAIN) {
        k++;
        continue;
      }
      if (rc < 0 && rc !== -ENOENT) {
        throw new UffdError({ errno: -rc, operation: "UFFDIO_WRITEPROTECT", args: { start: BigInt(pending[k]!) } });
      }
      pending[k] = pending[pending.length - 1]!;
      pending.pop();
    }
  }

  /** Reads and handles batches until the queue is empty. */
  #serve(): void {
    const batch = this.#batch;
    const progress = this.#progress;
    for (;;) {
      if (this.#data.holdChanges && this.#remaining > 0 && this.#probe() === -EAGAIN) {
        // An madvise/munmap/mremap of the target waits for its event to be read: save everything first.
        this.#saveAll();
        return;
      }
      const n = batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw new UffdError({ errno: -n, operation: "read", args: { fd: this.#fd } });
      const t0 = performance.now();
      // Events first: a fault of this batch may be on a page whose removal the same read let go on.
      for (let i = 0; i < n; i++) if (batch.event(i) !== UFFD_EVENT_PAGEFAULT) this.#event(batch.message(i));
      for (let i = 0; i < n; i++) {
        if (batch.event(i) !== UFFD_EVENT_PAGEFAULT) continue;
        progress[PROGRESS.faults]++;
        this.#fault(batch.address(i), t0);
      }
      if (n < batch.capacity) return;
    }
  }

  /** A write to page `address`: save its old content if nobody has, then let the write through. */
  #fault(address: number, t0: number): void {
    const page = address - (address % P);
    if (page >= this.#base && page < this.#end) {
      const index = (page - this.#base) / P;
      if (this.#state[index] !== SAVED) this.#save(index, index + 1, PROGRESS.byFault);
    }
    const rc = resolve.writeprotect(this.#fd, page, P, 0);
    if (rc === -EAGAIN) {
      // An address-space change is in flight. Holding it: save everything left, then the close wakes
      // this writer. Otherwise: wake it once the change's event is read.
      if (this.#data.holdChanges) this.#changing = true;
      else this.#pendingWake.push(page);
      return;
    }
    if (rc < 0 && rc !== -ENOENT) {
      throw new UffdError({ errno: -rc, operation: "UFFDIO_WRITEPROTECT", args: { start: BigInt(page), len: P } });
    }
    this.#progress[PROGRESS.stall + latencyBucket((performance.now() - t0) * 1000)]++;
  }

  #event(msg: UffdMsg): void {
    if ("raw" in msg) return; // an event this library does not know: not one of ours
    if (msg.event === UFFD_EVENT_REMOVE) {
      this.#progress[PROGRESS.removes]++;
      const [first, end] = this.#overlap(Number(msg.start), Number(msg.end));
      if (first < end) this.#rescue(first, end);
      return;
    }
    let what: string;
    let first: number;
    let end: number;
    if (msg.event === UFFD_EVENT_UNMAP) {
      what = "unmapped (munmap)";
      [first, end] = this.#overlap(Number(msg.start), Number(msg.end));
    } else if (msg.event === UFFD_EVENT_REMAP) {
      what = "moved (mremap)";
      [first, end] = this.#overlap(Number(msg.from), Number(msg.from + msg.len));
    } else return; // fork events are not negotiated
    if (first < end) {
      throw torn(
        `pages ${first}..${end - 1} of the target were ${what} while the snapshot ran: ` +
          `their saved content cannot be trusted`,
        "do not munmap or mremap memory while a snapshot of it runs",
      );
    }
  }

  /** Pages `[first, end)` of the span inside the address range `[start, stop)`. */
  #overlap(start: number, stop: number): [number, number] {
    const from = Math.max(start, this.#base);
    const to = Math.min(stop, this.#end);
    if (from >= to) return [0, 0];
    return [Math.floor((from - this.#base) / P), Math.ceil((to - this.#base) / P)];
  }

  /**
   * A removal of pages `[first, end)` was read, and its zap may already be under
   * way: pages not saved yet are saved if provably intact — zero pages need no
   * read; a data page is copied only if it is write-protected before and after the
   * copy (a zap removes the protection, and nothing puts it back) — otherwise the
   * snapshot fails.
   */
  #rescue(first: number, end: number): void {
    const state = this.#state;
    let unsaved = false;
    for (let i = first; i < end; i++) {
      if (state[i] === UNSAVED_ZERO) this.#save(i, i + 1, PROGRESS.byCopier);
      else if (state[i] === UNSAVED_DATA) unsaved = true;
    }
    if (!unsaved) return;
    const lost = this.#unprotectedData(first, end);
    if (lost.length > 0) throw this.#dropped(lost);
    // Copy, check again, and only then make the pages final.
    const sink = this.#sink!;
    const copied: [number, number][] = [];
    for (let i = first; i < end;) {
      if (state[i] !== UNSAVED_DATA) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < end && state[j] === UNSAVED_DATA) j++;
      sink.copy(i, j - i);
      copied.push([i, j - i]);
      i = j;
    }
    const after = this.#unprotectedData(first, end);
    if (after.length > 0) throw this.#dropped(after);
    for (const [i, n] of copied) {
      sink.commit(i, n);
      this.#account(i, i + n, PROGRESS.byCopier, n * P);
      this.#progress[PROGRESS.rescued] += n;
    }
  }

  /** Runs of unsaved data pages in `[first, end)` that are no longer write-protected. */
  #unprotectedData(first: number, end: number): [number, number][] {
    const runs: [number, number][] = [];
    const state = this.#state;
    const range = { address: BigInt(this.#base + first * P), length: (end - first) * P };
    this.#scanner.visit(range, prepared().unprotected, (f, n) => {
      for (let i = first + f; i < first + f + n; i++) {
        if (state[i] !== UNSAVED_DATA) continue;
        const last = runs.at(-1);
        if (last && last[0] + last[1] === i) last[1]++;
        else runs.push([i, 1]);
      }
    });
    return runs;
  }

  #dropped(runs: [number, number][]): UffdError {
    return torn(
      `pages ${pageList(runs)} of the target were dropped (MADV_DONTNEED or similar) before the snapshot saved them`,
      this.#data.holdChanges
        ? undefined
        : "with holdChanges (the default) such a change waits until every page is saved",
    );
  }

  /** Messages read while setting up: faults are kept for later, events checked. */
  #setupMessages(): void {
    for (;;) {
      const n = this.#batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw new UffdError({ errno: -n, operation: "read", args: { fd: this.#fd } });
      for (let i = 0; i < n; i++) {
        const event = this.#batch.event(i);
        if (event === UFFD_EVENT_PAGEFAULT) this.#setupFaults.push(this.#batch.address(i));
        else {
          const msg = this.#batch.message(i);
          if (!("raw" in msg) && msg.event === UFFD_EVENT_REMOVE) {
            const [first, end] = this.#overlap(Number(msg.start), Number(msg.end));
            if (first < end) this.#setupRemoved.push([first, end]);
          } else this.#event(msg);
        }
      }
    }
  }

  /** `UFFDIO_WRITEPROTECT` on the Worker's own unregistered page: `-EAGAIN` while an event is in flight. */
  #probe(): number {
    return resolve.writeprotect(this.#fd, this.#probeAddress, P, 0);
  }

  /**
   * Everything is saved. Before declaring the snapshot good, make sure no unmap or
   * move of the target is in flight whose event is not read yet (it may have
   * begun before the last copies): read the events until the probe is clean.
   */
  #settle(): void {
    const deadline = performance.now() + SETTLE_MS;
    while (this.#probe() === -EAGAIN) {
      this.#checkAbort();
      if (performance.now() > deadline) {
        throw torn(`the target's address space kept changing for ${SETTLE_MS} ms after the last page was saved`);
      }
      this.#drainEvents();
      this.#poll.poll(1);
    }
  }

  /** Reads every queued message; only events matter (faults are woken by the close that follows). */
  #drainEvents(): void {
    for (;;) {
      const n = this.#batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw new UffdError({ errno: -n, operation: "read", args: { fd: this.#fd } });
      for (let i = 0; i < n; i++) {
        if (this.#batch.event(i) !== UFFD_EVENT_PAGEFAULT) this.#event(this.#batch.message(i));
      }
    }
  }

  // --- saving ---

  /** One step of the background copier: the next `chunkPages` pages, then unprotect them in one call. */
  #copyChunk(): void {
    const state = this.#state;
    while (this.#cursor < this.#pages && state[this.#cursor] === SAVED) this.#cursor++;
    if (this.#cursor >= this.#pages) return;
    const first = this.#cursor;
    const end = Math.min(this.#pages, first + this.#data.chunkPages);
    this.#save(first, end, PROGRESS.byCopier);
    this.#cursor = end;
    const rc = resolve.writeprotect(this.#fd, this.#base + first * P, (end - first) * P, 0);
    // EAGAIN: a change is in flight. The pages stay protected; a write to one faults and is let through then.
    if (rc === -EAGAIN) {
      if (this.#data.holdChanges) this.#changing = true;
    } else if (rc < 0 && rc !== -ENOENT) {
      throw new UffdError({ errno: -rc, operation: "UFFDIO_WRITEPROTECT", args: { start: BigInt(this.#base) } });
    }
  }

  /** Saves every page left, without unprotecting (the userfaultfd is closed right after). */
  #saveAll(): void {
    this.#progress[PROGRESS.heldChanges]++;
    const step = Math.max(this.#data.chunkPages, 256);
    for (let first = this.#cursor; first < this.#pages; first += step) {
      this.#checkAbort();
      this.#save(first, Math.min(this.#pages, first + step), PROGRESS.byCopier);
    }
    this.#cursor = this.#pages;
  }

  /** Saves the unsaved pages of `[first, end)` into the sink, in runs, and counts them under `by`. */
  #save(first: number, end: number, by: number): void {
    const state = this.#state;
    const sink = this.#sink!;
    for (let i = first; i < end;) {
      const s = state[i]!;
      if (s === SAVED) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < end && state[j] === s) j++;
      if (s === UNSAVED_DATA) {
        sink.copy(i, j - i);
        sink.commit(i, j - i);
        this.#account(i, j, by, (j - i) * P);
      } else {
        sink.zero(i, j - i);
        this.#progress[PROGRESS.zero] += j - i;
        this.#account(i, j, by, 0);
      }
      i = j;
    }
  }

  #account(first: number, end: number, by: number, bytes: number): void {
    this.#state.fill(SAVED, first, end);
    this.#remaining -= end - first;
    const progress = this.#progress;
    progress[by] += end - first;
    progress[PROGRESS.bytesRead] += bytes;
    progress[PROGRESS.saved] += end - first; // last: readers that see it complete see the rest
  }

  #checkAbort(): void {
    if (Atomics.load(this.#ctrl, SNAP_CTRL.ABORT) !== 0) throw new Aborted();
  }
}

type FileWrittenOrNone = ReturnType<PageSink["finish"]>;

/** Runs the snapshot in this Worker. */
function serve(data: SnapshotWorkerData): void {
  const control = new Int32Array(data.control);
  const post = (message: SnapshotMessage) => parentPort!.postMessage(message);
  let loop: SnapshotLoop | undefined;
  let ended = false;

  function closeFirst(state: number): void {
    // Before anything is reported: the main isolate itself may be blocked in a fault.
    Userfaultfd.adopt(data.uffd).close();
    try {
      loop?.discard();
      loop?.close();
    } catch { /* already failing */ }
    Atomics.store(control, SNAP_CTRL.STATE, state);
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
  }

  function fail(error: unknown): void {
    if (ended) return;
    ended = true;
    if (error instanceof Aborted) {
      closeFirst(SNAP_STATE.ABORTED);
      post({ type: "aborted" });
      return;
    }
    closeFirst(SNAP_STATE.FAILED);
    let serialized;
    try {
      serialized = serializeError(error);
    } catch {
      serialized = { name: "Error", message: String(error) };
    }
    post({ type: "failed", error: serialized });
  }

  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    fail(e.error);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    fail(e.reason);
  });
  process.on("exit", (code: number) => {
    if (!ended) fail(new Error(`the snapshot's Worker exited (code ${code}) before the snapshot was complete`));
  });

  try {
    loop = new SnapshotLoop(data);
    const dataPages = loop.setup();
    Atomics.store(control, SNAP_CTRL.STATE, SNAP_STATE.RUNNING);
    post({ type: "protected", dataPages });
    const file = loop.run();
    loop.close();
    ended = true;
    Atomics.store(control, SNAP_CTRL.STATE, SNAP_STATE.DONE);
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
    post(file ? { type: "done", file } : { type: "done" });
  } catch (e) {
    fail(e);
  }
}

// Imported anywhere else (a documentation run, a bundler's analysis), this module does nothing.
if (!isMainThread && workerData !== null && typeof workerData === "object" && "sink" in workerData) {
  serve(workerData as SnapshotWorkerData);
}
