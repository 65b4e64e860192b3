/**
 * What the main side of a `LiveSnapshot` and its two Workers (the fault handler
 * and the copier) share: the data they start with, the control block and the
 * progress counters (both in `SharedArrayBuffer`s), the page states, the delivery
 * queue of a callback sink, and the messages the Workers post. Internal.
 *
 * - Control block (`Int32Array`, slots `SNAP_CTRL`): the main side sets `ABORT`
 *   and writes the fault Worker's eventfd; the fault Worker stores `STATE`
 *   (`RUNNING` lets the copier start); the copier stores `COPIER` when it is done
 *   or failed. Both add the pages they save to `SAVED` (after marking them), and
 *   the fault Worker bumps `EPOCH` before each `read` of the userfaultfd (see
 *   `_pages.ts`). For a callback sink, a producer reserves queue slots by
 *   adding to `RESERVED`, fills them, then adds to `PUBLISHED` and notifies; the
 *   main side stores how many it `DELIVERED` and notifies the copier.
 * - Progress (`Float64Array`, slots `PROGRESS`): each counter has one writer
 *   (a slot of the fault Worker's, or of the copier's); the main side reads them
 *   at any time and adds them up.
 * - Queue (`Int32Array`, one slot per page, `QUEUE_EMPTY` until filled): page `i`
 *   staged with data is `i`, a page that is all zeros is `-1 - i`.
 *
 * @module
 */

import type { UntouchedFill } from "../kernel/profile.ts";
import type { PageBitsPlan } from "../kernel/_page_contents.ts";
import type { SerializedError } from "../handler/_protocol.ts";
import type { SharedUserfaultfd } from "../kernel/userfaultfd.ts";

/** Slots of the control block. */
export const SNAP_CTRL = {
  /** One of `SNAP_STATE`: the fault Worker's (and so the snapshot's) state. */
  STATE: 0,
  /** Non-zero once the main side asked the Workers to give up. */
  ABORT: 1,
  /** Queue slots published (callback sink). */
  PUBLISHED: 2,
  /** Queue slots the main side delivered to the callback. */
  DELIVERED: 3,
  /** Queue slots reserved by producers. */
  RESERVED: 4,
  /** Pages saved, by both Workers. */
  SAVED: 5,
  /** Incremented by the fault Worker before each `read` of the userfaultfd. */
  EPOCH: 6,
  /** One of `COPIER_STATE`. */
  COPIER: 7,
  /** Non-zero once the main side takes a lent userfaultfd back (the fault Worker stops serving the watch's faults). */
  RETURNED: 8,
  /** Slots in the control block. */
  SIZE: 10,
} as const;

/** Values of `SNAP_CTRL.STATE`. */
export const SNAP_STATE = { STARTING: 0, RUNNING: 1, DONE: 2, FAILED: 3, ABORTED: 4 } as const;

/** Values of `SNAP_CTRL.COPIER`. */
export const COPIER_STATE = { RUNNING: 0, DONE: 1, FAILED: 2 } as const;

/** An unfilled queue slot. */
export const QUEUE_EMPTY = 0x7fffffff;

/** Slots of the progress counters. */
export const PROGRESS = {
  /** Pages in the snapshot. */
  pages: 0,
  /** Pages saved by the fault Worker because a write faulted on them. */
  byFault: 1,
  /** Pages saved by the fault Worker otherwise (everything left, before an address-space change; rescued pages). */
  byHandler: 2,
  /** Pages saved by the copier. */
  byCopier: 3,
  /** Pages saved as zeros without being read (never populated, or the zero page), by the fault Worker. */
  zeroHandler: 4,
  /** The same, by the copier. */
  zeroCopier: 5,
  /** Bytes read from the target by the fault Worker. */
  bytesHandler: 6,
  /** Bytes read from the target by the copier. */
  bytesCopier: 7,
  /** Write-protect faults read. */
  faults: 8,
  /** `EVENT_REMOVE` messages read (`MADV_DONTNEED` and friends on the target). */
  removes: 9,
  /** Times an address-space change in flight made the fault Worker save every page left first. */
  heldChanges: 10,
  /** Pages of a removed range saved after the removal's event was read, checked intact before and after. */
  rescued: 11,
  /** Wall-clock time (ms since the epoch) when the target was protected: the snapshot's moment. */
  startedAt: 12,
  /** Wall-clock time when the last page was saved (0 until then). */
  finishedAt: 13,
  /**
   * Write faults on pages already saved (still protected: the copier leaves saved
   * chunks protected until the first of these, `snapshot/_copier.ts`).
   */
  lateFaults: 14,
  /** Fault stall histogram (read → page unprotected), `STALL_BUCKETS` slots from here. */
  stall: 16,
} as const;

/** Buckets of the stall histogram: `[0, 1)`, `[1, 2)`, `[2, 4)`, … µs, the last open-ended. */
export const STALL_BUCKETS = 16;

/** Slots of the progress counters. */
export const PROGRESS_SLOTS: number = PROGRESS.stall + STALL_BUCKETS;

/** Where the Workers put the pages. */
export type WorkerSinkSpec =
  /** Straight into memory of the image's length (a `Uint8Array`'s bytes). */
  | { kind: "bytes"; address: number; length: number }
  /**
   * A checkpoint base image, written under `tmp` (both Workers write slots; the
   * fault Worker creates it and, at the end, writes the table and header and
   * renames it to `path`). `crcs` and `ranks` are shared: one slot per page.
   */
  | {
    kind: "file";
    path: string;
    tmp: string;
    durable: boolean;
    chainId: bigint;
    crcs: SharedArrayBuffer;
    ranks: SharedArrayBuffer;
  }
  /** Into a staging mapping of the span's size, page `i` at `i × P`, for the main side to deliver. */
  | { kind: "staging"; address: number; limit: number; queue: SharedArrayBuffer };

/** `workerData` of a snapshot's Workers. */
export interface SnapshotWorkerData {
  /** Which Worker this is. */
  role: "faults" | "copier";
  /**
   * The snapshot's userfaultfd (the span is registered for write-protect). The fault
   * Worker gets the one the main side opened and closes it when done; the copier an
   * `F_DUPFD_CLOEXEC` copy of its own, which it closes when it ends.
   */
  uffd: SharedUserfaultfd;
  /** The fault Worker's eventfd (the copier writes it when it ends). */
  eventFd: number;
  control: SharedArrayBuffer;
  progress: SharedArrayBuffer;
  /** Page states (`Uint8Array`, one per page), the stamp each page was saved with, chunk locks: see `_pages.ts`. */
  states: SharedArrayBuffer;
  epochs: SharedArrayBuffer;
  locks: SharedArrayBuffer;
  /** Address of the span's first page. */
  base: number;
  /** Pages in the span. */
  pages: number;
  /** Offset of the image's first byte in the first page. */
  head: number;
  /** Length of the image in bytes. */
  length: number;
  /** The userfaultfd has `WP_UNPOPULATED` (else never-touched pages are filled first, as `untouchedFill` says). */
  wpUnpopulated: boolean;
  /** How never-touched pages are filled before protection without `WP_UNPOPULATED` (the main side's profile). */
  untouchedFill: UntouchedFill | null;
  /** How the page bits are read: PAGEMAP_SCAN, or `/proc/<pid>/pagemap` before Linux 6.7 (the main side's profile). */
  pageBits: PageBitsPlan;
  sink: WorkerSinkSpec;
  /** Pages per chunk: the copier saves and unprotects a chunk at a time, under the chunk's lock. */
  chunkPages: number;
  /** Messages per `read()`. */
  batch: number;
  /** Hold address-space changes of the target until every page is saved (see `LiveSnapshotOptions.holdChanges`). */
  holdChanges: boolean;
  /**
   * The userfaultfd is a write watch's, lent for the snapshot (`null`: the snapshot's
   * own): a bitmap of the pages a write was let through on (and of removed pages),
   * for the watch; the copier then leaves saved pages protected, and only a fault —
   * recorded here — unprotects a page.
   */
  lent: SharedArrayBuffer | null;
}

/** The checkpoint file a snapshot wrote (a base image: `Checkpoint.restore` and `CheckpointReader` read it). */
export interface FileWritten {
  /** Where it is. */
  path: string;
  /** Size of the file. */
  bytes: number;
  /** Pages listed in its table (the pages that held data when the snapshot was taken). */
  entries: number;
  /** Pages stored with their data (the same: a base lists no zero pages). */
  dataPages: number;
}

/** What a Worker posts. */
export type SnapshotMessage =
  | { type: "protected"; dataPages: number }
  | { type: "done"; file?: FileWritten }
  | { type: "returned" }
  | { type: "aborted" }
  | { type: "failed"; error: SerializedError };
