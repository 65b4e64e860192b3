/**
 * The `/proc/<pid>/pagemap` file: {@linkcode readPagemap} decodes its 64-bit
 * entries (present, swapped, file, exclusive, uffd-wp, soft-dirty, guard, PFN) for
 * every page of a range, {@linkcode readPagemapRaw} reads them raw into a reused
 * array — what kernels without PAGEMAP_SCAN offer, and what inspection wants —
 * and {@linkcode softDirtySupported} measures whether soft-dirty works here. The
 * PAGEMAP_SCAN ioctl on the same file is in `pagemap_scan.ts`.
 *
 * @example
 * ```ts
 * import { readPagemap, Region } from "@uffd/uffd";
 * using mem = Region.map(2 * Region.pageSize);
 * mem.bytes[0] = 1;
 * const [first, second] = readPagemap(mem);
 * console.log(first.present, second.present); // true false
 * ```
 *
 * @module
 */

import { isMainThread } from "node:worker_threads";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { readPagemapEntries } from "../ffi/_pagemap_scan.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_RDONLY, PROT_READ, PROT_WRITE } from "../ffi/linux.ts";
import {
  PM_FILE,
  PM_GUARD_REGION,
  PM_MMAP_EXCLUSIVE,
  PM_PFN_MASK,
  PM_PRESENT,
  PM_SOFT_DIRTY,
  PM_SWAP,
  PM_UFFD_WP,
} from "../ffi/uapi.ts";
import { bigintArg, optionsBag } from "./_validate.ts";
import { ERRNO, failure, invalid, UffdError } from "./errors.ts";
import { pageRange, type Range } from "./range.ts";

/** Whose pagemap: this process (`"self"`, the default) or a pid. */
export type Pid = number | "self";

/** The most entries `readPagemap` returns at once: one per page, 64 GiB of 4 KiB pages. */
const MAX_ENTRIES = 1 << 24;

/**
 * Whether this isolate may keep `/proc/self/pagemap` open for good. Only the main
 * isolate may: fds are process-wide, and one kept by a Worker's isolate would outlive
 * the Worker (`isMainThread` is false in node Workers; web Workers have a
 * `WorkerGlobalScope`).
 */
export const KEEP_SELF_FD: boolean = isMainThread && !("WorkerGlobalScope" in globalThis);

/** The `/proc/self/pagemap` fd, opened once for the process (main isolate only). */
let selfFd: number | undefined;

/** Gives back an fd from {@linkcode openPagemap}: closes it unless it is the one kept for the process. */
export function releasePagemap(fd: number): void {
  if (fd >= 0 && fd !== selfFd) libc.close(fd);
}

/** Opens `/proc/<pid>/pagemap` (the kept fd for `"self"` in the main isolate); throws `ESRCH`, `EACCES`, … */
export function openPagemap(pid: Pid, operation: string): number {
  if (pid === "self" && selfFd !== undefined) return selfFd;
  if (pid !== "self" && (typeof pid !== "number" || !Number.isSafeInteger(pid) || pid <= 0)) {
    if (typeof pid !== "number") throw new TypeError(`${operation}: pid must be a number or "self", not ${typeof pid}`);
    throw invalid(operation, 'pid must be a positive integer or "self"', { pid }, ERRNO.ESRCH);
  }
  const path = `/proc/${pid}/pagemap`;
  const fd = libc.open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (fd === -ERRNO.ENOENT) {
      throw new UffdError({
        errno: ERRNO.ESRCH,
        operation,
        args: { pid },
        detail: `no process ${pid}`,
        hint: "it does not exist or has exited",
      });
    }
    throw failure(
      operation,
      fd,
      { path },
      fd === -ERRNO.EACCES || fd === -ERRNO.EPERM
        ? `no permission to read another process's pagemap: it takes ptrace read access to process ${pid} ` +
          "(the same user and a ptrace_scope that allows it, or CAP_SYS_PTRACE)"
        : undefined,
    );
  }
  if (pid === "self" && KEEP_SELF_FD) selfFd = fd;
  return fd;
}

/** One decoded `/proc/<pid>/pagemap` entry. */
export interface PagemapEntry {
  /** The page's address. */
  readonly address: bigint;
  /** The raw 64-bit entry. */
  readonly raw: bigint;
  /** Bit 63: resident. */
  readonly present: boolean;
  /** Bit 62: swapped out. */
  readonly swapped: boolean;
  /** Bit 61: file page or shared anonymous. */
  readonly file: boolean;
  /** Bit 56: mapped by this process only. */
  readonly exclusive: boolean;
  /** Bit 57: write-protected by userfaultfd (present, swapped or marker). */
  readonly uffdWp: boolean;
  /** Bit 55: soft-dirty (always false without CONFIG_MEM_SOFT_DIRTY). */
  readonly softDirty: boolean;
  /** Bit 58: a guard region (Linux 6.15). */
  readonly guard: boolean;
  /** The page frame number when present and visible (CAP_SYS_ADMIN), otherwise `undefined`. */
  readonly pfn: bigint | undefined;
}

const RAW_CHUNK = 65536;

/**
 * Reads the raw 64-bit pagemap entries of every page in a page-aligned range into
 * `into` (allocated when not given; it must hold one entry per page), one `pread`
 * per 64 Ki pages, and returns it. The fastest way to look at pagemap bits without
 * PAGEMAP_SCAN.
 *
 * @param range A page-aligned range (a `Region` is widened to its `pageSpan`).
 * @param options `pid` (default `"self"`), and `into`, a reused array of at least one entry per page.
 * @returns `into`, or a new array of one raw entry per page.
 * @throws {UffdError} `E2BIG` beyond 2^24 pages; `EFAULT` beyond the user address space; `ESRCH`, `EACCES` for
 *   another process.
 *
 * @example
 * ```ts
 * import { PM_PRESENT, readPagemapRaw, Region } from "@uffd/uffd";
 * using mem = Region.map(2 * Region.pageSize);
 * mem.bytes[0] = 1;
 * const raw = readPagemapRaw(mem);
 * console.log((raw[0]! & PM_PRESENT) !== 0n, (raw[1]! & PM_PRESENT) !== 0n); // true false
 * ```
 */
export function readPagemapRaw(range: Range, options?: { pid?: Pid; into?: BigUint64Array }): BigUint64Array {
  const operation = "pagemap";
  const { start, len } = pageRange(range, operation);
  options = optionsBag(options, operation);
  const pages = Number(len / PAGE_SIZE_N);
  if (pages > MAX_ENTRIES) {
    throw invalid(
      operation,
      `${pages} pages is more than readPagemap returns at once (${MAX_ENTRIES}): read the range in parts, ` +
        "or ask pagemapScan",
      { start, len },
      ERRNO.E2BIG,
    );
  }
  const into = options.into ?? new BigUint64Array(pages);
  if (!(into instanceof BigUint64Array)) throw new TypeError(`${operation}: into must be a BigUint64Array`);
  if (into.length < pages) {
    throw invalid(operation, `into holds ${into.length} entries; the range has ${pages} pages`, { pages });
  }
  const pid = options.pid ?? "self";
  const fd = openPagemap(pid, operation);
  try {
    for (let done = 0; done < pages;) {
      const want = Math.min(RAW_CHUNK, pages - done);
      const address = start + BigInt(done) * PAGE_SIZE_N;
      const got = readPagemapEntries(fd, address, PAGE_SIZE, into.subarray(done, done + want));
      if (got < 0) {
        throw failure(
          operation,
          got,
          { start: address, pages: want, pid },
          got === -ERRNO.ESRCH ? `process ${pid} has exited` : undefined,
        );
      }
      if (got === 0) {
        // The pagemap ends where the user address space does: nothing there to report.
        throw new UffdError({
          errno: ERRNO.EFAULT,
          operation,
          args: { start: address, pages: want, pid },
          detail: "the range lies beyond the user address space (the pagemap ends before it)",
        });
      }
      done += got;
    }
  } finally {
    releasePagemap(fd);
  }
  return into;
}

/**
 * Reads and decodes the pagemap entries of every page in a range.
 *
 * @param range A page-aligned range.
 * @param options `pid` (default `"self"`).
 * @returns One decoded entry per page.
 * @throws {UffdError} As {@linkcode readPagemapRaw}.
 *
 * @example
 * ```ts
 * import { readPagemap, Region } from "@uffd/uffd";
 * using mem = Region.map(2 * Region.pageSize);
 * mem.bytes[0] = 1;
 * const [first, second] = readPagemap(mem);
 * console.log(first.present, second.present); // true false
 * ```
 */
export function readPagemap(range: Range, options?: { pid?: Pid }): PagemapEntry[] {
  const { start } = pageRange(range, "pagemap");
  const raw = readPagemapRaw(range, options);
  const out: PagemapEntry[] = new Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = decodeEntry(start + BigInt(i) * PAGE_SIZE_N, raw[i]!);
  return out;
}

/**
 * Decodes one 64-bit pagemap entry.
 *
 * @example
 * ```ts
 * import { decodePagemapEntry } from "@uffd/uffd";
 * console.log(decodePagemapEntry(0x1000n, 1n << 63n).present); // true
 * ```
 */
export function decodePagemapEntry(address: bigint, raw: bigint): PagemapEntry {
  bigintArg(address, "decodePagemapEntry", "address");
  bigintArg(raw, "decodePagemapEntry", "raw");
  return decodeEntry(address, raw);
}

function decodeEntry(address: bigint, raw: bigint): PagemapEntry {
  const present = (raw & PM_PRESENT) !== 0n;
  const pfn = raw & PM_PFN_MASK;
  return {
    address,
    raw,
    present,
    swapped: (raw & PM_SWAP) !== 0n,
    file: (raw & PM_FILE) !== 0n,
    exclusive: (raw & PM_MMAP_EXCLUSIVE) !== 0n,
    uffdWp: (raw & PM_UFFD_WP) !== 0n,
    softDirty: (raw & PM_SOFT_DIRTY) !== 0n,
    guard: (raw & PM_GUARD_REGION) !== 0n,
    pfn: present && pfn !== 0n ? pfn : undefined,
  };
}

let softDirtyCache: boolean | undefined;

/**
 * Whether soft-dirty tracking works here (`CONFIG_MEM_SOFT_DIRTY`): a page just
 * written in a fresh mapping must read back with pagemap bit 55 set. Measured once,
 * without writing `clear_refs` (which would reset the whole process's bits). A
 * kernel built without it still accepts the `SOFT_DIRTY` category and `clear_refs`
 * 4, so acceptance proves nothing.
 *
 * @example
 * ```ts
 * import { softDirtySupported } from "@uffd/uffd";
 * console.log(softDirtySupported()); // false on a kernel built without CONFIG_MEM_SOFT_DIRTY
 * ```
 */
export function softDirtySupported(): boolean {
  if (softDirtyCache === undefined) {
    const length = PAGE_SIZE_N;
    const address = libc.mmap(0n, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    if (address < 0n) throw failure("mmap", address, { length });
    try {
      new Uint8Array(libc.bufferAt(address, 1))[0] = 1;
      softDirtyCache = readPagemap({ address, length })[0]?.softDirty === true;
    } finally {
      libc.munmap(address, length);
    }
  }
  return softDirtyCache;
}
