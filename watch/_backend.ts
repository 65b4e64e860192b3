/**
 * The seam between {@linkcode WriteWatch} and the ways the kernel can track writes:
 * a backend watches one page-aligned span and answers which pages were written
 * (`scan`, with `reset` atomically) and which it can no longer watch (`lost`).
 * Internal; the contract every backend keeps: `docs/write-watch.md`, "The backend
 * seam".
 *
 * @example
 * ```ts
 * import type { BackendProvider, WatchedSpan, WriteWatchBackend } from "./_backend.ts";
 * import type { RunList } from "./write_set.ts";
 * // A backend that never sees a write (for illustration only).
 * class Blind implements WriteWatchBackend {
 *   readonly name = "sync";
 *   readonly untouched = "unpopulated";
 *   constructor(public pages: number) {}
 *   extend(pages: number, _written: RunList) { this.pages = pages; }
 *   scan(_reset: boolean, _written: RunList, _lost: RunList) {}
 *   reset() {}
 *   close() {}
 *   [Symbol.dispose]() {}
 * }
 * const blind: BackendProvider = {
 *   name: "sync",
 *   unavailable: () => undefined,
 *   create: (span: WatchedSpan) => new Blind(span.pages),
 * };
 * console.log(blind.create({ address: 0n, pages: 4, shared: false }).pages); // 4
 * ```
 *
 * @module
 */

import type { UntouchedPages } from "../kernel/profile.ts";
import type { Feature } from "../ffi/uapi.ts";
import type { Userfaultfd } from "../kernel/userfaultfd.ts";
import type { RunList } from "./write_set.ts";

/** The ways to track writes: see {@linkcode WriteWatch}. */
export type WriteWatchBackendName = "async" | "sync" | "soft-dirty";

/** The span a backend watches: page-aligned, in this process. */
export interface WatchedSpan {
  /** Address of the first page. */
  readonly address: bigint;
  /** Number of base pages. */
  readonly pages: number;
  /** Shared memory (shmem, memfd, hugetlb) rather than private anonymous memory, when known. */
  readonly shared: boolean;
  /**
   * Whether the first and the last page also hold bytes outside the watched memory
   * (memory that is not page-aligned: an `ArrayBuffer` shares those pages with its
   * allocator's other data). Absent: both whole.
   */
  readonly partial?: { readonly first: boolean; readonly last: boolean };
  /**
   * Userfaultfd features the backend must do without even where the kernel has
   * them (the caller's `decline`, to exercise fallbacks): passed on to
   * `Userfaultfd.open`, and a backend that needs one of them says it is unavailable.
   */
  readonly decline?: readonly Feature[];
}

/** One running backend: see the module documentation for the contract. */
export interface WriteWatchBackend extends Disposable {
  /** Which backend this is. */
  readonly name: WriteWatchBackendName;
  /** Pages in the span now. */
  readonly pages: number;
  /** What never-touched pages of the span cost. */
  readonly untouched: UntouchedPages;
  /**
   * Grows the span to `pages` pages (same start address): starts watching the new
   * pages and appends to `written` those of them that already hold written data.
   */
  extend(pages: number, written: RunList): void;
  /**
   * Appends the pages written since the last reset to `written` and the pages that
   * cannot be watched any more to `lost`. With `reset`, the written pages are
   * re-protected in the same step (get-and-clear).
   */
  scan(reset: boolean, written: RunList, lost: RunList): void;
  /** Marks every page clean (re-protects), reporting nothing. */
  reset(): void;
  /** Stops watching and releases everything (idempotent). */
  close(): void;
  /**
   * Hands the userfaultfd to a live snapshot of the span (backends whose faults
   * reach user space: `sync`); every call but `close` fails with `EBUSY` until
   * `resume`.
   */
  lend?(): Userfaultfd;
  /** Takes the userfaultfd back and protects the span again. */
  resume?(): void;
}

/** A backend kind: whether it can run here, and how to start one. */
export interface BackendProvider {
  /** Which backend it provides. */
  readonly name: WriteWatchBackendName;
  /** Why this backend cannot watch `span` on this machine, or `undefined` when it can. */
  unavailable(span: WatchedSpan): string | undefined;
  /** Starts watching `span`: every page is clean when this returns. */
  create(span: WatchedSpan): WriteWatchBackend;
}
