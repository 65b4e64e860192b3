/**
 * The fault handler of a `LiveSnapshot`, run in the first of its two Workers
 * (`_worker.ts`; the copier, `_copier.ts`, runs in the other). It
 * write-protects the target, sorts its pages, then sleeps in `poll()` on the
 * userfaultfd and serves each write-protect fault at once: claim the page (see
 * `_pages.ts`; if the copier has it, wait the microseconds its copy takes),
 * save its old content, unprotect it. It also reads the address-space events and
 * decides when the snapshot is complete. Internal.
 *
 * Why not a `FaultHandler` policy: the guarantees below need control over *when*
 * messages are read (an event's read is what lets the kernel go on) and the
 * events of a batch handled before its faults.
 *
 * Address-space changes of the target (kernel facts in `docs/kernel-notes.md`):
 * - `MADV_DONTNEED` (`EVENT_REMOVE`): the kernel queues the event *before* it
 *   zaps, and the zapping thread waits until the event is read. Before each
 *   `read`, the handler probes whether an event is in flight (`UFFDIO_WRITEPROTECT`
 *   on a page of its own that is not registered: `EAGAIN` while the userfaultfd's
 *   `mmap_changing` count is raised, `ENOENT` otherwise). If one is, it saves every
 *   page left (no unprotecting: that is `EAGAIN` too) and waits for the copier's
 *   copies in flight, and only then reads the event: the old content is saved first.
 *   An event that slips in between the probe and the `read` (or every one, with
 *   `holdChanges: false`) is handled before the faults of its batch: pages of the
 *   removed range not saved yet are saved if provably intact (still
 *   write-protected before and after the copy, which a zap would have undone);
 *   pages the copier copied after that `read` began cannot be vouched for; either
 *   way the snapshot then fails, naming the pages. Never a silently wrong page.
 * - `munmap` / `mremap` (`EVENT_UNMAP` / `EVENT_REMAP`): the kernel unmaps first
 *   and queues the event afterwards, so the old content may be gone; reads of the
 *   target use `process_vm_writev` (EFAULT, not SIGSEGV). Any such event over the
 *   target read before the snapshot completes fails it. Completion itself waits for
 *   a clean probe (or reads the events in flight), so a change that began before
 *   the last copies is never missed.
 *
 * @module
 */

import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { MessageBatch } from "../ffi/_message_batch.ts";
import { PollSet } from "../ffi/_pollset.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import type { UffdMsg } from "../ffi/_structs.ts";
import { latencyBucket } from "../handler/stats.ts";
import { POLLERR, POLLIN, POLLNVAL } from "../ffi/linux.ts";
import { fillUntouched, PageBits } from "../kernel/_page_contents.ts";
import { Region } from "../kernel/region.ts";
import { HANDLER, PageStates, SAVED, UNSAVED_DATA, UNSAVED_ZERO } from "./_pages.ts";
import { openSink, type PageSink } from "./_sinks.ts";
import { COPIER_STATE, PROGRESS, SNAP_CTRL, type SnapshotWorkerData } from "./_protocol.ts";
import {
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFDIO_WRITEPROTECT_MODE_WP,
} from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import { byMapping } from "../kernel/maps.ts";

const EAGAIN = ERRNO.EAGAIN!;
const ENOENT = ERRNO.ENOENT!;
const EINTR = ERRNO.EINTR!;
const MODE_WP = Number(UFFDIO_WRITEPROTECT_MODE_WP);
/** How long completion waits for an address-space change in flight to show its event, and for the copier to end. */
const SETTLE_MS = 10_000;
/** Rounds of protect-and-check before setup gives up on memory that keeps being dropped. */
const SETUP_ROUNDS = 50;

/** The snapshot was aborted from the main side. */
export class Aborted extends Error {}

/** The copier failed: it reports why itself. */
export class CopierFailed extends Error {}

/** A snapshot that would be wrong: fails with the pages named. */
export function torn(detail: string, hint?: string): UffdError {
  return new UffdError({ errno: ERRNO.EIO, operation: "LiveSnapshot", detail, hint });
}

function pageList(runs: [number, number][]): string {
  const text = runs.slice(0, 8).map(([a, n]) => (n === 1 ? `${a}` : `${a}..${a + n - 1}`)).join(", ");
  return runs.length > 8 ? `${text}, …` : text;
}

function addRun(runs: [number, number][], i: number): void {
  const last = runs.at(-1);
  if (last && last[0] + last[1] === i) last[1]++;
  else runs.push([i, 1]);
}

/** The fault handler's stamp: its copies never race with a removal it has read. */
const zeroStamp = () => 0;

/**
 * Ends the snapshot's registration of its target and closes this reference: `UFFDIO_UNREGISTER` of the span first,
 * then the close. On Linux 6.18 the last close alone removes every protection left, but Debian's 6.1.0-50 leaves the
 * uffd-wp bits in the PTEs (pagemap reports the pages protected, a later registration starts with them protected by
 * nobody); unregistering clears them there too, and wakes every writer waiting in a fault. Not for a lent userfaultfd
 * (its registration is the watch's).
 */
export function closeTarget(uffd: Userfaultfd, base: number, pages: number): void {
  try {
    uffd.unregister({ address: BigInt(base), length: pages * PAGE_SIZE });
  } catch { /* closed already, or the target is gone: the close is all that is left */ }
  uffd.close();
}

/** The fault handler's loop. One per snapshot. */
export class FaultsLoop {
  readonly #data: SnapshotWorkerData;
  readonly #uffd: Userfaultfd;
  readonly #fd: number;
  readonly #efd: number;
  readonly #ctrl: Int32Array;
  readonly #progress: Float64Array;
  readonly #states: PageStates;
  readonly #poll: PollSet;
  readonly #batch: MessageBatch;
  /**
   * Which pages are protected and which hold data: PAGEMAP_SCAN, or `/proc/<pid>/pagemap` before Linux 6.7
   * (its own fd, by pid: `"self"` would keep one open for the Worker's isolate after it is gone).
   */
  readonly #bits: PageBits;
  readonly #base: number;
  readonly #pages: number;
  readonly #end: number;
  readonly #efdBuffer = new Uint8Array(8);
  /** A private page of the Worker's own, never registered: the probe's target. */
  readonly #probePage: Region;
  readonly #probeAddress: number;
  readonly #sink: PageSink;
  /** The lent watch's bitmap of pages written (see `SnapshotWorkerData.lent`). */
  readonly #lent: Uint8Array | undefined;
  /** The epoch of the `read` whose messages are being handled. */
  #epoch = 0;
  /** An address-space change is in flight (an unprotect said EAGAIN): save everything left first (`holdChanges`). */
  #changing = false;
  /** Pages whose writer is still to be woken: their unprotect said EAGAIN (retried once the events are read). */
  readonly #pendingWake: number[] = [];
  /** Faults read while setting up, served once the target is protected. */
  readonly #setupFaults: number[] = [];
  /** Pages of removals read while setting up: their zap may come after the protection. */
  readonly #setupRemoved: [number, number][] = [];
  /** The data pages when the target was sorted (a file's table). */
  #dataPages: Uint32Array<ArrayBuffer> = new Uint32Array(0);

  /** Opens the sink (a file sink creates its file now, before anything is protected). */
  constructor(data: SnapshotWorkerData) {
    this.#data = data;
    this.#uffd = Userfaultfd.adopt(data.uffd);
    this.#fd = data.uffd.fd;
    this.#efd = data.eventFd;
    this.#ctrl = new Int32Array(data.control);
    this.#progress = new Float64Array(data.progress);
    this.#states = new PageStates(data, data.control, data.pages, data.chunkPages);
    this.#poll = new PollSet([this.#fd, this.#efd]);
    this.#batch = new MessageBatch(data.batch);
    this.#base = data.base;
    this.#pages = data.pages;
    this.#end = data.base + data.pages * PAGE_SIZE;
    this.#bits = new PageBits(data.pageBits);
    this.#probePage = Region.map(PAGE_SIZE);
    this.#probeAddress = Number(this.#probePage.address);
    this.#progress[PROGRESS.pages] = data.pages;
    const geometry = { base: this.#base, pages: this.#pages, head: data.head, length: data.length };
    this.#sink = openSink(data.sink, geometry, data.chunkPages, this.#ctrl, true);
    this.#lent = data.lent === null ? undefined : new Uint8Array(data.lent);
  }

  /**
   * Write-protects the span, checks that every page of it is protected (retrying
   * where pages were dropped meanwhile) and sorts the pages into those holding
   * data and those that are zero. Faults are not served until this returns: every
   * thread that hit a protected page waits until the whole span is protected,
   * which is what makes the snapshot one moment in time. Returns the data pages.
   */
  setup(): number {
    const d = this.#data;
    const span = { address: BigInt(this.#base), length: this.#pages * PAGE_SIZE };
    for (let round = 0;; round++) {
      if (round === SETUP_ROUNDS) {
        throw torn("the target's pages kept being dropped while it was being write-protected");
      }
      if (d.untouchedFill !== null) {
        // Without WP_UNPOPULATED a never-touched page has no PTE to protect: map the zero page there first.
        const rc = fillUntouched(this.#fd, span.address, span.length, d.untouchedFill);
        if (rc < 0 && rc !== -EINTR && rc !== -EAGAIN) {
          const operation = d.untouchedFill === "uffd-zeropage" ? "UFFDIO_ZEROPAGE" : "MADV_POPULATE_READ";
          throw failure(operation, rc, { start: span.address });
        }
      }
      let rc = resolve.writeprotect(this.#fd, this.#base, span.length, MODE_WP);
      if (rc === -ENOENT && this.#pages > 1) {
        // Linux before 6.4 protects one mapping per call; the span may be several (a grown memory).
        rc = byMapping(this.#base, span.length, (a, n) => resolve.writeprotect(this.#fd, a, n, MODE_WP));
        if (rc > 0) rc = 0;
      }
      if (rc === -EAGAIN) {
        // An address-space change of the target is in flight: read its event, then protect again.
        this.#setupMessages();
        this.#poll.poll(1);
        continue;
      }
      if (rc < 0) {
        throw failure("UFFDIO_WRITEPROTECT", rc, { start: span.address });
      }
      if (this.#bits.unprotected(span, () => {}, { first: true }) === 0) break;
    }
    // Sort the pages: data (resident, not the zero page; swapped when swap is on), or zero.
    const states = this.#states;
    this.#bits.data(span, (first, n) => states.markData(first, first + n));
    let dataPages = 0;
    for (let i = 0; i < this.#pages; i++) if (states.state(i) === UNSAVED_DATA) dataPages++;
    const list = new Uint32Array(dataPages);
    const ranks = d.sink.kind === "file" ? new Int32Array(d.sink.ranks) : undefined;
    for (let i = 0, j = 0; i < this.#pages; i++) {
      if (states.state(i) !== UNSAVED_DATA) continue;
      if (ranks) ranks[i] = j;
      list[j++] = i;
    }
    this.#dataPages = list;
    this.#sink.layout(list);
    this.#progress[PROGRESS.startedAt] = performance.timeOrigin + performance.now();
    return dataPages;
  }

  /**
   * Serves faults until every page is saved (by either Worker), makes sure no
   * address-space change of the target is in flight, waits for the copier to end,
   * closes the userfaultfd and completes the sink.
   */
  run(): ReturnType<PageSink["finish"]> {
    const poll = this.#poll;
    const ctrl = this.#ctrl;
    // A removal read while setting up may zap its pages only now: save them first, if provably intact.
    for (const [first, end] of this.#setupRemoved.splice(0)) this.#rescue(first, end);
    for (const address of this.#setupFaults.splice(0)) this.#fault(address, performance.now());
    for (;;) {
      this.#check();
      if (this.#changing && this.#states.savedCount() < this.#pages) this.#saveAll();
      if (this.#states.savedCount() === this.#pages) break;
      if (this.#pendingWake.length > 0) this.#retryWakes();
      const ready = poll.poll(this.#pendingWake.length > 0 ? 1 : -1);
      if (ready < 0 && ready !== -EINTR) {
        throw failure("poll", ready, { fd: this.#fd });
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
    }
    this.#settle();
    this.#progress[PROGRESS.finishedAt] = performance.timeOrigin + performance.now();
    Atomics.notify(ctrl, SNAP_CTRL.DELIVERED); // a copier waiting for the consumer: nothing is left
    // The copier closes its reference (and its file) when it sees every page saved; then the close below
    // releases the userfaultfd: every protection left is removed and every waiting writer woken.
    this.#waitCopier();
    // A lent userfaultfd stays with the watch (the close below is of this Worker's own duplicate): its
    // pages stay protected, and this Worker serves their faults until the main side takes it back.
    if (this.#lent === undefined) closeTarget(this.#uffd, this.#base, this.#pages);
    return this.#sink.finish();
  }

  /**
   * After a snapshot of watched memory (a lent userfaultfd): serves the watch's
   * faults — records the page written and lets the write through — until the main
   * side takes the userfaultfd back (`SNAP_CTRL.RETURNED`), so that no writer waits
   * meanwhile, the main isolate included. Then closes this Worker's reference.
   */
  serveLent(): void {
    const lent = this.#lent!;
    const batch = this.#batch;
    const retry: number[] = [];
    const mark = (first: number, end: number) => {
      for (let i = first; i < end; i++) lent[i >> 3]! |= 1 << (i & 7);
    };
    const letThrough = (page: number): boolean => {
      const rc = resolve.writeprotect(this.#fd, page, PAGE_SIZE, 0);
      if (rc === -EAGAIN) return false;
      if (rc < 0 && rc !== -ENOENT) throw failure("UFFDIO_WRITEPROTECT", rc, { start: BigInt(page), len: PAGE_SIZE });
      return true;
    };
    while (Atomics.load(this.#ctrl, SNAP_CTRL.RETURNED) === 0 && Atomics.load(this.#ctrl, SNAP_CTRL.ABORT) === 0) {
      for (let k = retry.length - 1; k >= 0; k--) if (letThrough(retry[k]!)) retry.splice(k, 1);
      const ready = this.#poll.poll(retry.length > 0 ? 1 : -1);
      if (ready < 0 && ready !== -EINTR) throw failure("poll", ready, { fd: this.#fd });
      if (this.#poll.revents(1) & POLLIN) libc.read(this.#efd, this.#efdBuffer);
      if (!(this.#poll.revents(0) & POLLIN)) continue;
      for (;;) {
        const n = batch.read(this.#fd);
        if (n === -EAGAIN) break;
        if (n < 0) throw failure("read", n, { fd: this.#fd });
        for (let i = 0; i < n; i++) {
          if (batch.event(i) !== UFFD_EVENT_PAGEFAULT) {
            // Dropped, moved or unmapped pages: written, as far as the watch can tell.
            const msg = batch.message(i);
            if ("start" in msg && "end" in msg) mark(...this.#overlap(Number(msg.start), Number(msg.end)));
            else if ("from" in msg) mark(...this.#overlap(Number(msg.from), Number(msg.from + msg.len)));
            continue;
          }
          const address = batch.address(i);
          const page = address - (address % PAGE_SIZE);
          if (page >= this.#base && page < this.#end) {
            mark((page - this.#base) / PAGE_SIZE, (page - this.#base) / PAGE_SIZE + 1);
          }
          if (!letThrough(page)) retry.push(page);
        }
        if (n < batch.capacity) break;
      }
    }
    // Everything queued before the hand-back is served; what comes after waits for the watch's handler.
    for (const page of retry) letThrough(page);
    this.#uffd.close();
  }

  /**
   * A snapshot of watched memory failed: nobody may be left waiting, and the watch
   * must not lose a write — every page is let through (protection removed, writers
   * woken) and counted as written; the watch protects them again when it takes its
   * userfaultfd back.
   */
  releaseLent(): void {
    const lent = this.#lent!;
    lent.fill(0xff);
    resolve.writeprotect(this.#fd, this.#base, this.#pages * PAGE_SIZE, 0);
  }

  /** Whether the userfaultfd is a write watch's, lent for the snapshot. */
  get lent(): boolean {
    return this.#lent !== undefined;
  }

  /** Gives up: removes a partly written file. */
  discard(): void {
    this.#sink.discard();
  }

  /** Releases what the loop holds in the process (after the userfaultfd is closed): its page, its pagemap fd. */
  close(): void {
    this.#probePage.unmap();
    this.#bits.close();
  }

  // --- faults and events ---

  /** Unprotects the pages whose writers could not be woken while an event was in flight. */
  #retryWakes(): void {
    const pending = this.#pendingWake;
    for (let k = 0; k < pending.length;) {
      const rc = resolve.writeprotect(this.#fd, pending[k]!, PAGE_SIZE, 0);
      if (rc === -EAGAIN) {
        k++;
        continue;
      }
      if (rc < 0 && rc !== -ENOENT) {
        throw failure("UFFDIO_WRITEPROTECT", rc, { start: BigInt(pending[k]!) });
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
      if (this.#data.holdChanges && this.#states.savedCount() < this.#pages && this.#probe() === -EAGAIN) {
        // An madvise/munmap/mremap of the target waits for its event to be read: save everything first.
        this.#saveAll();
        return;
      }
      this.#epoch = this.#states.nextEpoch();
      const n = batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw failure("read", n, { fd: this.#fd });
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
    const page = address - (address % PAGE_SIZE);
    if (page >= this.#base && page < this.#end) {
      const index = (page - this.#base) / PAGE_SIZE;
      if (this.#lent !== undefined) this.#lent[index >> 3]! |= 1 << (index & 7); // written, for the watch
      const states = this.#states;
      const c = states.chunkOf(index);
      if (states.done(c)) this.#progress[PROGRESS.lateFaults]++; // saved, still protected: the copier unprotects now
      else {
        // If the copier holds the chunk, this waits for its copy (microseconds), after which the chunk is done.
        const got = states.lock(c, HANDLER, () => this.#stopping());
        if (got === "stopped") this.#check();
        if (got === "locked") {
          states.saveRuns(index, index + 1, (a, b, data) => this.#write(a, b, data, PROGRESS.byFault), zeroStamp);
          this.#release(c);
        }
      }
    }
    const rc = resolve.writeprotect(this.#fd, page, PAGE_SIZE, 0);
    if (rc === -EAGAIN) {
      // An address-space change is in flight. Holding it: save everything left, then the close wakes
      // this writer. Otherwise: wake it once the change's event is read.
      if (this.#data.holdChanges) this.#changing = true;
      else this.#pendingWake.push(page);
      return;
    }
    if (rc < 0 && rc !== -ENOENT) {
      throw failure("UFFDIO_WRITEPROTECT", rc, { start: BigInt(page), len: PAGE_SIZE });
    }
    this.#progress[PROGRESS.stall + latencyBucket((performance.now() - t0) * 1000)]++;
  }

  /** Releases chunk `c`: done if every page of it is saved. */
  #release(c: number): void {
    const [first, end] = this.#states.chunkPagesOf(c);
    if (this.#states.allSaved(first, end)) this.#states.finish(c);
    else this.#states.unlock(c);
  }

  #event(msg: UffdMsg): void {
    if ("raw" in msg) return; // an event this library does not know: not one of ours
    if (msg.event === UFFD_EVENT_REMOVE) {
      this.#progress[PROGRESS.removes]++;
      const [first, end] = this.#overlap(Number(msg.start), Number(msg.end));
      // Private memory dropped reads back as zeros: written, for the watch.
      if (this.#lent !== undefined) { for (let i = first; i < end; i++) this.#lent[i >> 3]! |= 1 << (i & 7); }
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
    return [Math.floor((from - this.#base) / PAGE_SIZE), Math.ceil((to - this.#base) / PAGE_SIZE)];
  }

  /**
   * A removal of pages `[first, end)` was read (at the current epoch), and its zap
   * may already be under way. With the chunks locked: pages the copier copied
   * after that read began cannot be vouched for, and the snapshot fails. Pages not
   * saved yet are saved if provably intact — zero pages need no read; a data page
   * is copied only if it is write-protected before and after the copy (a zap
   * removes the protection, and nothing puts it back) — otherwise the snapshot fails.
   */
  #rescue(first: number, end: number): void {
    const states = this.#states;
    const epoch = this.#epoch;
    const locked: number[] = [];
    try {
      for (let c = states.chunkOf(first); c <= states.chunkOf(end - 1); c++) {
        const got = states.lock(c, HANDLER, () => this.#stopping());
        if (got === "stopped") this.#check();
        if (got === "locked") locked.push(c);
      }
      const suspect: [number, number][] = [];
      const data: [number, number][] = [];
      for (let i = first; i < end; i++) {
        const s = states.state(i);
        if (s === SAVED) {
          const stamp = states.stamp(i);
          if (stamp > 0 && stamp - 1 >= epoch) addRun(suspect, i);
        } else if (s === UNSAVED_DATA) addRun(data, i);
      }
      if (suspect.length > 0) {
        throw torn(
          `pages ${pageList(suspect)} of the target were being dropped (MADV_DONTNEED or similar) while the ` +
            `copier saved them`,
          this.#data.holdChanges
            ? undefined
            : "with holdChanges (the default) such a change waits until every page is saved",
        );
      }
      // Zero pages: saved as zeros, whatever the zap does.
      for (let i = first; i < end;) {
        if (states.state(i) !== UNSAVED_ZERO) {
          i++;
          continue;
        }
        let j = i + 1;
        while (j < end && states.state(j) === UNSAVED_ZERO) j++;
        states.saveRuns(i, j, (a, b) => this.#write(a, b, false, PROGRESS.byHandler), zeroStamp);
        i = j;
      }
      if (data.length === 0) return;
      const lost = this.#unprotected(data);
      if (lost.length > 0) throw this.#dropped(lost);
      for (const [i, n] of data) this.#sink.copy(i, n);
      const after = this.#unprotected(data);
      if (after.length > 0) throw this.#dropped(after);
      for (const [i, n] of data) {
        this.#sink.commit(i, n);
        this.#count(i, i + n, PROGRESS.byHandler, n * PAGE_SIZE, false);
        this.#progress[PROGRESS.rescued] += n;
        states.markSaved(i, i + n, 0);
      }
    } finally {
      for (const c of locked) this.#release(c);
    }
  }

  /** The pages of `runs` that are no longer write-protected. */
  #unprotected(runs: [number, number][]): [number, number][] {
    const out: [number, number][] = [];
    for (const [first, n] of runs) {
      const range = { address: BigInt(this.#base + first * PAGE_SIZE), length: n * PAGE_SIZE };
      this.#bits.unprotected(range, (f, m) => {
        for (let i = first + f; i < first + f + m; i++) addRun(out, i);
      });
    }
    return out;
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
      this.#epoch = this.#states.nextEpoch();
      const n = this.#batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw failure("read", n, { fd: this.#fd });
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
    return resolve.writeprotect(this.#fd, this.#probeAddress, PAGE_SIZE, 0);
  }

  /**
   * Everything is saved. Before declaring the snapshot good, make sure no unmap or
   * move of the target is in flight whose event is not read yet (it may have
   * begun before the last copies): read the events until the probe is clean.
   */
  #settle(): void {
    const deadline = performance.now() + SETTLE_MS;
    while (this.#probe() === -EAGAIN) {
      this.#check();
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
      this.#epoch = this.#states.nextEpoch();
      const n = this.#batch.read(this.#fd);
      if (n === -EAGAIN) return;
      if (n < 0) throw failure("read", n, { fd: this.#fd });
      for (let i = 0; i < n; i++) {
        if (this.#batch.event(i) !== UFFD_EVENT_PAGEFAULT) this.#event(this.#batch.message(i));
      }
    }
  }

  /** Waits (bounded) until the copier has ended; throws if it failed. */
  #waitCopier(): void {
    const ctrl = this.#ctrl;
    const deadline = performance.now() + SETTLE_MS;
    for (;;) {
      const copier = Atomics.load(ctrl, SNAP_CTRL.COPIER);
      if (copier === COPIER_STATE.DONE) return;
      if (copier === COPIER_STATE.FAILED) throw new CopierFailed();
      this.#check();
      if (performance.now() > deadline) throw new Error(`the copier did not end within ${SETTLE_MS} ms`);
      Atomics.wait(ctrl, SNAP_CTRL.COPIER, copier, 10);
    }
  }

  // --- saving ---

  /**
   * Saves every page left, without unprotecting (the userfaultfd is closed right
   * after); a chunk the copier holds is waited for.
   */
  #saveAll(): void {
    this.#progress[PROGRESS.heldChanges]++;
    const states = this.#states;
    for (let c = 0; c < states.chunks; c++) {
      const got = states.lock(c, HANDLER, () => this.#stopping());
      if (got === "stopped") this.#check();
      if (got !== "locked") continue;
      const [first, end] = states.chunkPagesOf(c);
      states.saveRuns(first, end, (a, b, data) => this.#write(a, b, data, PROGRESS.byHandler), zeroStamp);
      states.finish(c);
    }
  }

  /** Writes a run of claimed pages to the sink (copied, or zeros), counted under `by`. */
  #write(first: number, end: number, data: boolean, by: number): void {
    const sink = this.#sink;
    if (data) {
      sink.copy(first, end - first);
      sink.commit(first, end - first);
      this.#count(first, end, by, (end - first) * PAGE_SIZE, false);
    } else {
      sink.zero(first, end - first);
      this.#count(first, end, by, 0, true);
    }
  }

  #count(first: number, end: number, by: number, bytes: number, zero: boolean): void {
    const progress = this.#progress;
    progress[by] += end - first;
    progress[PROGRESS.bytesHandler] += bytes;
    if (zero) progress[PROGRESS.zeroHandler] += end - first;
  }

  /** The snapshot is being given up (aborted from the main side, or the copier failed). */
  #stopping(): boolean {
    return Atomics.load(this.#ctrl, SNAP_CTRL.ABORT) !== 0 ||
      Atomics.load(this.#ctrl, SNAP_CTRL.COPIER) === COPIER_STATE.FAILED;
  }

  #check(): void {
    if (Atomics.load(this.#ctrl, SNAP_CTRL.ABORT) !== 0) throw new Aborted();
    if (Atomics.load(this.#ctrl, SNAP_CTRL.COPIER) === COPIER_STATE.FAILED) throw new CopierFailed();
  }
}
