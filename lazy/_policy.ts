/**
 * The fault policy of a `LazyRegion`, run in its `FaultHandler`'s Worker (loaded
 * as `policies.module(…, "lazyPolicy")`): fills a missing page from the source
 * with `UFFDIO_COPY`, `UFFDIO_MOVE` or `UFFDIO_CONTINUE` (all zeros:
 * `UFFDIO_ZEROPAGE`), poisons what the source cannot produce, and prefetches
 * while idle. Internal; how it works: `docs/lazy-restore.md`, "Inside the Worker".
 *
 * @example The policy is internal; a LazyRegion runs it
 * ```ts
 * import { LazyRegion, Region } from "@uffd/uffd";
 * await using lazy = await LazyRegion.open(new Uint8Array(4 * Region.pageSize).fill(3));
 * console.log(lazy.bytes[Region.pageSize], lazy.stats.faults); // 3 1
 * ```
 *
 * @module
 */

import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import { MADV_NOHUGEPAGE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE } from "../ffi/linux.ts";
import { openPageSource, type PageSource } from "./_source.ts";
import type { LazySourceSpec } from "./_source.ts";
import type { Fault, FaultPolicy, PolicyContext } from "../handler/fault_policy.ts";
import { mappedExtent } from "../kernel/maps.ts";
import { Region } from "../kernel/region.ts";

/** Where a page is, one byte per page in shared memory. */
export const PAGE_STATE = {
  /** Not filled yet: touching it faults. */
  MISSING: 0,
  /** Filled with the source's bytes. */
  DATA: 1,
  /** Mapped as zeros (the source's bytes are all zero). */
  ZERO: 2,
  /** The source failed: poisoned (touching it raises SIGBUS). */
  POISONED: 3,
} as const;

/** Slots of the shared statistics (`Float64Array`). */
export const LAZY_STAT = {
  /** Pages filled because a thread faulted on them. */
  faults: 0,
  /** Pages filled by the prefetcher. */
  prefetched: 1,
  /** Pages mapped as zeros. */
  zeroPages: 2,
  /** Pages poisoned. */
  poisoned: 3,
  /** Pages no longer missing (filled, zero or poisoned). */
  settled: 4,
  /** Faults on pages already filled (dropped by the program, or duplicate messages). */
  refaults: 5,
  /** Bytes read from the source. */
  bytesRead: 6,
  /** Runs the prefetcher placed (one read and one ioctl each). */
  prefetchRuns: 7,
  /** Slots. */
  SIZE: 8,
} as const;

/** Slots of the shared control words (`Int32Array`). */
export const LAZY_CTRL = {
  /** Bumped (and notified) whenever one of the flags below changes: the main side waits on it. */
  EVENT: 0,
  /** 1 once every page is settled. */
  SETTLED: 1,
  /** 1 once the policy failed (no POISON: the userfaultfd is being closed); the reason is in `message`. */
  FAILED: 2,
  /** 1 once the prefetcher has passed the last page. */
  PREFETCHED: 3,
  /** 1 once the policy was closed (the handler stopped or failed). */
  ENDED: 4,
  /** Bytes of UTF-8 text in `message`. */
  MESSAGE_LENGTH: 5,
  /** 1 once the prefetcher stopped with pages left (the region went away under it); the reason is in `message`. */
  PREFETCH_STOPPED: 6,
  /** Slots. */
  SIZE: 8,
} as const;

/** Bytes of the shared failure message. */
export const LAZY_MESSAGE_BYTES = 1024;

/** How pages are placed. */
export type LazyFill = "copy" | "move" | "continue";

/** The options `lazy_region.ts` passes to {@linkcode lazyPolicy} (structured-cloneable). */
export interface LazyPolicyOptions {
  source: LazySourceSpec;
  /** Pages of the region (the handler's tracked pages, in order). */
  pages: number;
  fill: LazyFill;
  /** The memfd behind the region (`continue`), mapped again as the alias. */
  memfd: number;
  prefetch: boolean;
  /** Pages per prefetch run. */
  chunk: number;
  /** `UFFDIO_POISON` is available. */
  poison: boolean;
  state: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  control: SharedArrayBuffer;
  /** Why the policy failed, as UTF-8 (`LAZY_CTRL.MESSAGE_LENGTH` bytes). */
  message: SharedArrayBuffer;
}

const encoder = new TextEncoder();
const EAGAIN = ERRNO.EAGAIN!;
const EEXIST = ERRNO.EEXIST!;
const ENOENT = ERRNO.ENOENT!;
const ESRCH = ERRNO.ESRCH!;
/** Source errors remembered for `control("error", page)`. */
const MAX_ERRORS = 1024;

/** Whether `count` words from `from` are all zero. */
function zeroWords(words: Int32Array, from: number, count: number): boolean {
  for (let i = from, end = from + count; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

/** A buffer the policy reads pages into: its bytes, their address and a word view for zero checks. */
interface Target {
  bytes: Uint8Array;
  address: number;
  words: Int32Array;
}

function target(bytes: Uint8Array, address: number): Target {
  return { bytes, address, words: new Int32Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 4)) };
}

/**
 * The factory the handler's Worker calls: opens the source, maps the alias or the
 * staging area, and returns the policy.
 */
export async function lazyPolicy(options: LazyPolicyOptions, context: PolicyContext): Promise<FaultPolicy> {
  const P = context.pageSize;
  const pages = options.pages;
  const fill = options.fill;
  const chunk = options.chunk;
  const state = new Uint8Array(options.state);
  const stats = new Float64Array(options.stats);
  const ctrl = new Int32Array(options.control);
  const fd = context.uffd.fd;
  const base = context.pageAddress(0);
  const errors = new Map<number, string>();
  const source: PageSource = await openPageSource(options.source, P, pages, fd);
  /** Where reads go: a reused buffer (copy), the staging area (move) or the alias (continue). */
  let buffer: Target;
  let aliasAddress = 0n;
  let staging: Region | undefined;
  try {
    if (fill === "continue") {
      aliasAddress = libc.mmap(0n, BigInt(pages * P), PROT_READ | PROT_WRITE, MAP_SHARED, options.memfd, 0n);
      if (aliasAddress < 0n) {
        throw new UffdError({ errno: Number(-aliasAddress), operation: "mmap", detail: "the memfd's alias mapping" });
      }
      buffer = target(new Uint8Array(libc.bufferAt(aliasAddress, pages * P)), Number(aliasAddress));
    } else if (fill === "move") {
      staging = Region.map(chunk * P);
      staging.advise(MADV_NOHUGEPAGE); // whole 4 KiB pages: a THP would be split by every move
      buffer = target(staging.bytes, Number(staging.address));
    } else {
      const bytes = new Uint8Array(chunk * P);
      buffer = target(bytes, Number(libc.addressOf(bytes)));
    }
  } catch (e) {
    source.close();
    throw e;
  }
  /** A one-page view of the buffer's start, for the fault path (no view made per fault). */
  const firstPage = buffer.bytes.subarray(0, P);
  /** A word view over a memory source, for zero checks where the bytes are. */
  const spec = options.source;
  const sourceWords = spec.kind === "bytes"
    ? new Int32Array(spec.buffer, spec.offset, Math.floor(spec.length / 4))
    : spec.kind === "memory" && spec.length >= 4
    ? new Int32Array(libc.bufferAt(BigInt(spec.address), spec.length - (spec.length & 3)))
    : undefined;
  const sourceBase = spec.kind === "memory"
    ? spec.address
    : spec.kind === "bytes"
    ? Number(libc.addressOf(spec.buffer)) + spec.offset
    : 0;
  let cursor = 0;
  let closed = false;

  /**
   * Counts `count` pages as settled (and as zero pages, and one fault) before they
   * are placed — the thread woken by the ioctl may look at the statistics at once —
   * then takes back what was not placed.
   */
  function tally(pages: number, zero: boolean, byFault: boolean, sign: 1 | -1): void {
    stats[LAZY_STAT.settled] += sign * pages;
    if (zero) stats[LAZY_STAT.zeroPages] += sign * pages;
    if (byFault) stats[LAZY_STAT.faults] += sign;
    else stats[LAZY_STAT.prefetched] += sign * pages;
  }

  /** Sets a flag of the control words and wakes the main side's watcher. */
  function signal(slot: number): void {
    Atomics.store(ctrl, slot, 1);
    Atomics.add(ctrl, LAZY_CTRL.EVENT, 1);
    Atomics.notify(ctrl, LAZY_CTRL.EVENT);
  }

  /** Records pages as placed (after the ioctl: a page is never marked before it is really there). */
  function settle(first: number, count: number, value: number): void {
    state.fill(value, first, first + count);
    if (stats[LAZY_STAT.settled]! >= pages && Atomics.load(ctrl, LAZY_CTRL.SETTLED) === 0) signal(LAZY_CTRL.SETTLED);
  }

  /** Places `n` pages with `op`, counting them first; returns what {@linkcode place} returns. */
  function counted(
    op: "copy" | "move" | "continue" | "zero",
    first: number,
    n: number,
    src: number,
    zero: boolean,
    byFault: boolean,
  ): number {
    tally(n, zero, byFault, 1);
    let placed: number;
    try {
      placed = place(op, first, n, src);
    } catch (e) {
      tally(n, zero, byFault, -1);
      throw e;
    }
    if (placed < n) {
      stats[LAZY_STAT.settled] -= n - Math.max(placed, 0);
      if (zero) stats[LAZY_STAT.zeroPages] -= n - Math.max(placed, 0);
      if (byFault && placed <= 0) stats[LAZY_STAT.faults]--;
      if (!byFault) stats[LAZY_STAT.prefetched] -= n - Math.max(placed, 0);
    }
    if (placed > 0) settle(first, placed, zero ? PAGE_STATE.ZERO : PAGE_STATE.DATA);
    return placed;
  }

  /**
   * One resolving ioctl over `count` pages from `first`: the pages done (all of
   * them, some, or 0 when the address space is changing and it must be retried),
   * or -1 when the region is gone. A page that is already present (`EEXIST`) counts
   * as done: it was filled meanwhile, or dropped and faulted in again.
   */
  function place(op: "copy" | "move" | "continue" | "zero", first: number, count: number, src: number): number {
    const dst = base + first * P;
    const len = count * P;
    const rc = op === "copy"
      ? resolve.copy(fd, dst, src, len, 0)
      : op === "zero"
      ? resolve.zeropage(fd, dst, len, 0)
      : op === "move"
      ? resolve.move(fd, dst, src, len, 0)
      : resolve.continuePages(fd, dst, len, 0);
    if (rc >= 0) return Math.floor(rc / P);
    if (rc === -EEXIST) {
      resolve.wake(fd, dst, P);
      return 1;
    }
    if (rc === -EAGAIN) return 0;
    const operation = op === "zero" ? "UFFDIO_ZEROPAGE" : `UFFDIO_${op.toUpperCase()}`;
    if (rc === -ENOENT || rc === -ESRCH) return vanished(operation, dst, count, (n) => place(op, first, n, src));
    throw failure(operation, rc, { start: BigInt(dst), len });
  }

  /**
   * A resolving ioctl said ENOENT (or ESRCH): the range runs into the next mapping
   * (a memory that grew while registered keeps its grown part as a mapping of its
   * own; the kernel places pages one mapping per call) — then the part in this
   * mapping is placed and the caller goes on — or the region is gone (-1: nothing is
   * mapped there any more). A range still mapped whole that the kernel refuses is no
   * longer ours (unregistered): an error, never taken for "gone".
   */
  function vanished(operation: string, dst: number, count: number, retry: (n: number) => number): number {
    const inside = Math.floor(mappedExtent(dst, count * P) / P);
    if (inside === 0) return -1;
    if (inside < count) return retry(inside);
    throw new UffdError({
      errno: ENOENT,
      operation,
      args: { start: BigInt(dst), len: count * P },
      detail: "the region is mapped but no longer registered on the lazy region's userfaultfd",
    });
  }

  /**
   * The source failed for `page`: record it and poison the page — with
   * `UFFDIO_POISON`, or without it (before Linux 6.6, or declined) by making the page
   * inaccessible (`PROT_NONE`) and waking its waiters: a touch then raises SIGSEGV
   * where a poisoned page raises SIGBUS, and a system call gets EFAULT either way.
   * Only where even that fails does the handler fail (which closes the userfaultfd).
   * Returns what {@linkcode place} returns.
   */
  function poison(page: number, error: unknown): number {
    if (state[page] !== PAGE_STATE.POISONED) {
      if (errors.size < MAX_ERRORS) errors.set(page, (error as Error)?.message ?? String(error));
      // Marked before the ioctl: a reader woken by it with EFAULT finds the page marked.
      stats[LAZY_STAT.poisoned]++;
      stats[LAZY_STAT.settled]++;
      settle(page, 1, PAGE_STATE.POISONED);
    }
    if (!options.poison) {
      const address = base + page * P;
      if (libc.mprotect(BigInt(address), BigInt(P), PROT_NONE) === 0) {
        const rc = resolve.wake(fd, address, P);
        if (rc >= 0) return 1;
        if (rc === -ENOENT || rc === -ESRCH) return -1;
        throw failure("UFFDIO_WAKE", rc, { start: BigInt(address), len: P });
      }
      const failed = new UffdError({
        errno: ERRNO.EIO!,
        operation: "LazyRegion",
        detail: `page ${page}: the source failed (${errors.get(page) ?? error}), and without UFFDIO_POISON ` +
          "(Linux 6.6) nor a way to make the page inaccessible the handler closes the userfaultfd",
        cause: error,
      });
      // Before throwing: a reader woken by the close must find the reason.
      tell(failed.message);
      signal(LAZY_CTRL.FAILED);
      throw failed;
    }
    const rc = resolve.poison(fd, base + page * P, P, 0);
    if (rc >= 0 || rc === -EEXIST) return 1;
    if (rc === -EAGAIN) return 0;
    if (rc === -ENOENT || rc === -ESRCH) return vanished("UFFDIO_POISON", base + page * P, 1, () => 1);
    throw failure("UFFDIO_POISON", rc, { start: BigInt(base + page * P), len: P });
  }

  /** Places `count` pages already read (their bytes at `src`, words at `words[w…]`), zero runs apart. */
  function placeRead(
    first: number,
    count: number,
    src: number,
    words: Int32Array,
    w: number,
    byFault: boolean,
  ): number {
    const perPage = P / 4;
    let done = 0;
    while (done < count) {
      // A run of pages that are all zero, or of pages that are not.
      const zero = zeroWords(words, w + done * perPage, perPage);
      let n = 1;
      while (done + n < count && zeroWords(words, w + (done + n) * perPage, perPage) === zero) n++;
      const at = first + done;
      // Pages read into the alias are in the page cache already, zero or not: map them.
      const op = fill === "continue" ? "continue" : zero ? "zero" : fill;
      const placed = counted(op, at, n, src + done * P, zero, byFault);
      if (placed <= 0) return done > 0 ? done : placed;
      done += placed;
      if (placed < n) break; // retry the rest later
    }
    return done;
  }

  /**
   * Fills up to `count` missing pages from `first` (`count` is 1 for a fault): a
   * known-zero run, or one read of a data run. Returns the pages handled — 0 to
   * retry later, -1 when the region is gone — or a promise of it (async sources).
   */
  function fillPages(first: number, count: number, byFault: boolean): number | Promise<number> {
    const zeros = source.zeroRun(first, count);
    if (zeros > 0) return counted("zero", first, zeros, 0, true, byFault);
    const n = source.dataRun(first, count);
    if (fill === "copy" && sourceWords !== undefined) {
      const at = source.address(first);
      if (at >= 0) {
        // Straight from the source's memory: no read.
        let whole = 1;
        while (whole < n && source.address(first + whole) >= 0) whole++;
        return placeRead(first, whole, at, sourceWords, (at - sourceBase) / 4, byFault);
      }
    }
    const into = fill === "continue"
      ? buffer.bytes.subarray(first * P, (first + n) * P)
      : n === 1
      ? firstPage
      : buffer.bytes.subarray(0, n * P);
    const src = fill === "continue" ? buffer.address + first * P : buffer.address;
    const w = fill === "continue" ? (first * P) / 4 : 0;
    let read: void | Promise<void>;
    try {
      read = source.read(first, n, into);
    } catch (e) {
      return failed(first, n, e, byFault);
    }
    if (read !== undefined && typeof (read as Promise<void>).then === "function") {
      return (read as Promise<void>).then(() => {
        stats[LAZY_STAT.bytesRead] += n * P;
        return placeRead(first, n, src, buffer.words, w, byFault);
      }, (e) => failed(first, n, e, byFault));
    }
    stats[LAZY_STAT.bytesRead] += n * P;
    return placeRead(first, n, src, buffer.words, w, byFault);
  }

  /** A read of `n` pages failed: poison the page, or fill the run page by page to find the bad ones. */
  function failed(first: number, n: number, error: unknown, byFault: boolean): number | Promise<number> {
    if (n === 1) return poison(first, error);
    let done = 0;
    while (done < n) {
      const k = fillPages(first + done, 1, byFault); // runs come from built-in sources, which read synchronously
      if (typeof k !== "number") return k.then((m) => done + m);
      if (k <= 0) return done > 0 ? done : k;
      done += k;
    }
    return done;
  }

  const policy: FaultPolicy = {
    fault(fault: Fault): void | Promise<void> {
      const page = fault.pageIndex;
      if (page < 0 || fault.wp) {
        throw new Error(
          `LazyRegion: unexpected ${fault.wp ? "write-protect " : ""}fault at 0x${fault.address.toString(16)}`,
        );
      }
      if (fault.minor) {
        // The page is in the page cache (filled earlier, then unmapped by MADV_DONTNEED): map it.
        stats[LAZY_STAT.refaults]++;
        if (!context.continue(fault.page, P)) return;
        if (state[page] === PAGE_STATE.MISSING) {
          stats[LAZY_STAT.settled]++;
          settle(page, 1, PAGE_STATE.DATA);
        }
        return;
      }
      switch (state[page]) {
        case PAGE_STATE.MISSING: {
          const done = fillPages(page, 1, true);
          if (typeof done === "number") return served(page, done);
          return done.then((n) => served(page, n));
        }
        case PAGE_STATE.POISONED:
          if (poison(page, errors.get(page)) === 0) throw again(page);
          return;
        default:
          // Filled before: dropped by the program (reads back as zeros, like any memory) or a duplicate.
          stats[LAZY_STAT.refaults]++;
          context.zeropage(fault.page, P);
      }
    },
    control(op: string, arg: unknown): unknown {
      if (op === "error") return errors.get(Number(arg)) ?? null;
      throw new Error(`LazyRegion: unknown control operation ${op}`);
    },
    close(): void {
      if (closed) return;
      closed = true;
      signal(LAZY_CTRL.ENDED);
      source.close();
      if (aliasAddress > 0n) libc.munmap(aliasAddress, BigInt(pages * P));
      staging?.unmap();
    },
  };
  if (options.prefetch) {
    policy.idle = (): boolean | Promise<boolean> => {
      while (cursor < pages && state[cursor] !== PAGE_STATE.MISSING) cursor++;
      if (cursor >= pages) return finished();
      let n = 1;
      while (n < chunk && cursor + n < pages && state[cursor + n] === PAGE_STATE.MISSING) n++;
      if (source.available !== undefined) {
        n = Math.min(n, source.available(cursor, n));
        if (n <= 0) return true; // a streaming source has nothing yet: faults first, then this page again
      }
      const done = fillPages(cursor, n, false);
      if (typeof done === "number") return advance(done);
      return done.then(advance);
    };
  }

  /** After a fault's fill: have the fault retried when the address space was changing. */
  function served(page: number, done: number): void {
    if (done === 0) throw again(page);
  }

  /** Writes `text` as the shared message (for the main side's error). */
  function tell(text: string): void {
    const bytes = encoder.encode(text).subarray(0, LAZY_MESSAGE_BYTES);
    new Uint8Array(options.message).set(bytes);
    Atomics.store(ctrl, LAZY_CTRL.MESSAGE_LENGTH, bytes.length);
  }

  /** After a prefetch run: move on. */
  function advance(done: number): boolean {
    if (done < 0) {
      // The region is gone under the prefetcher: `ready` must not wait for pages nobody can fill.
      tell(`page ${cursor} is no longer mapped (the memory was unmapped or moved away)`);
      signal(LAZY_CTRL.PREFETCH_STOPPED);
      return false;
    }
    if (done > 0) {
      stats[LAZY_STAT.prefetchRuns]++;
      cursor += done;
    }
    return true;
  }

  function finished(): false {
    signal(LAZY_CTRL.PREFETCHED);
    return false;
  }

  return policy;
}

/** The handler retries a fault whose resolution met `EAGAIN` (the address space was changing). */
function again(page: number): UffdError {
  return new UffdError({ errno: EAGAIN, operation: "LazyRegion", detail: `page ${page}: retry` });
}
