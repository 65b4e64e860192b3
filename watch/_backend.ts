/**
 * The seam between {@linkcode WriteWatch} and the ways the kernel can track writes.
 * A backend watches one page-aligned span of this process's memory and answers
 * three questions: which pages were written since the last reset (`scan`), the same
 * while re-protecting them in one atomic step (`scan` with `reset`), and which pages
 * it can no longer watch (`lost`). `WriteWatch` owns everything else: the target
 * (a `Region`, an `ArrayBuffer`, a typed array, a `WebAssembly.Memory`), growth and
 * relocation, the results' types.
 *
 * The contract every backend keeps, so that all of them give the same answers on
 * the same workload:
 *
 * - Page indices are relative to the span's first page; runs are appended to a
 *   {@linkcode RunList} in ascending order where possible.
 * - `create` starts with every page clean: a write after `create` returns is
 *   reported; writes before are not.
 * - `scan(true, …)` is get-and-clear: a write that lands while it runs is reported
 *   either by this call or by the next one, never by neither.
 * - A page whose contents may have changed without a write the backend can see is
 *   reported written: a page zapped by `MADV_DONTNEED` (anonymous memory reads back
 *   zeros) counts as written.
 * - A page the backend cannot watch any more (unmapped, moved by `mremap`, mapped
 *   over, unregistered) is reported in `lost` on every scan until the watch is
 *   stopped, never dropped silently. A backend that can follow a move (the sync
 *   backend with `EVENT_REMAP`) may follow it instead, as long as the span the
 *   `WriteWatch` sees keeps its meaning.
 * - `extend` adds pages at the end of the span (a grown `WebAssembly.Memory`) and
 *   reports those of the new pages that already hold written data (present, not the
 *   zero page, not only zeros: `visitDataPages(tail, …, { content: true })`), so that
 *   writes made between the growth and the call are not lost.
 * - `create` and every method are synchronous. A backend that needs a handler thread
 *   (the sync backend) starts it in `create` and waits for it (`Atomics.wait`,
 *   bounded) before it protects anything: the main thread must never block in a
 *   fault nobody serves.
 *
 * A backend is a {@linkcode BackendProvider} listed in `PROVIDERS` (in
 * `write_watch.ts`): automatic selection tries `async`, then `sync`, then
 * `soft-dirty`.
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
