/**
 * How a {@linkcode FaultHandler} resolves faults: a policy. A policy runs inside
 * the handler's Worker; the main side only names it with a {@linkcode PolicySpec}
 * (a module URL, an export and cloneable options), built by the functions of
 * {@linkcode policies}:
 *
 * - `policies.unprotect({ chunk })`: write-protect faults → remove protection
 *   (from the page, or from the aligned chunk of pages around it) and record the
 *   pages as written, for `handler.collect()`.
 * - `policies.zerofill()`: missing faults → `UFFDIO_ZEROPAGE`.
 * - `policies.copyFrom(source)`: missing faults → `UFFDIO_COPY` from a file, bytes
 *   or another region, at the page's offset.
 * - `policies.continue()`: minor faults (shmem, hugetlbfs) → `UFFDIO_CONTINUE`.
 * - `policies.module(url, options)`: your own policy.
 *
 * A policy module exports a factory `(options, context) => FaultPolicy` (as its
 * default export, or under the name given to `policies.module`). The built-ins are
 * such factories too (`unprotectPolicy`, … in `builtin_policies.ts`, the Worker's
 * side), so a policy of your own can wrap one.
 *
 * @example A policy of your own: zero-fill, and count faults per thread
 * ```ts ignore
 * // count_threads.ts
 * import type { Fault, FaultPolicy, PolicyContext } from "@uffd/uffd";
 * export default function (_options: unknown, context: PolicyContext): FaultPolicy {
 *   const perThread = new Map<number, number>();
 *   return {
 *     fault(fault: Fault) {
 *       perThread.set(fault.threadId, (perThread.get(fault.threadId) ?? 0) + 1);
 *       context.zeropage(fault.page, context.pageSize);
 *     },
 *     control(op: string) {
 *       if (op === "perThread") return Object.fromEntries(perThread);
 *       throw new Error(`unknown operation ${op}`);
 *     },
 *   };
 * }
 * // main.ts
 * const handler = await FaultHandler.start(uffd, policies.module(new URL("./count_threads.ts", import.meta.url)));
 * console.log(handler.control("perThread"));
 * ```
 *
 * @module
 */

import { invalid } from "../kernel/errors.ts";
import { toAddress } from "../kernel/range.ts";
import type { Feature } from "../ffi/uapi.ts";
import type { UffdEvent, Userfaultfd } from "../kernel/userfaultfd.ts";
import { flag, optionsBag, positiveInteger } from "../kernel/_validate.ts";

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

/**
 * Where `policies.copyFrom` reads pages: a file (a path or `file:` URL), bytes (a
 * `Uint8Array`, copied once into shared memory unless it already is shared), or
 * memory in this process (a `Region`, or any `{ address, length }`). Tracked page
 * `i` is filled from offset `i * pageSize`; past the end of the source, pages are
 * zero-filled. Memory must stay mapped while the handler runs (a `UFFDIO_COPY` from
 * unmapped memory fails the handler with `EFAULT`), and must not be registered for
 * missing faults on the same userfaultfd: the handler would fault on its own source
 * and wait for itself (`FaultHandler.start` refuses both when it starts).
 */
export type CopySource = string | URL | Uint8Array | { readonly address: bigint; readonly length: number | bigint };

/** The source of a copy, as the Worker receives it. */
export type CopySourceSpec =
  | { kind: "file"; path: string }
  | { kind: "bytes"; buffer: SharedArrayBuffer; offset: number; length: number }
  | { kind: "memory"; address: bigint; length: number };

/**
 * The URL of the module holding the built-in policies' factories (`builtin_policies.ts`),
 * computed once: the specs name it, the handler recognizes it (a `copyFrom` spec is
 * checked before start) and its Worker imports it statically instead of by URL.
 */
export const BUILTIN_POLICIES: string = new URL("./builtin_policies.ts", import.meta.url).href;

function spec(name: string, exportName: string, options: unknown): PolicySpec {
  return Object.freeze({ name, module: BUILTIN_POLICIES, export: exportName, options });
}

function copySourceSpec(source: CopySource): CopySourceSpec {
  const operation = "policies.copyFrom";
  if (typeof source === "string") {
    if (source.length === 0) throw invalid(operation, "the source path is empty");
    return { kind: "file", path: source };
  }
  if (source instanceof URL) {
    if (source.protocol !== "file:") throw invalid(operation, "a URL source must be a file: URL", { url: source.href });
    return { kind: "file", path: decodeURIComponent(source.pathname) };
  }
  if (source instanceof Uint8Array) {
    // The Worker gets the SharedArrayBuffer itself, not the view: Deno clones a large view of one element by
    // element (64 MiB took about 20 s to reach the Worker), the buffer is shared at once.
    if (source.buffer instanceof SharedArrayBuffer) {
      return { kind: "bytes", buffer: source.buffer, offset: source.byteOffset, length: source.byteLength };
    }
    const shared = new SharedArrayBuffer(Math.max(source.byteLength, 1));
    new Uint8Array(shared).set(source);
    return { kind: "bytes", buffer: shared, offset: 0, length: source.byteLength };
  }
  if (source !== null && typeof source === "object" && typeof source.address === "bigint") {
    const address = toAddress(source.address, operation);
    const length = Number(source.length);
    if (!Number.isSafeInteger(length) || length < 0) throw invalid(operation, "bad source length", { length });
    if (address + BigInt(length) > 1n << 64n) {
      throw invalid(operation, "the source range overflows 2^64", { address, length });
    }
    return { kind: "memory", address, length };
  }
  throw new TypeError(`${operation}: source must be a path, a file: URL, a Uint8Array or a Region`);
}

/** The constructors of {@linkcode PolicySpec}s: one per built-in policy, and `module` for yours. */
export interface Policies {
  /** Write-protect faults → unprotect (a page or a chunk) and record the pages as written. */
  unprotect(options?: UnprotectOptions): PolicySpec;
  /** Missing faults → the zero page. */
  zerofill(): PolicySpec;
  /** Missing faults → a copy of the page at the same offset of `source`. */
  copyFrom(source: CopySource, options?: MapPagesOptions): PolicySpec;
  /** Minor faults → map the page-cache page (`UFFDIO_CONTINUE`). */
  continue(options?: MapPagesOptions): PolicySpec;
  /** Your own policy: the module at `url` exporting a {@linkcode PolicyFactory} (default export unless `exportName`). */
  module(url: string | URL, options?: unknown, exportName?: string): PolicySpec;
}

/**
 * The policies a {@linkcode FaultHandler} can run.
 *
 * @example
 * ```ts
 * import { policies } from "@uffd/uffd";
 * console.log(policies.unprotect({ chunk: 16 }).name, policies.zerofill().export); // unprotect zerofillPolicy
 * ```
 */
export const policies: Policies = Object.freeze({
  unprotect(options?: UnprotectOptions): PolicySpec {
    const operation = "policies.unprotect";
    const o = optionsBag(options, operation);
    const chunk = positiveInteger(o.chunk ?? 1, operation, "chunk");
    return spec("unprotect", "unprotectPolicy", {
      chunk,
      removedAsWritten: flag(o.removedAsWritten, operation, "removedAsWritten"),
    });
  },
  zerofill(): PolicySpec {
    return spec("zerofill", "zerofillPolicy", {});
  },
  copyFrom(source: CopySource, options?: MapPagesOptions): PolicySpec {
    const wp = flag(optionsBag(options, "policies.copyFrom").wp, "policies.copyFrom", "wp");
    return spec("copyFrom", "copyPolicy", { source: copySourceSpec(source), wp });
  },
  continue(options?: MapPagesOptions): PolicySpec {
    return spec("continue", "continuePolicy", {
      wp: flag(optionsBag(options, "policies.continue").wp, "policies.continue", "wp"),
    });
  },
  module(url: string | URL, options: unknown = {}, exportName = "default"): PolicySpec {
    if (typeof exportName !== "string") throw new TypeError("policies.module: exportName must be a string");
    let href: string;
    try {
      href = new URL(url).href;
    } catch {
      throw new TypeError(
        `policies.module: ${String(url)} is not an absolute URL (use new URL("./x.ts", import.meta.url))`,
      );
    }
    const name = href.startsWith("data:") ? "inline module" : href.slice(href.lastIndexOf("/") + 1);
    return Object.freeze({ name, module: href, export: exportName, options });
  },
});
