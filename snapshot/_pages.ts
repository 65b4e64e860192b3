/**
 * The state of each page of a `LiveSnapshot`, shared by its two Workers (the
 * fault handler and the copier) in `SharedArrayBuffer`s: not saved yet (and
 * whether it holds data or is zero), or saved. Pages are grouped in chunks of
 * `chunkPages`; a Worker changes the pages of a chunk only while it holds the
 * chunk's lock (taken by compare-and-swap), so each page is saved exactly once
 * whoever gets there first. The copier saves a whole chunk under its lock and
 * marks it done, after which every page of it is saved for good; the fault
 * handler locks a chunk just long enough to save the one page a writer waits for.
 * Only saved pages are ever unprotected, so no write reaches a page before its old
 * content is saved. One atomic operation per chunk (JavaScript `Atomics` cost tens
 * of nanoseconds; a page costs a few nanoseconds this way).
 *
 * The epoch: the fault Worker adds 1 to `SNAP_CTRL.EPOCH` right before each
 * `read` of the userfaultfd, and the copier stamps each page it saves with
 * `1 +` the epoch it sees *after* its copy. A removal (`MADV_DONTNEED`) read at
 * epoch `E` can zap its pages as soon as it is read; a page the copier saved with
 * stamp `≤ E` was copied before that read began, so before the zap. A larger stamp
 * means the copy may have raced with the zap. Pages the fault Worker saves are
 * stamped 0: it handles a batch's events before its faults, so its copies never
 * race with a removal it has read. Internal.
 *
 * @module
 */

import { SNAP_CTRL } from "./_protocol.ts";

/** Not saved; the page was never populated or maps the zero page: it is saved as zeros, without a read. */
export const UNSAVED_ZERO = 0;
/** Not saved; the page holds data. */
export const UNSAVED_DATA = 1;
/** Saved. */
export const SAVED = 2;

/** Chunk lock states. */
const FREE = 0;
/** Held by the copier. */
export const COPIER = 1;
/** Held by the fault handler. */
export const HANDLER = 2;
/** Every page of the chunk is saved; nobody locks it again. */
const DONE = 3;

/** Bytes of the shared buffers for `pages` pages in chunks of `chunkPages`. */
export function pageStateBuffers(pages: number, chunkPages: number): {
  states: SharedArrayBuffer;
  epochs: SharedArrayBuffer;
  locks: SharedArrayBuffer;
} {
  return {
    states: new SharedArrayBuffer(Math.max(1, pages)),
    epochs: new SharedArrayBuffer(Math.max(4, pages * 4)),
    locks: new SharedArrayBuffer(Math.max(4, Math.ceil(pages / chunkPages) * 4)),
  };
}

/** The shared page states, stamps, chunk locks and saved count. */
export class PageStates {
  /** Number of pages. */
  readonly pages: number;
  /** Pages per chunk. */
  readonly chunkPages: number;
  /** Number of chunks. */
  readonly chunks: number;
  readonly #states: Uint8Array;
  readonly #epochs: Int32Array;
  readonly #locks: Int32Array;
  readonly #ctrl: Int32Array;

  /** Views over the shared buffers. */
  constructor(
    buffers: { states: SharedArrayBuffer; epochs: SharedArrayBuffer; locks: SharedArrayBuffer },
    control: SharedArrayBuffer,
    pages: number,
    chunkPages: number,
  ) {
    this.#states = new Uint8Array(buffers.states);
    this.#epochs = new Int32Array(buffers.epochs);
    this.#locks = new Int32Array(buffers.locks);
    this.#ctrl = new Int32Array(control);
    this.pages = pages;
    this.chunkPages = chunkPages;
    this.chunks = Math.ceil(pages / chunkPages);
  }

  /** Marks pages `[first, end)` as holding data (setup, before the copier starts). */
  markData(first: number, end: number): void {
    this.#states.fill(UNSAVED_DATA, first, end);
  }

  /** The state of page `i`: read it under its chunk's lock, or once the chunk is done (or before the copier starts). */
  state(i: number): number {
    return this.#states[i]!;
  }

  /** The chunk holding page `i`. */
  chunkOf(i: number): number {
    return Math.floor(i / this.chunkPages);
  }

  /** The pages `[first, end)` of chunk `c`. */
  chunkPagesOf(c: number): [number, number] {
    const first = c * this.chunkPages;
    return [first, Math.min(this.pages, first + this.chunkPages)];
  }

  /** Whether every page of chunk `c` is saved for good. */
  done(c: number): boolean {
    return Atomics.load(this.#locks, c) === DONE;
  }

  /**
   * Takes chunk `c`'s lock for `who` (`COPIER` or `HANDLER`), waiting (spinning:
   * the other holds it for at most one chunk's copy) while the other holds it.
   * `"done"` when the chunk is done (nothing to save there); `"stopped"` when
   * `giveUp()` said so while waiting.
   */
  lock(c: number, who: number, giveUp: () => boolean): "locked" | "done" | "stopped" {
    const locks = this.#locks;
    for (let spins = 0;; spins++) {
      const s = Atomics.compareExchange(locks, c, FREE, who);
      if (s === FREE) return "locked";
      if (s === DONE) return "done";
      if ((spins & 1023) === 1023 && giveUp()) return "stopped";
    }
  }

  /** Releases chunk `c` with pages still unsaved. */
  unlock(c: number): void {
    Atomics.store(this.#locks, c, FREE);
  }

  /** Releases chunk `c` as done: every page of it is saved. */
  finish(c: number): void {
    Atomics.store(this.#locks, c, DONE);
  }

  /** Whether every page of `[first, end)` is saved (under the chunk's lock). */
  allSaved(first: number, end: number): boolean {
    const states = this.#states;
    for (let i = first; i < end; i++) if (states[i] !== SAVED) return false;
    return true;
  }

  /**
   * Under the lock of the chunks holding `[first, end)`: calls `run(first, end,
   * data)` for each run of consecutive unsaved pages that are all data or all
   * zero, then marks the run saved, stamped with what `stamp()` returns after the
   * run, and counts it. Returns the pages saved.
   */
  saveRuns(
    first: number,
    end: number,
    run: (first: number, end: number, data: boolean) => void,
    stamp: () => number,
  ): number {
    const states = this.#states;
    let saved = 0;
    for (let i = first; i < end;) {
      const s = states[i]!;
      if (s === SAVED) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < end && states[j] === s) j++;
      run(i, j, s === UNSAVED_DATA);
      this.markSaved(i, j, stamp());
      saved += j - i;
      i = j;
    }
    return saved;
  }

  /** Under the chunks' locks: marks `[first, end)` saved with `stamp`, and counts them. */
  markSaved(first: number, end: number, stamp: number): void {
    this.#epochs.fill(stamp, first, end);
    this.#states.fill(SAVED, first, end);
    Atomics.add(this.#ctrl, SNAP_CTRL.SAVED, end - first);
  }

  /** The stamp page `i` was saved with (0: by the fault handler). Under the lock, or once the chunk is done. */
  stamp(i: number): number {
    return this.#epochs[i]!;
  }

  /** Pages saved so far, by both Workers. */
  savedCount(): number {
    return Atomics.load(this.#ctrl, SNAP_CTRL.SAVED);
  }

  /** The copier's stamp for a copy finishing now: 1 + the current epoch. */
  copierStamp(): number {
    return Atomics.load(this.#ctrl, SNAP_CTRL.EPOCH) + 1;
  }

  /** Starts a new epoch (the fault Worker, right before a `read`); returns it. */
  nextEpoch(): number {
    return Atomics.add(this.#ctrl, SNAP_CTRL.EPOCH, 1) + 1;
  }
}
