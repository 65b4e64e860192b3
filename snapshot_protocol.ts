/**
 * What the main side of a `LiveSnapshot` and its Worker share: the data the
 * Worker starts with, the control block and the progress counters (both in
 * `SharedArrayBuffer`s), the delivery queue of a callback sink, and the messages
 * the Worker posts. Internal.
 *
 * - Control block (`Int32Array`, slots `SNAP_CTRL`): the main side sets `ABORT`
 *   and writes the eventfd; the Worker stores its `STATE`. For a callback sink,
 *   the Worker appends page numbers to the queue and stores how many it
 *   `PUBLISHED` (then notifies); the main side stores how many it `DELIVERED`,
 *   and writes the eventfd when the Worker said it is `THROTTLED`.
 * - Progress (`Float64Array`, slots `PROGRESS`): one writer (the Worker), read by
 *   the main side at any time.
 * - Queue (`Int32Array`, one slot per page): page `i` staged with data is `i`, a
 *   page that is all zeros is `-1 - i` (nothing staged).
 *
 * @module
 */

import type { SerializedError } from "./handler_protocol.ts";
import type { SharedUserfaultfd } from "./userfaultfd.ts";

/** Slots of the control block. */
export const SNAP_CTRL = {
  /** One of `SNAP_STATE`. */
  STATE: 0,
  /** Non-zero once the main side asked the Worker to give up. */
  ABORT: 1,
  /** Queue entries the Worker published (callback sink). */
  PUBLISHED: 2,
  /** Queue entries the main side delivered to the callback. */
  DELIVERED: 3,
  /** Non-zero while the copier waits for the callback to catch up. */
  THROTTLED: 4,
  /** Slots in the control block. */
  SIZE: 8,
} as const;

/** Values of `SNAP_CTRL.STATE`. */
export const SNAP_STATE = { STARTING: 0, RUNNING: 1, DONE: 2, FAILED: 3, ABORTED: 4 } as const;

/** Slots of the progress counters. */
export const PROGRESS = {
  /** Pages in the snapshot. */
  pages: 0,
  /** Pages saved so far (each exactly once). */
  saved: 1,
  /** Of those, saved by the fault handler before a write was let through. */
  byFault: 2,
  /** Of those, saved by the background copier. */
  byCopier: 3,
  /** Of the saved pages, those saved as zeros without being read (never populated, or the zero page). */
  zero: 4,
  /** Bytes read from the target. */
  bytesRead: 5,
  /** Write-protect faults read. */
  faults: 6,
  /** `EVENT_REMOVE` messages read (`MADV_DONTNEED` and friends on the target). */
  removes: 7,
  /** Times an address-space change in flight made the Worker save everything left first. */
  heldChanges: 8,
  /** Pages of a removed range saved after the removal's event was read, checked intact before and after. */
  rescued: 11,
  /** Wall-clock time (ms since the epoch) when the target was protected: the snapshot's moment. */
  startedAt: 12,
  /** Wall-clock time when the last page was saved (0 until then). */
  finishedAt: 13,
  /** Fault stall histogram (read → page unprotected), `STALL_BUCKETS` slots from here. */
  stall: 16,
} as const;

/** Buckets of the stall histogram: `[0, 1)`, `[1, 2)`, `[2, 4)`, … µs, the last open-ended. */
export const STALL_BUCKETS = 16;

/** Slots of the progress counters. */
export const PROGRESS_SLOTS: number = PROGRESS.stall + STALL_BUCKETS;

/** Where the Worker puts the pages. */
export type WorkerSinkSpec =
  /** Straight into memory of the image's length (a `Uint8Array`'s bytes). */
  | { kind: "bytes"; address: number; length: number }
  /** A checkpoint base image, written under `tmp` and renamed to `path`. */
  | { kind: "file"; path: string; tmp: string; durable: boolean; chainId: bigint }
  /** Into a staging mapping of the span's size, page `i` at `i × P`, for the main side to deliver. */
  | { kind: "staging"; address: number; limit: number };

/** `workerData` of a snapshot's Worker. */
export interface SnapshotWorkerData {
  /** The snapshot's userfaultfd (the span is registered for write-protect; the Worker closes it when done). */
  uffd: SharedUserfaultfd;
  /** The eventfd that wakes the Worker. */
  eventFd: number;
  control: SharedArrayBuffer;
  progress: SharedArrayBuffer;
  /** The delivery queue (callback sink), else `undefined`. */
  queue: SharedArrayBuffer | undefined;
  /** Address of the span's first page. */
  base: number;
  /** Pages in the span. */
  pages: number;
  /** Offset of the image's first byte in the first page. */
  head: number;
  /** Length of the image in bytes. */
  length: number;
  /** The userfaultfd has `WP_UNPOPULATED` (else never-touched pages are populated with the zero page first). */
  wpUnpopulated: boolean;
  sink: WorkerSinkSpec;
  /** Pages the copier saves between two looks at the fault queue. */
  chunkPages: number;
  /** Messages per `read()`. */
  batch: number;
  /** Hold address-space changes of the target until every page is saved (see `LiveSnapshotOptions.holdChanges`). */
  holdChanges: boolean;
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

/** What the Worker posts. */
export type SnapshotMessage =
  | { type: "protected"; dataPages: number }
  | { type: "done"; file?: FileWritten }
  | { type: "aborted" }
  | { type: "failed"; error: SerializedError };
