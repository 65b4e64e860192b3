/**
 * What a fault policy is, for both sides of a `FaultHandler`: the
 * {@linkcode FaultPolicy} its Worker runs and the {@linkcode Fault} and
 * {@linkcode PolicyContext} it sees there, the {@linkcode PolicyFactory} a policy
 * module exports, the {@linkcode PolicySpec} that names one on the main side, and
 * the built-ins' options. The main side's constructors are in `policies.ts`, the
 * built-in factories in `builtin_policies.ts`.
 *
 * @example
 * ```ts
 * import type { FaultPolicy, PolicyContext } from "@uffd/uffd";
 * const zeros = (_options: unknown, context: PolicyContext): FaultPolicy => ({
 *   fault: (fault) => void context.zeropage(fault.page, fault.pageSize),
 * });
 * console.log(typeof zeros); // "function"
 * ```
 *
 * @module
 */

import type { Feature } from "../ffi/uapi.ts";
import type { UffdEvent, Userfaultfd } from "../kernel/userfaultfd.ts";

/**
 * One page fault, as a policy sees it. The handler reuses this object for the next
 * fault: copy the fields you keep. Addresses are numbers (every user-space address
 * fits in one exactly).
 */
export interface Fault {
  /** The faulting address: exact with `EXACT_ADDRESS`, otherwise page-aligned. */
  readonly address: number;
  /** The address of the faulting page (aligned to `pageSize`). */
  readonly page: number;
  /** The size of the faulting page: the base page size, or the huge page size on hugetlbfs. */
  readonly pageSize: number;
  /** The number of the (first base) page among the handler's tracked pages, or -1 outside them. */
  readonly pageIndex: number;
  /** The raw `UFFD_PAGEFAULT_FLAG_*` bits. */
  readonly flags: number;
  /** The access was a write. */
  readonly write: boolean;
  /** A write to a write-protected page. */
  readonly wp: boolean;
  /** A minor fault (the page is in the page cache but not mapped). */
  readonly minor: boolean;
  /** The faulting thread's id with `THREAD_ID`, otherwise 0. */
  readonly threadId: number;
}

/**
 * What a policy can do, inside the handler's Worker. The resolving helpers take
 * numbers, allocate nothing, and return `true` when the pages are resolved, or
 * `false` when the handler will retry the fault itself (the address space was
 * changing: `EAGAIN`) or the range went away (`ENOENT`: its waiters were already
 * woken). Other kernel errors throw a `UffdError`, which stops the handler (it
 * then closes the userfaultfd, so nothing stays blocked).
 */
export interface PolicyContext {
  /** The base page size. */
  readonly pageSize: number;
  /** Number of tracked pages (it grows when the main side calls `handler.addRanges()`). */
  readonly pages: number;
  /** The features the userfaultfd negotiated. */
  readonly features: ReadonlySet<Feature>;
  /**
   * The handler's own reference to the userfaultfd, with the whole typed API
   * (`copy`, `zeropage`, …; they throw `UffdError`s). Do not close it.
   */
  readonly uffd: Userfaultfd;
  /** The number of the tracked page holding `address`, or -1. */
  pageIndex(address: number): number;
  /** The current address of tracked page `index` (it moves with `EVENT_REMAP`), or -1 once unmapped. */
  pageAddress(index: number): number;
  /** The number of the first page of the tracked range holding page `index`. */
  rangeFirstPage(index: number): number;
  /** The number one past the last page of the tracked range holding page `index`. */
  rangeEndPage(index: number): number;
  /** Removes write protection from `[address, address + length)` and wakes its waiters. */
  unprotect(address: number, length: number): boolean;
  /** Maps the zero page over missing pages and wakes their waiters (`EEXIST` counts as done). */
  zeropage(address: number, length: number): boolean;
  /** Copies `length` bytes from `source` (an address in this process) into missing pages, optionally write-protected. */
  copy(destination: number, source: number, length: number, wp?: boolean): boolean;
  /** Maps pages already in the page cache (`UFFDIO_CONTINUE`), optionally write-protected. */
  continue(address: number, length: number, wp?: boolean): boolean;
  /**
   * Poisons missing pages (`UFFDIO_POISON`, Linux 6.6, the `POISON` feature) and wakes
   * their waiters: their access raises `SIGBUS`, a system call touching them fails
   * with `EFAULT` (`EEXIST` counts as done).
   */
  poison(address: number, length: number): boolean;
  /**
   * Moves whole pages from `source` (private anonymous memory of this process) into
   * missing pages at `destination` without copying (`UFFDIO_MOVE`, Linux 6.8, the
   * `MOVE` feature); `source` becomes a hole.
   */
  move(destination: number, source: number, length: number): boolean;
  /** Wakes the threads waiting on `[address, address + length)`. */
  wake(address: number, length: number): void;
  /**
   * Records tracked pages `[firstPage, firstPage + pages)` as written (what
   * `handler.collect()` and `handler.written()` report). Record before resolving:
   * the woken writer may look at the record at once.
   */
  markWritten(firstPage: number, pages: number): void;
  /** Records every tracked page in the address range `[start, end)` as written. */
  markWrittenAt(start: number, end: number): void;
}

/**
 * A policy: `fault` resolves one page fault; the other members are optional.
 * `fault` and `event` may return a promise (the handler waits for it before the
 * next message, which costs a little latency).
 */
export interface FaultPolicy {
  /** Resolves one page fault (through `context`), or throws to stop the handler. */
  fault(fault: Fault, context: PolicyContext): void | Promise<void>;
  /**
   * An address-space event, after the handler updated its view of the ranges. A fork
   * event's `uffd` belongs to the main side when it listens (`onEvent`); otherwise
   * the handler closes it after this call.
   */
  event?(event: UffdEvent, context: PolicyContext): void | Promise<void>;
  /** Answers `handler.control(op, arg)` on the main side; the result must survive `JSON.stringify`. */
  control?(op: string, arg: unknown, context: PolicyContext): unknown;
  /**
   * Background work between faults (a prefetcher, for instance). Called when no
   * message is waiting; it should do a bounded piece of work — a fault that arrives
   * meanwhile waits until it returns — and return `true` while more remains. The
   * handler calls it again as soon as the queue is empty, and stops calling it once
   * it returns `false`. Throwing stops the handler, like `fault`.
   */
  idle?(context: PolicyContext): boolean | Promise<boolean>;
  /** Called once when the handler stops or fails. */
  close?(): void;
}

/** What a policy module exports: a factory called once in the Worker. */
export type PolicyFactory<Options = unknown> = (
  options: Options,
  context: PolicyContext,
) => FaultPolicy | Promise<FaultPolicy>;

/** A policy named for the Worker: the module to import, the factory's export name and its options. */
export interface PolicySpec {
  /** A short name for messages. */
  readonly name: string;
  /** The module's absolute URL. */
  readonly module: string;
  /** The factory's export name. */
  readonly export: string;
  /** The factory's options (structured-cloneable). */
  readonly options: unknown;
}

/** Options of `policies.unprotect`. */
export interface UnprotectOptions {
  /**
   * Pages unprotected per fault (default 1): the aligned chunk of this many pages
   * around the faulting page, clipped to its tracked range. Every page of the chunk
   * is recorded as written, since later writes to it no longer fault.
   */
  chunk?: number;
  /**
   * Record the pages of each `EVENT_REMOVE` range (`MADV_DONTNEED`, `MADV_REMOVE`)
   * as written (default `false`). Private anonymous pages zapped after protection
   * raise no write-protect fault afterwards, so a write tracker must count them.
   */
  removedAsWritten?: boolean;
}

/** Options of `policies.copyFrom` and `policies.continue`. */
export interface MapPagesOptions {
  /** Map the pages write-protected (`UFFDIO_COPY_MODE_WP`, `UFFDIO_CONTINUE_MODE_WP`), to see later writes. */
  wp?: boolean;
}

/** The source of a copy, as the Worker receives it. */
export type CopySourceSpec =
  | { kind: "file"; path: string }
  | { kind: "bytes"; buffer: SharedArrayBuffer; offset: number; length: number }
  | { kind: "memory"; address: bigint; length: number };
