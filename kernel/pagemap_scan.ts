/**
 * Which pages of a process are present, swapped, written since protection, …:
 * {@linkcode pagemapScan} drives the PAGEMAP_SCAN ioctl (Linux 6.7) on
 * `/proc/<pid>/pagemap`, resuming from `walk_end` until the range is covered, with
 * every option of the ioctl; {@linkcode PagemapScanner} keeps the pagemap file and
 * the output vector open across calls and can hand regions to a callback without
 * allocating. The classic 64-bit pagemap entries, for kernels without PAGEMAP_SCAN
 * and for inspection, are read by `pagemap.ts`.
 *
 * Categories the kernel does not accept (older than the category, or built without
 * it) are probed once ({@linkcode acceptedCategories}) and refused before the ioctl
 * with a clear error. `SOFT_DIRTY` is special: a kernel built without
 * `CONFIG_MEM_SOFT_DIRTY` accepts the category but never sets it, so it is refused
 * unless {@linkcode softDirtySupported} measured that soft-dirty really works.
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
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { ScanBuffers } from "../ffi/_pagemap_scan.ts";
import {
  CATEGORIES,
  type Category,
  PAGE_IS_KNOWN,
  PAGE_IS_SOFT_DIRTY,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
} from "../ffi/uapi.ts";
import { optionsBag } from "./_validate.ts";
import { ERRNO, failure, invalid, type UffdError } from "./errors.ts";
import { categoryMask, categoryNames } from "./names.ts";
import { KEEP_SELF_FD, openPagemap, type Pid, releasePagemap, softDirtySupported } from "./pagemap.ts";
import { pageRange, type Range } from "./range.ts";

/** What to look for in a PAGEMAP_SCAN walk: the ioctl's masks and flags, by category name. */
export interface ScanQuery {
  /** Categories that must all be set (`category_mask`). */
  require?: Iterable<Category>;
  /**
   * Categories whose meaning is inverted before matching (`category_inverted`):
   * `{ require: ["PRESENT"], invert: ["PRESENT"] }` matches pages that are not present.
   */
  invert?: Iterable<Category>;
  /** Categories of which at least one must be set (`category_anyof_mask`). */
  anyOf?: Iterable<Category>;
  /**
   * Categories to report per region (`return_mask`); default: those named in
   * `require`, `anyOf` and `invert`, or every category this kernel can answer when
   * none is named. Regions with equal reported categories are merged.
   */
  report?: Iterable<Category>;
  /** Stop after this many matching pages (`max_pages`); default no limit. The result's `walkEnd` says where to resume. */
  maxPages?: number;
  /** `PM_SCAN_WP_MATCHING`: write-protect the matching pages in the same walk (get-and-clear). */
  writeProtect?: boolean;
  /** `PM_SCAN_CHECK_WPASYNC`: fail with EPERM where async write-protect is not set up, instead of skipping. */
  checkWpAsync?: boolean;
}

/** Options of {@linkcode pagemapScan}: a query, whose pagemap, and the output vector's length. */
export interface ScanOptions extends ScanQuery {
  /** The process (default `"self"`). */
  pid?: Pid;
  /** Regions per ioctl (the output vector's length, default 1024). The vector is reused across calls. */
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

/**
 * The regions a scan found (an array), with where the walk ended and how many
 * ioctls it took as extra, non-enumerable properties.
 */
export interface ScanResult extends Array<PageRange> {
  /**
   * Where the walk ended (`walk_end`): the range's end when it was covered, or the
   * first page not looked at when `maxPages` stopped it — scan again from there to
   * resume.
   */
  readonly walkEnd: bigint;
  /** Number of PAGEMAP_SCAN ioctls made (more than one when the output vector filled up). */
  readonly calls: number;
}

/** What {@linkcode PagemapScanner.visit} did. */
export interface VisitSummary {
  /** Regions handed to the visitor (after merging across ioctls). */
  regions: number;
  /** Pages in those regions. */
  pages: number;
  /** PAGEMAP_SCAN ioctls made. */
  calls: number;
  /** Where the walk ended, as an address (see {@linkcode ScanResult.walkEnd}). */
  walkEnd: bigint;
}

/**
 * Receives one region of a {@linkcode PagemapScanner.visit} walk: the first page
 * (relative to the scanned range), the number of pages and the reported
 * `PAGE_IS_*` bits, all plain numbers.
 */
export type RegionVisitor = (firstPage: number, pages: number, categories: number) => void;

/** A {@linkcode ScanQuery} checked and turned into the ioctl's masks once, for scans repeated many times. */
export interface PreparedQuery {
  /** `PM_SCAN_*` flags. */
  readonly flags: bigint;
  /** `category_inverted` */
  readonly inverted: bigint;
  /** `category_mask` */
  readonly required: bigint;
  /** `category_anyof_mask` */
  readonly anyOf: bigint;
  /** `return_mask` */
  readonly report: bigint;
  /** `max_pages` (0: no limit). */
  readonly maxPages: number;
}

const DEFAULT_VECTOR = 1024;
/** User-space addresses on x86_64 and aarch64 stay below 2^53, so they are exact as numbers (the fast path). */
const ADDRESS_LIMIT = BigInt(Number.MAX_SAFE_INTEGER);

function mask(names: Iterable<Category> | undefined, option: string): bigint {
  if (names === undefined) return 0n;
  if (typeof names !== "object" || names === null || !(Symbol.iterator in names)) {
    throw new TypeError(`PAGEMAP_SCAN: ${option} must be a list of category names`);
  }
  return categoryMask(names);
}

/**
 * Checks a query once and turns it into the ioctl's masks: unknown names are a
 * `TypeError`; categories this kernel refuses (and `SOFT_DIRTY` where soft-dirty
 * does not work) a `UffdError` before any ioctl.
 *
 * @param query The categories and flags, by name.
 * @returns The ioctl's masks, frozen, for `PagemapScanner.visit` and `pagemapScan`.
 * @throws {TypeError} An unknown category name.
 * @throws {UffdError} `EINVAL` for a category this kernel refuses; `EOPNOTSUPP` for `SOFT_DIRTY` where it never sets
 *   the bit.
 *
 * @example
 * ```ts
 * import { prepareQuery } from "@uffd/uffd";
 * const q = prepareQuery({ require: ["WRITTEN"], writeProtect: true });
 * console.log(q.required, q.flags); // 2n 1n
 * ```
 */
export function prepareQuery(query: ScanQuery = {}): PreparedQuery {
  const operation = "PAGEMAP_SCAN";
  if (query === null || typeof query !== "object") throw new TypeError(`${operation}: the query must be an object`);
  const required = mask(query.require, "require");
  const anyOf = mask(query.anyOf, "anyOf");
  const inverted = mask(query.invert, "invert");
  const named = required | anyOf | inverted;
  const answerable = answerableCategoryMask();
  const report = query.report !== undefined ? mask(query.report, "report") : named === 0n ? answerable : named;
  const refused = (named | report) & ~acceptedCategoryMask();
  if (refused !== 0n) {
    const names = categoryNames(refused);
    throw invalid(
      operation,
      `this kernel does not accept the categor${names.length > 1 ? "ies" : "y"} ${names.join(", ")}`,
      { kernel: kernelRelease(), accepted: acceptedCategories().join("|") },
    );
  }
  if (((named | report) & ~answerable) !== 0n) {
    throw invalid(
      operation,
      "SOFT_DIRTY is accepted by this kernel but never set: it was built without CONFIG_MEM_SOFT_DIRTY " +
        "(see softDirtySupported())",
      { kernel: kernelRelease() },
      ERRNO.EOPNOTSUPP,
    );
  }
  const maxPages = query.maxPages ?? 0;
  if (typeof maxPages !== "number") throw new TypeError(`${operation}: maxPages must be a number`);
  if (!Number.isSafeInteger(maxPages) || maxPages < 0) {
    throw invalid(operation, "maxPages must be a non-negative integer", { maxPages });
  }
  const flags = (query.writeProtect ? PM_SCAN_WP_MATCHING : 0n) | (query.checkWpAsync ? PM_SCAN_CHECK_WPASYNC : 0n);
  return Object.freeze({ flags, inverted, required, anyOf, report, maxPages });
}

function isPrepared(query: ScanQuery | PreparedQuery): query is PreparedQuery {
  return typeof (query as PreparedQuery).flags === "bigint";
}

/**
 * A pagemap file and a PAGEMAP_SCAN output vector kept open for repeated scans:
 * of this process, or of another one (`pid`), which needs ptrace read access to it.
 * {@linkcode scan} returns region objects; {@linkcode visit} hands each region to a
 * callback as plain numbers and allocates nothing per region or per ioctl.
 *
 * @example
 * ```ts
 * import { PagemapScanner, prepareQuery, Region } from "@uffd/uffd";
 * using mem = Region.map(8 * Region.pageSize);
 * mem.bytes[2 * Region.pageSize] = 1;
 * using scanner = new PagemapScanner();
 * const present = prepareQuery({ require: ["PRESENT"] });
 * scanner.visit(mem, present, (first, pages) => console.log(first, pages)); // 2 1
 * ```
 */
export class PagemapScanner implements Disposable {
  /** Whose pagemap. */
  readonly pid: Pid;
  /** Regions per ioctl. */
  readonly vectorLength: number;
  readonly #buffers: ScanBuffers;
  #fd: number;

  /** Opens `/proc/<pid>/pagemap` (`"self"` by default); fails with ESRCH for a missing process, EACCES without access. */
  constructor(options: { pid?: Pid; vectorLength?: number } = {}) {
    const pid = options.pid ?? "self";
    const vectorLength = options.vectorLength ?? DEFAULT_VECTOR;
    if (typeof vectorLength !== "number") throw new TypeError("PAGEMAP_SCAN: vectorLength must be a number");
    if (!Number.isSafeInteger(vectorLength) || vectorLength < 1 || vectorLength > 1 << 20) {
      throw invalid("PAGEMAP_SCAN", "vectorLength must be an integer in [1, 2^20]", { vectorLength });
    }
    this.#fd = openPagemap(pid, "PAGEMAP_SCAN");
    this.pid = pid;
    this.vectorLength = vectorLength;
    this.#buffers = new ScanBuffers(vectorLength);
  }

  /**
   * Scans a page-aligned range (a `Region` over memory it does not own is widened
   * to its `pageSpan`) and returns the matching regions.
   */
  scan(range: Range, query: ScanQuery | PreparedQuery = {}): ScanResult {
    const out = [] as PageRange[] as ScanResult;
    const { start } = pageRange(range, "PAGEMAP_SCAN");
    const summary = this.visit(range, query, (first, pages, categories) => {
      out.push(new ScannedRange(start, first, pages, categories));
    });
    // Not enumerable: the result still compares and prints like a plain array.
    Object.defineProperty(out, "walkEnd", { value: summary.walkEnd, enumerable: false });
    Object.defineProperty(out, "calls", { value: summary.calls, enumerable: false });
    return out;
  }

  /**
   * Scans a page-aligned range and calls `visitor(firstPage, pages, categories)`
   * for each matching region, in address order; regions split by a full output
   * vector are merged back. Nothing is allocated per region or per ioctl.
   */
  visit(range: Range, query: ScanQuery | PreparedQuery, visitor: RegionVisitor): VisitSummary {
    const operation = "PAGEMAP_SCAN";
    if (this.#fd < 0) throw invalid(operation, "the scanner is closed", {}, ERRNO.EBADF);
    const q = isPrepared(query) ? query : prepareQuery(query);
    const { start: base, len } = pageRange(range, operation);
    // Offsets from `base` are plain numbers; so are addresses below 2^53 (all of user
    // space on x86_64 and aarch64), which keeps the loop free of bigints. Above that
    // (the vsyscall page), each ioctl and region converts.
    const high = base + len > ADDRESS_LIMIT;
    const start = high ? 0 : Number(base);
    const length = Number(len);
    const scan = this.#buffers;
    scan.setQuery(q.flags, q.inverted, q.required, q.anyOf, q.report);
    const limited = q.maxPages > 0;
    let remaining = q.maxPages;
    let regions = 0;
    let pages = 0;
    let calls = 0;
    // One region held back, so that a region split by a full vector is reported once.
    let heldFirst = -1;
    let heldPages = 0;
    let heldCategories = 0;
    let at = 0; // offset from base
    let walkEnd = 0;
    while (at < length) {
      const n = high
        ? scan.scan(
          this.#fd,
          base + BigInt(at),
          base + len,
          q.flags,
          BigInt(limited ? remaining : 0),
          q.inverted,
          q.required,
          q.anyOf,
          q.report,
        )
        : scan.scanFrom(this.#fd, start + at, start + length, limited ? remaining : 0);
      calls++;
      if (n < 0) throw scanError(n, base, base + len, q.flags, this.pid);
      for (let i = 0; i < n; i++) {
        const rs = high ? Number(scan.regionStart(i) - base) : scan.startOf(i) - start;
        const count = (high ? Number(scan.regionEnd(i) - scan.regionStart(i)) : scan.endOf(i) - scan.startOf(i)) /
          PAGE_SIZE;
        const first = rs / PAGE_SIZE;
        const categories = scan.categoriesOf(i);
        if (heldFirst >= 0 && heldFirst + heldPages === first && heldCategories === categories) {
          heldPages += count;
        } else {
          if (heldFirst >= 0) {
            visitor(heldFirst, heldPages, heldCategories);
            regions++;
          }
          heldFirst = first;
          heldPages = count;
          heldCategories = categories;
        }
        pages += count;
        if (limited) remaining -= count;
      }
      walkEnd = high ? Number(scan.walkEnd - base) : scan.walkEndNumber - start;
      if (limited && remaining <= 0) break;
      // The kernel stops early only when the vector is full (or max_pages is reached,
      // handled above): fewer regions mean the range is covered. Its walk_end is then
      // not to be trusted: the kernel fills the vector in chunks of 512 and leaves
      // walk_end at the previous chunk's stop when the last chunk completes (seen on
      // 6.18), and resuming from there would report regions twice.
      if (n < this.vectorLength) {
        walkEnd = length;
        break;
      }
      const lastEnd = high ? Number(scan.regionEnd(n - 1) - base) : scan.endOf(n - 1) - start;
      const next = walkEnd > lastEnd ? walkEnd : lastEnd;
      if (next <= at) break; // no progress: nothing more to report
      at = next;
    }
    if (heldFirst >= 0) {
      visitor(heldFirst, heldPages, heldCategories);
      regions++;
    }
    return { regions, pages, calls, walkEnd: base + BigInt(walkEnd) };
  }

  /** Closes the pagemap file of another process (this process's stays open for everyone). */
  close(): void {
    releasePagemap(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** One scanner per vector length for this process, reused by `pagemapScan`. */
const selfScanners = new Map<number, PagemapScanner>();

/**
 * Runs PAGEMAP_SCAN over a page-aligned range and returns the matching regions,
 * coalesced as the kernel reports them. The walk resumes from `walk_end` whenever
 * the output vector fills, until the range is covered or `maxPages` is reached
 * (`result.walkEnd` says where it stopped). For this process the output vector is
 * reused across calls; for another (`pid`) the pagemap file is opened per call.
 *
 * @param range A page-aligned range (a `Region` is widened to its `pageSpan`).
 * @param options The query, `pid` and `vectorLength`.
 * @returns The matching regions, with `walkEnd` and `calls`.
 * @throws {UffdError} `ENOTTY` without PAGEMAP_SCAN (Linux 6.7+); `EPERM` with `checkWpAsync` where async write-protect
 *   is missing; `EINVAL` for a refused category; `ESRCH`/`EACCES` for another process.
 *
 * @example
 * ```ts
 * import { pagemapScan, Region } from "@uffd/uffd";
 * using mem = Region.map(8 * Region.pageSize);
 * mem.bytes[0] = 1;
 * console.log(pagemapScan(mem, { require: ["PRESENT"] }).length); // 1
 * ```
 */
export function pagemapScan(range: Range, options?: ScanOptions): ScanResult {
  options = optionsBag(options, "PAGEMAP_SCAN");
  const pid = options.pid ?? "self";
  const vectorLength = options.vectorLength ?? DEFAULT_VECTOR;
  if (pid === "self" && KEEP_SELF_FD) {
    let scanner = selfScanners.get(vectorLength);
    if (scanner === undefined) {
      scanner = new PagemapScanner({ vectorLength });
      if (selfScanners.size < 8) selfScanners.set(vectorLength, scanner);
    }
    return scanner.scan(range, options);
  }
  using scanner = new PagemapScanner({ pid, vectorLength });
  return scanner.scan(range, options);
}

/**
 * A region of a scan result. The addresses and the category mask are bigints made
 * on first use: a scan of fragmented memory creates thousands of these, and most
 * callers only look at `firstPage`, `pages` and `names`.
 */
class ScannedRange implements PageRange {
  readonly firstPage: number;
  readonly pages: number;
  readonly names: readonly Category[];
  readonly #base: bigint;
  readonly #categories: number;

  constructor(base: bigint, firstPage: number, pages: number, categories: number) {
    this.firstPage = firstPage;
    this.pages = pages;
    this.names = namesOf(categories);
    this.#base = base;
    this.#categories = categories;
  }

  get start(): bigint {
    return this.#base + BigInt(this.firstPage * PAGE_SIZE);
  }

  get end(): bigint {
    return this.#base + BigInt((this.firstPage + this.pages) * PAGE_SIZE);
  }

  get categories(): bigint {
    return BigInt(this.#categories);
  }

  /** Prints like the plain record it stands for. */
  [Symbol.for("Deno.customInspect")](inspect: (value: unknown, options: unknown) => string, options: unknown): string {
    const { start, end, categories, names, firstPage, pages } = this;
    return inspect({ start, end, categories, names, firstPage, pages }, options);
  }
}

/** One frozen names array per category mask, shared by every region that reports it. */
const namesByMask = new Map<number, readonly Category[]>();

function namesOf(categories: number): readonly Category[] {
  let names = namesByMask.get(categories);
  if (names === undefined) namesByMask.set(categories, names = Object.freeze(categoryNames(BigInt(categories))));
  return names;
}

function scanError(rc: number, start: bigint, end: bigint, flags: bigint, pid: Pid): UffdError {
  const errno = -rc;
  const hint = errno === ERRNO.EPERM
    ? "checkWpAsync: part of the range is not registered { wp: true } on a userfaultfd with WP_ASYNC"
    : errno === ERRNO.EINVAL
    ? "the range must be page-aligned and the categories and flags known to this kernel"
    : errno === ERRNO.ENOTTY
    ? "this kernel has no PAGEMAP_SCAN (Linux 6.7+)"
    : errno === ERRNO.ESRCH
    ? `process ${pid} has exited`
    : errno === ERRNO.EFAULT
    ? "the range must lie in the user address space (below TASK_SIZE, 0x7ffffffff000 on most x86_64)"
    : undefined;
  return failure("PAGEMAP_SCAN", rc, { start, end, flags, pid }, hint);
}

let acceptedCache: bigint | undefined;
let scanAvailableCache: boolean | undefined;

/** An empty scan of one page of our own memory with the given masks: the ioctl's result. */
function probe(categories: bigint): number {
  const buffers = new ScanBuffers(0);
  const fd = openPagemap("self", "PAGEMAP_SCAN");
  const here = libc.addressOf(new Uint8Array(1)) / PAGE_SIZE_N * PAGE_SIZE_N;
  try {
    return buffers.scan(fd, here, here + PAGE_SIZE_N, 0n, 0n, 0n, categories, 0n, categories, 0);
  } finally {
    releasePagemap(fd);
  }
}

/**
 * Whether this kernel has PAGEMAP_SCAN (an empty scan of our own memory is
 * accepted), probed once.
 *
 * @example
 * ```ts
 * import { hasPagemapScan } from "@uffd/uffd";
 * console.log(hasPagemapScan());
 * ```
 */
export function hasPagemapScan(): boolean {
  return scanAvailableCache ??= probe(0n) >= 0;
}

/**
 * The categories this kernel accepts, each probed once with a scan that uses it
 * alone (a kernel older than a category refuses it with EINVAL). Accepted is not
 * the same as answered: see {@linkcode softDirtySupported}.
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
  let accepted = 0n;
  for (const c of CATEGORIES) if (probe(c.mask) >= 0) accepted |= c.mask;
  return acceptedCache = accepted;
}

/** Accepted categories minus SOFT_DIRTY where soft-dirty is compiled out. */
function answerableCategoryMask(): bigint {
  const accepted = acceptedCategoryMask() & PAGE_IS_KNOWN;
  return (accepted & PAGE_IS_SOFT_DIRTY) !== 0n && !softDirtySupported() ? accepted & ~PAGE_IS_SOFT_DIRTY : accepted;
}
