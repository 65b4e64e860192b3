/**
 * Typed userfaultfd events: what `Userfaultfd.readEvents()` and
 * `Userfaultfd.events()` yield. Each `uffd_msg` becomes one object with a `type`;
 * an event code this library does not know becomes an {@linkcode UnknownEvent}
 * carrying the raw 32 bytes instead of an exception.
 *
 * @example
 * ```ts
 * import type { UffdEvent } from "@uffd/uffd";
 * function describe(event: UffdEvent): string {
 *   switch (event.type) {
 *     case "pagefault": return `${event.wp ? "wp" : "missing"} fault at 0x${event.address.toString(16)}`;
 *     case "remove": return `removed [0x${event.start.toString(16)}, 0x${event.end.toString(16)})`;
 *     default: return event.type;
 *   }
 * }
 * ```
 *
 * @module
 */

import type { Userfaultfd } from "./userfaultfd.ts";

/** A thread touched a registered page: `UFFD_EVENT_PAGEFAULT`. */
export interface PagefaultEvent {
  /** Discriminant. */
  readonly type: "pagefault";
  /** The faulting address: exact with `EXACT_ADDRESS`, otherwise page-aligned. */
  readonly address: bigint;
  /** The raw `UFFD_PAGEFAULT_FLAG_*` bits. */
  readonly flags: bigint;
  /** The access was a write. */
  readonly write: boolean;
  /** A write to a write-protected page (`UFFD_PAGEFAULT_FLAG_WP`). */
  readonly wp: boolean;
  /** A minor fault: the page is in the page cache but not mapped. */
  readonly minor: boolean;
  /** The faulting thread's id, when `THREAD_ID` was negotiated. */
  readonly threadId: number | undefined;
}

/** The process forked with `EVENT_FORK`: the child's userfaultfd. */
export interface ForkEvent {
  /** Discriminant. */
  readonly type: "fork";
  /** The child's userfaultfd, installed in this process; close it when done. */
  readonly uffd: Userfaultfd;
}

/** A registered range moved with `mremap` (`EVENT_REMAP`). */
export interface RemapEvent {
  /** Discriminant. */
  readonly type: "remap";
  /** The old start address. */
  readonly from: bigint;
  /** The new start address. */
  readonly to: bigint;
  /** The old length in bytes. */
  readonly length: bigint;
}

/** Pages of a registered range were zapped (`MADV_DONTNEED`/`MADV_REMOVE`, `EVENT_REMOVE`). */
export interface RemoveEvent {
  /** Discriminant. */
  readonly type: "remove";
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
}

/** A registered range was unmapped (`EVENT_UNMAP`). */
export interface UnmapEvent {
  /** Discriminant. */
  readonly type: "unmap";
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
}

/** A message with an event code this library does not know. */
export interface UnknownEvent {
  /** Discriminant. */
  readonly type: "unknown";
  /** The `event` byte. */
  readonly code: number;
  /** The whole 32-byte `uffd_msg`. */
  readonly raw: Uint8Array;
}

/** Options of `Userfaultfd.events()`. */
export interface EventsOptions {
  /** Ends the iteration (without an error) when aborted. */
  signal?: AbortSignal;
}

/** Any event a userfaultfd can deliver. */
export type UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent;
