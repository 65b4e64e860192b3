/**
 * Which pages of a process are present, swapped, written since protection, …:
 * {@linkcode pagemapScan} drives the PAGEMAP_SCAN ioctl (Linux 6.7) on
 * `/proc/<pid>/pagemap`, resuming from `walk_end` until the range is covered;
 * {@linkcode readPagemap} decodes the classic 64-bit pagemap entries for kernels
 * without it and for inspection.
 *
 * @example
 * ```ts
 * import { Feature, pagemapScan, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(16 * Region.pageSize);
 * using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC] });
 * uffd.register(mem, { wp: true });
 * uffd.writeProtect(mem);
 * mem.bytes[3 * Region.pageSize] = 1;
 * const written = pagemapScan(mem, { require: ["WRITTEN"] });
 * console.log(written.map((r) => [r.firstPage, r.pages])); // [[3, 1]] relative to mem
 * ```
 *
 * @module
 */

import { kernelRelease } from "./access.ts";
import { ERRNO, invalid, UffdError } from "./errors.ts";
import * as libc from "./ffi/libc.ts";
import { readPagemapEntries, ScanBuffers } from "./ffi/pagemap_scan.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_RDONLY, PROT_READ, PROT_WRITE } from "./linux.ts";
import { pageRange, type Range } from "./range.ts";
import { bigintArg, optionsBag } from "./validate.ts";
import {
  CATEGORIES,
  type Category,
  categoryMask,
  categoryNames,
  PAGE_IS_KNOWN,
  PM_FILE,
  PM_GUARD_REGION,
  PM_MMAP_EXCLUSIVE,
  PM_PFN_MASK,
  PM_PRESENT,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
  PM_SOFT_DIRTY,
  PM_SWAP,
  PM_UFFD_WP,
} from "./uapi.ts";

/** Whose pagemap: this process (`"self"`, the default) or a pid. */
export type Pid = number | "self";

/** Options of {@linkcode pagemapScan}. */
export interface ScanOptions {
  /** The process (default `"self"`). */
  pid?: Pid;
  /** Categories that must all be set (`category_mask`). */
  require?: Iterable<Category>;
  /** Categories whose meaning is inverted before matching (`category_inverted`). */
  invert?: Iterable<Category>;
  /** Categories of which at least one must be set (`category_anyof_mask`). */
  anyOf?: Iterable<Category>;
  /** Categories to report per region (`return_mask`); default: those named in `require` and `anyOf`, or all. */
  report?: Iterable<Category>;
  /** Stop after this many matching pages (`max_pages`); default no limit. */
  maxPages?: number;
  /** `PM_SCAN_WP_MATCHING`: write-protect the matching pages in the same walk (get-and-clear). */
  writeProtect?: boolean;
  /** `PM_SCAN_CHECK_WPASYNC`: fail with EPERM where async write-protect is not set up, instead of skipping. */
  checkWpAsync?: boolean;
  /** Regions per ioctl (the output vector's length, 1 to 2^20, default 1024). */
  vectorLength?: number;
}

/** Pages `[start, end)` that share the reported categories. */
export interface PageRange {
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
  /** The reported `PAGE_IS_*` bits. */
  readonly categories: bigint;
  /** The reported categories by name. */
  readonly names: readonly Category[];
  /** Index of the first page relative to the scanned range's start. */
  readonly firstPage: number;
  /** Number of pages. */
  readonly pages: number;
}

/** A cached `/proc/<pid>/pagemap` fd per pid, and the scan buffers, reused across calls. */
const pagemapFds = new Map<string, number>();
let buffers: ScanBuffers | undefined;
/** The largest output vector one scan allocates (24 MiB of `page_region`s). */
const MAX_VECTOR = 1 << 20;
/** The most entries `readPagemap` returns at once: one object per page, 64 GiB of 4 KiB pages. */
const MAX_ENTRIES = 1 << 24;
const PAGE = BigInt(libc.PAGE_SIZE);

function pagemapFd(pid: Pid, operation: string): number {
  const key = String(pid);
  const cached = pagemapFds.get(key);
  if (cached !== undefined) return cached;
  if (pid !== "self" && (!Number.isSafeInteger(pid) || pid <= 0)) {
    throw invalid(operation, 'pid must be a positive integer or "self"', { pid }, ERRNO.ESRCH);
  }
  const path = `/proc/${pid}/pagemap`;
  const fd = libc.open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const hint = fd === -ERRNO.ENOENT
      ? `no process ${pid} (it does not exist or has exited)`
      : fd === -ERRNO.EACCES || fd === -ERRNO.EPERM
      ? `no permission to read ${path}: it needs the same user with ptrace access, or CAP_SYS_PTRACE`
      : undefined;
    throw new UffdError({ errno: fd === -ERRNO.ENOENT ? ERRNO.ESRCH : -fd, operation, args: { path }, hint });
  }
  // Only keep our own; another process's fd goes stale when it exits.
  if (pid === "self") pagemapFds.set(key, fd);
  return fd;
}

function mask(names: Iterable<Category> | undefined): bigint {
  return names === undefined ? 0n : categoryMask(names);
}

/**
 * Runs PAGEMAP_SCAN over a page-aligned range and returns the matching regions,
 * coalesced as the kernel reports them. The walk resumes from `walk_end` whenever
 * the output vector fills, until the range is covered or `maxPages` is reached.
 *
 * @example
 * ```ts
 * import { pagemapScan, Region } from "@uffd/uffd";
 * using mem = Region.map(8 * Region.pageSize);
 * mem.bytes[0] = 1;
 * console.log(pagemapScan(mem, { require: ["PRESENT"] }).length); // 1
 * ```
 */
export function pagemapScan(range: Range, options?: ScanOptions): PageRange[] {
  const operation = "PAGEMAP_SCAN";
  const { start, len } = pageRange(range, operation);
  options = optionsBag(options, operation);
  const end = start + len;
  const required = mask(options.require);
  const anyof = mask(options.anyOf);
  const inverted = mask(options.invert);
  const named = required | anyof;
  const report = options.report !== undefined ? mask(options.report) : named === 0n ? PAGE_IS_KNOWN : named;
  const refused = (required | anyof | inverted | report) & ~acceptedCategoryMask();
  if (refused !== 0n) {
    throw invalid(
      operation,
      `this kernel does not accept categor${categoryNames(refused).length > 1 ? "ies" : "y"} ` +
        categoryNames(refused).join(", "),
      { kernel: kernelRelease() },
    );
  }
  const flags = (options.writeProtect ? PM_SCAN_WP_MATCHING : 0n) |
    (options.checkWpAsync ? PM_SCAN_CHECK_WPASYNC : 0n);
  let remaining = options.maxPages ?? 0;
  if (!Number.isSafeInteger(remaining) || remaining < 0) {
    throw invalid(operation, "maxPages must be a non-negative integer", { maxPages: options.maxPages });
  }
  const limited = remaining > 0;
  const capacity = options.vectorLength ?? 1024;
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_VECTOR) {
    throw invalid(operation, `vectorLength must be an integer in [1, ${MAX_VECTOR}]`, { vectorLength: capacity });
  }
  const scan = capacity === 1024 ? (buffers ??= new ScanBuffers(1024)) : new ScanBuffers(capacity);
  const fd = pagemapFd(options.pid ?? "self", operation);
  const out: PageRange[] = [];
  let at = start;
  try {
    while (at < end) {
      const n = scan.scan(fd, at, end, flags, BigInt(remaining), inverted, required, anyof, report);
      if (n < 0) throw scanError(n, at, end, flags);
      for (let i = 0; i < n; i++) {
        const r = scan.region(i);
        const pages = Number((r.end - r.start) / PAGE);
        const last = out[out.length - 1];
        if (last && last.end === r.start && last.categories === r.categories) {
          out[out.length - 1] = region(last.start, r.end, r.categories, start);
        } else out.push(region(r.start, r.end, r.categories, start));
        if (limited) remaining -= pages;
      }
      const walkEnd = scan.walkEnd;
      if (limited && remaining <= 0) break;
      if (walkEnd <= at) break; // no progress: nothing more to report
      at = walkEnd;
    }
  } finally {
    if ((options.pid ?? "self") !== "self") libc.close(fd);
  }
  return out;
}

function region(start: bigint, end: bigint, categories: bigint, base: bigint): PageRange {
  return {
    start,
    end,
    categories,
    names: categoryNames(categories),
    firstPage: Number((start - base) / PAGE),
    pages: Number((end - start) / PAGE),
  };
}

function scanError(rc: number, start: bigint, end: bigint, flags: bigint): UffdError {
  const errno = -rc;
  const hint = errno === ERRNO.EPERM
    ? "PM_SCAN_WP_MATCHING with checkWpAsync needs the range registered { wp: true } on a WP_ASYNC userfaultfd"
    : errno === ERRNO.EINVAL
    ? "the range must be page-aligned and the categories and flags known to this kernel"
    : errno === ERRNO.ENOTTY
    ? "this kernel has no PAGEMAP_SCAN (Linux 6.7+)"
    : errno === ERRNO.ESRCH
    ? "the process has exited"
    : errno === ERRNO.EFAULT
    ? "the range must lie in the user address space (below TASK_SIZE, 0x7ffffffff000 on most x86_64)"
    : undefined;
  return new UffdError({ errno, operation: "PAGEMAP_SCAN", args: { start, end, flags }, hint });
}

let acceptedCache: bigint | undefined;
let scanAvailableCache: boolean | undefined;

/**
 * Whether this kernel has PAGEMAP_SCAN (an empty scan of our own stack page is
 * accepted), probed once.
 *
 * @example
 * ```ts
 * import { hasPagemapScan } from "@uffd/uffd";
 * console.log(hasPagemapScan());
 * ```
 */
export function hasPagemapScan(): boolean {
  if (scanAvailableCache === undefined) {
    const probe = new ScanBuffers(0);
    const fd = pagemapFd("self", "PAGEMAP_SCAN");
    const here = libc.addressOf(new Uint8Array(1)) / PAGE * PAGE;
    const rc = probe.scan(fd, here, here + PAGE, 0n, 0n, 0n, 0n, 0n, 0n, 0);
    scanAvailableCache = rc >= 0;
  }
  return scanAvailableCache;
}

/**
 * The categories this kernel accepts, each probed once with a scan that uses it
 * alone (a kernel built without soft-dirty, or older than a category, refuses it
 * with EINVAL).
 *
 * @example
 * ```ts
 * import { acceptedCategories } from "@uffd/uffd";
 * console.log(acceptedCategories()); // e.g. ["WPALLOWED", "WRITTEN", ..., "GUARD"]
 * ```
 */
export function acceptedCategories(): Category[] {
  return categoryNames(acceptedCategoryMask());
}

function acceptedCategoryMask(): bigint {
  if (acceptedCache !== undefined) return acceptedCache;
  if (!hasPagemapScan()) return acceptedCache = 0n;
  const probe = new ScanBuffers(0);
  const fd = pagemapFd("self", "PAGEMAP_SCAN");
  const here = libc.addressOf(new Uint8Array(1)) / PAGE * PAGE;
  let accepted = 0n;
  for (const c of CATEGORIES) {
    if (probe.scan(fd, here, here + PAGE, 0n, 0n, 0n, c.mask, 0n, c.mask, 0) >= 0) accepted |= c.mask;
  }
  return acceptedCache = accepted;
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

/**
 * Reads and decodes the pagemap entries of every page in a range (one `pread` per
 * 64 Ki pages).
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
  const operation = "pagemap";
  const { start, len } = pageRange(range, operation);
  options = optionsBag(options, operation);
  const pages = Number(len / PAGE);
  if (pages > MAX_ENTRIES) {
    throw invalid(
      operation,
      `${pages} pages is more than readPagemap returns at once (${MAX_ENTRIES}): read the range in parts, ` +
        "or ask pagemapScan",
      { start, len },
      ERRNO.E2BIG,
    );
  }
  const pid = options.pid ?? "self";
  const fd = pagemapFd(pid, operation);
  const out: PagemapEntry[] = [];
  const chunk = new BigUint64Array(Math.min(pages, 65536));
  try {
    for (let done = 0; done < pages;) {
      const want = Math.min(chunk.length, pages - done);
      const view = chunk.subarray(0, want);
      const address = start + BigInt(done) * PAGE;
      const got = readPagemapEntries(fd, address, libc.PAGE_SIZE, view);
      if (got < 0) throw new UffdError({ errno: -got, operation, args: { start: address, pages: want } });
      if (got === 0) break;
      for (let i = 0; i < got; i++) out.push(decodeEntry(address + BigInt(i) * PAGE, view[i]!));
      done += got;
    }
  } finally {
    if (pid !== "self") libc.close(fd);
  }
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
    const length = BigInt(libc.PAGE_SIZE);
    const address = libc.mmap(0n, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    if (address < 0n) throw new UffdError({ errno: -Number(address), operation: "mmap", args: { length } });
    try {
      new Uint8Array(libc.bufferAt(address, 1))[0] = 1;
      softDirtyCache = readPagemap({ address, length })[0]?.softDirty === true;
    } finally {
      libc.munmap(address, length);
    }
  }
  return softDirtyCache;
}
