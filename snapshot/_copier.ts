/**
 * The background copier of a `LiveSnapshot`, run in the second of its two Workers
 * (the fault handler, `_faults.ts`, runs in the first): once the target
 * is protected, it walks the pages in address order, a chunk of `chunkPages` at a
 * time — claims the pages nobody has saved (`_pages.ts`), copies them into
 * the sink, marks them saved with the epoch it sees after the copy, and unprotects
 * the saved pages with one `UFFDIO_WRITEPROTECT` per run of done chunks (up to
 * `UNPROTECT_PAGES`), through its own copy of the userfaultfd. Pages the fault handler is saving at that moment
 * are left protected: it unprotects them itself. With a callback sink it waits
 * while `stagingPages` pages are queued for the main thread. It never reads the
 * userfaultfd. Internal.
 *
 * It ends when it has walked every chunk, when every page is saved, or when the
 * snapshot is given up; it then closes its file descriptors, says so in
 * `SNAP_CTRL.COPIER` and wakes the fault handler.
 *
 * @module
 */

import { ERRNO, failure } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import { COPIER, PageStates } from "./_pages.ts";
import { openSink, type PageSink } from "./_sinks.ts";
import { COPIER_STATE, PROGRESS, SNAP_CTRL, SNAP_STATE, type SnapshotWorkerData } from "./_protocol.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import { byMapping } from "../kernel/maps.ts";

const EAGAIN = ERRNO.EAGAIN!;
const ENOENT = ERRNO.ENOENT!;
/**
 * Pages the copier unprotects per `UFFDIO_WRITEPROTECT` (whole chunks, at least one): done chunks in a row are
 * unprotected together. Unprotecting costs per page far more than protecting on the CI VM, and less per page in
 * larger calls; a write to a saved page still protected meanwhile faults and is let through at once.
 *
 * Until the program writes a page that is saved already (`PROGRESS.lateFaults`), the copier unprotects nothing:
 * a snapshot of memory nobody writes then costs its copies alone, and the protections left go with the close of
 * the userfaultfd at the end, in one pass (about 1 µs a page on the CI VM, against 2–3 µs a page for
 * `UFFDIO_WRITEPROTECT` calls of 64 to 4096 pages while the snapshot runs). From the first such write on, every
 * saved chunk is unprotected, then each run of done chunks as before, so that writes stop faulting on them.
 */
const UNPROTECT_PAGES = 1024;

/** The copier's run. */
export class CopierLoop {
  readonly #data: SnapshotWorkerData;
  readonly #ctrl: Int32Array;
  readonly #progress: Float64Array;
  readonly #states: PageStates;
  readonly #fd: number;
  #sink: PageSink | undefined;

  /** Views over what the Workers share. */
  constructor(data: SnapshotWorkerData) {
    this.#data = data;
    this.#ctrl = new Int32Array(data.control);
    this.#progress = new Float64Array(data.progress);
    this.#states = new PageStates(data, data.control, data.pages, data.chunkPages);
    this.#fd = data.uffd.fd;
  }

  /** Waits for the target to be protected, then copies until done or given up. */
  run(): void {
    const d = this.#data;
    const ctrl = this.#ctrl;
    const states = this.#states;
    for (;;) {
      const state = Atomics.load(ctrl, SNAP_CTRL.STATE);
      if (state === SNAP_STATE.RUNNING) break;
      if (state !== SNAP_STATE.STARTING || this.#givenUp()) return;
      Atomics.wait(ctrl, SNAP_CTRL.STATE, state, 50);
    }
    const geometry = { base: d.base, pages: d.pages, head: d.head, length: d.length };
    const sink = this.#sink = openSink(d.sink, geometry, d.chunkPages, ctrl, false);
    const lent = d.lent !== null;
    const unprotect = (first: number, end: number) => {
      // A watch's userfaultfd: a saved page stays protected, so the watch's next write to it faults and is recorded.
      if (lent) return;
      const start = d.base + first * PAGE_SIZE;
      let rc = resolve.writeprotect(this.#fd, start, (end - first) * PAGE_SIZE, 0);
      // ENOENT for several pages: the chunk runs into the next mapping (Linux before 6.4): one mapping at a time.
      if (rc === -ENOENT && end - first > 1) {
        rc = byMapping(start, (end - first) * PAGE_SIZE, (a, n) => resolve.writeprotect(this.#fd, a, n, 0));
      }
      // EAGAIN: an address-space change is in flight; the pages stay protected, and a write to one
      // faults and is let through by the fault handler (they are saved).
      if (rc < 0 && rc !== -EAGAIN && rc !== -ENOENT) {
        throw failure("UFFDIO_WRITEPROTECT", rc, { start: BigInt(d.base) });
      }
    };
    const copy = (first: number, end: number, data: boolean) => {
      if (data) {
        sink.copy(first, end - first);
        sink.commit(first, end - first);
        this.#progress[PROGRESS.bytesCopier] += (end - first) * PAGE_SIZE;
      } else {
        sink.zero(first, end - first);
        this.#progress[PROGRESS.zeroCopier] += end - first;
      }
      this.#progress[PROGRESS.byCopier] += end - first;
    };
    const stamp = () => states.copierStamp();
    const giveUp = () => this.#givenUp();
    // Done chunks not unprotected yet: pages [pending, pendingEnd).
    let pending = 0;
    let pendingEnd = 0;
    const flush = () => {
      if (pendingEnd > pending) unprotect(pending, pendingEnd);
      pending = pendingEnd;
    };
    const batch = Math.max(d.chunkPages, UNPROTECT_PAGES);
    // The last chunks need no unprotect: the walk ends when every page is saved (or the snapshot is given up),
    // and the fault handler's close of the userfaultfd then removes every protection left in one go.
    // Before the first late fault, [pending, pendingEnd) spans every chunk saved so far: the walk passes a chunk
    // only once it is done (by the copier or the fault Worker), so a gap in it holds saved pages too.
    this.#walk(states, sink, copy, stamp, giveUp, (first, end) => {
      const eager = this.#progress[PROGRESS.lateFaults]! > 0;
      if (first !== pendingEnd && eager) {
        flush();
        pending = first;
      }
      pendingEnd = end;
      if (eager && pendingEnd - pending >= batch) flush();
    });
  }

  /** The chunks in address order: each one locked, its unsaved pages saved, marked done, then `done(first, end)`. */
  #walk(
    states: PageStates,
    sink: PageSink,
    copy: (first: number, end: number, data: boolean) => void,
    stamp: () => number,
    giveUp: () => boolean,
    done: (first: number, end: number) => void,
  ): void {
    const ctrl = this.#ctrl;
    for (let c = 0; c < states.chunks; c++) {
      if (this.#finished()) break;
      while (sink.throttled()) {
        if (this.#finished()) return;
        Atomics.wait(ctrl, SNAP_CTRL.DELIVERED, Atomics.load(ctrl, SNAP_CTRL.DELIVERED), 50);
      }
      const got = states.lock(c, COPIER, giveUp);
      if (got === "stopped") return;
      if (got === "done") continue;
      const [first, end] = states.chunkPagesOf(c);
      states.saveRuns(first, end, copy, stamp);
      states.finish(c);
      done(first, end);
    }
  }

  /** Closes the sink and the copier's userfaultfd, and tells the fault handler how it ended. */
  end(state: number): void {
    try {
      this.#sink?.close();
    } catch { /* closing a file that failed: the fault Worker removes it */ }
    Userfaultfd.adopt(this.#data.uffd).close();
    Atomics.store(this.#ctrl, SNAP_CTRL.COPIER, state);
    Atomics.notify(this.#ctrl, SNAP_CTRL.COPIER);
    libc.eventfdSignal(this.#data.eventFd);
  }

  /** Nothing left to do: every page saved, or the snapshot given up. */
  #finished(): boolean {
    return this.#states.savedCount() === this.#data.pages || this.#givenUp();
  }

  #givenUp(): boolean {
    const state = Atomics.load(this.#ctrl, SNAP_CTRL.STATE);
    return Atomics.load(this.#ctrl, SNAP_CTRL.ABORT) !== 0 || state === SNAP_STATE.FAILED ||
      state === SNAP_STATE.ABORTED;
  }
}

/** The copier's end states, for `end()`. */
export { COPIER_STATE };
