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
import { type NumericRange, pageRange, pageRangeInto, type Range } from "./range.ts";

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
const FLAG_WP_MATCHING = Number(PM_SCAN_WP_MATCHING);
const FLAG_CHECK_WPASYNC = Number(PM_SCAN_CHECK_WPASYNC);

/** Each category's bit as a number (every `PAGE_IS_*` bit is below 2^32): names to masks without bigints. */
const CATEGORY_BITS = new Map<string, number>(CATEGORIES.map((c) => [c.name, Number(c.mask)]));

/** The mask of a list of category names, as a number; an array (the usual case) is read without allocating. */
function mask(names: Iterable<Category> | undefined, option: string): number {
  if (names === undefined) return 0;
  if (Array.isArray(names)) {
    let bits = 0;
    for (let i = 0; i < names.length; i++) {
      const bit = CATEGORY_BITS.get(names[i]);
      if (bit === undefined) throw new TypeError(`unknown PAGEMAP_SCAN category: ${String(names[i])}`);
      bits |= bit;
    }
    return bits;
  }
  if (typeof names !== "object" || names === null || !(Symbol.iterator in names)) {
    throw new TypeError(`PAGEMAP_SCAN: ${option} must be a list of category names`);
  }
  return Number(categoryMask(names));
}

/** Prepared queries by their masks (without `maxPages`): the same query object for the same masks, made once. */
const preparedCache = new Map<number, PreparedQuery>();

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
  const answerable = answerableBits();
  const report = query.report !== undefined ? mask(query.report, "report") : named === 0 ? answerable : named;
  const refused = (named | report) & ~acceptedBits();
  if (refused !== 0) {
    const names = categoryNames(BigInt(refused));
    throw invalid(
      operation,
      `this kernel does not accept the categor${names.length > 1 ? "ies" : "y"} ${names.join(", ")}`,
      { kernel: kernelRelease(), accepted: acceptedCategories().join("|") },
    );
  }
  if (((named | report) & ~answerable) !== 0) {
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
  const flags = (query.writeProtect ? FLAG_WP_MATCHING : 0) | (query.checkWpAsync ? FLAG_CHECK_WPASYNC : 0);
  // Every mask fits in 10 bits and the flags in 2: one number names the query (maxPages aside).
  const key = required + inverted * 2 ** 10 + anyOf * 2 ** 20 + report * 2 ** 30 + flags * 2 ** 40;
  if (maxPages === 0) {
    const cached = preparedCache.get(key);
    if (cached !== undefined) return cached;
  }
  const prepared = Object.freeze({
    flags: BigInt(flags),
    inverted: BigInt(inverted),
    required: BigInt(required),
    anyOf: BigInt(anyOf),
    report: BigInt(report),
    maxPages,
  });
  if (maxPages === 0 && preparedCache.size < 256) preparedCache.set(key, prepared);
  return prepared;
}

function isPrepared(query: ScanQuery | PreparedQuery): query is PreparedQuery {
  return typeof (query as PreparedQuery).flags === "bigint";
}

/** Appends a region to a packed result (set up by `PackedScan`'s static block). */
let appendPacked: (packed: PackedScan, first: number, count: number, categories: number) => void;

/**
 * A scan's regions packed into typed arrays, the form C keeps them in: region
 * `i` is `pageCounts[i]` pages from page `firstPages[i]` (relative to the scanned
 * range's start, `base`), with the reported `PAGE_IS_*` bits `categories[i]`,
 * for `i` below `length`. Filled by {@linkcode pagemapScanPacked} or
 * {@linkcode PagemapScanner.scanPacked}; pass the same object again (`into`) and
 * the next scan reuses its arrays, which grow when a scan finds more regions and
 * never shrink: a scan then allocates nothing, whatever the size of the range.
 * Entries past `length` are left over from earlier scans.
 *
 * @example
 * ```ts
 * import { pagemapScanPacked, Region } from "@uffd/uffd";
 * using mem = Region.map(8 * Region.pageSize);
 * mem.bytes[2 * Region.pageSize] = 1;
 * mem.bytes[3 * Region.pageSize] = 1;
 * const found = pagemapScanPacked(mem, { require: ["PRESENT"] });
 * console.log(found.length, found.firstPages[0], found.pageCounts[0], found.names(0)); // 1 2 2 ["PRESENT"]
 * ```
 */
export class PackedScan {
  /** Regions found by the last scan. */
  length = 0;
  /** Pages in those regions. */
  pages = 0;
  /** The scanned range's start: page `p` is at `base + p × pageSize`. */
  base = 0n;
  /** Where the last walk ended (see {@linkcode ScanResult.walkEnd}). */
  walkEnd = 0n;
  /** PAGEMAP_SCAN ioctls the last scan made. */
  calls = 0;
  #firstPages: Float64Array;
  #pageCounts: Float64Array;
  #categories: Uint32Array;

  /** Empty, with room for `capacity` regions before its arrays grow (default 1024). */
  constructor(capacity = 1024) {
    if (typeof capacity !== "number" || !Number.isSafeInteger(capacity) || capacity < 1 || capacity > 2 ** 28) {
      throw new TypeError("PackedScan: capacity must be an integer in [1, 2^28]");
    }
    this.#firstPages = new Float64Array(capacity);
    this.#pageCounts = new Float64Array(capacity);
    this.#categories = new Uint32Array(capacity);
  }

  static {
    appendPacked = (p, first, count, categories) => {
      const n = p.length;
      if (n === p.#firstPages.length) p.#grow();
      p.#firstPages[n] = first;
      p.#pageCounts[n] = count;
      p.#categories[n] = categories;
      p.length = n + 1;
      p.pages += count;
    };
  }

  /** Each region's first page, relative to `base` (entries `0` to `length - 1`). */
  get firstPages(): Float64Array {
    return this.#firstPages;
  }

  /** Each region's number of pages. */
  get pageCounts(): Float64Array {
    return this.#pageCounts;
  }

  /** Each region's reported `PAGE_IS_*` bits. */
  get categories(): Uint32Array {
    return this.#categories;
  }

  /** How many regions the arrays hold before they grow. */
  get capacity(): number {
    return this.#firstPages.length;
  }

  /** Region `i`'s start address. */
  start(i: number): bigint {
    return this.base + BigInt(this.#firstPages[this.#at(i)]! * PAGE_SIZE);
  }

  /** Region `i`'s end address (exclusive). */
  end(i: number): bigint {
    const at = this.#at(i);
    return this.base + BigInt((this.#firstPages[at]! + this.#pageCounts[at]!) * PAGE_SIZE);
  }

  /** Region `i`'s reported categories by name (one frozen array per mask, shared). */
  names(i: number): readonly Category[] {
    return namesOf(this.#categories[this.#at(i)]!);
  }

  /** The regions as `PageRange` objects, as `pagemapScan()` returns them (allocates). */
  toArray(): PageRange[] {
    const out: PageRange[] = [];
    for (let i = 0; i < this.length; i++) {
      out.push(new ScannedRange(this.base, this.#firstPages[i]!, this.#pageCounts[i]!, this.#categories[i]!));
    }
    return out;
  }

  /** Empties it for the next scan (the storage stays). */
  clear(base = 0n): void {
    this.length = 0;
    this.pages = 0;
    this.calls = 0;
    this.base = base;
    this.walkEnd = base;
  }

  #at(i: number): number {
    if (!(i >= 0 && i < this.length && (i | 0) === i)) {
      throw new RangeError(`PackedScan: region ${i} is not in this result of ${this.length}`);
    }
    return i;
  }

  #grow(): void {
    const size = this.#firstPages.length * 2;
    const first = new Float64Array(size);
    const counts = new Float64Array(size);
    const categories = new Uint32Array(size);
    first.set(this.#firstPages);
    counts.set(this.#pageCounts);
    categories.set(this.#categories);
    this.#firstPages = first;
    this.#pageCounts = counts;
    this.#categories = categories;
  }
}

/** The non-enumerable properties of a `ScanResult`, reused: a descriptor per call costs more than the scan's JS. */
const WALK_END: PropertyDescriptor = { value: 0n, enumerable: false };
const CALLS: PropertyDescriptor = { value: 0, enumerable: false };

/**
 * A pagemap file and a PAGEMAP_SCAN output vector kept open for repeated scans:
 * of this process, or of another one (`pid`), which needs ptrace read access to it.
 * {@linkcode scan} returns region objects; {@linkcode scanPacked} fills typed arrays
 * ({@linkcode PackedScan}); {@linkcode visit} hands each region to a callback as
 * plain numbers. The last two allocate nothing per region or per ioctl.
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
  /** The query the buffers hold (set once for the repeated scans of one query). */
  #query: PreparedQuery | undefined;
  /** The range being scanned, as numbers (below 2^53). */
  readonly #span: NumericRange = { start: 0, len: 0 };
  /** What the last walk did (read right after it). */
  #regions = 0;
  #pages = 0;
  #calls = 0;
  #walkEnd = 0n;

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
    this.#walk(range, query, undefined, out);
    // Not enumerable: the result still compares and prints like a plain array.
    WALK_END.value = this.#walkEnd;
    CALLS.value = this.#calls;
    Object.defineProperty(out, "walkEnd", WALK_END);
    Object.defineProperty(out, "calls", CALLS);
    return out;
  }

  /**
   * Scans a page-aligned range into typed arrays: `into` (reused, so that the scan
   * allocates nothing) or a new {@linkcode PackedScan}.
   *
   * @param range A page-aligned range (a `Region` is widened to its `pageSpan`).
   * @param query The categories and flags, or a prepared query.
   * @param into A packed result to fill (its arrays are reused).
   * @returns `into`, or a new packed result.
   *
   * @example
   * ```ts
   * import { PackedScan, PagemapScanner, prepareQuery, Region } from "@uffd/uffd";
   * using mem = Region.map(8 * Region.pageSize);
   * mem.bytes[5 * Region.pageSize] = 1;
   * using scanner = new PagemapScanner();
   * const present = prepareQuery({ require: ["PRESENT"] });
   * const packed = new PackedScan();
   * scanner.scanPacked(mem, present, packed);
   * console.log(packed.length, packed.firstPages[0], packed.start(0) === mem.address + 5n * 4096n); // 1 5 true
   * ```
   */
  scanPacked(range: Range, query: ScanQuery | PreparedQuery = {}, into?: PackedScan): PackedScan {
    if (into !== undefined && !(into instanceof PackedScan)) {
      throw new TypeError("scanPacked: into must be a PackedScan");
    }
    const packed = into ?? new PackedScan();
    packed.length = 0;
    packed.pages = 0;
    this.#walk(range, query, undefined, undefined, packed);
    packed.calls = this.#calls;
    packed.walkEnd = this.#walkEnd;
    return packed;
  }

  /**
   * Scans a page-aligned range and calls `visitor(firstPage, pages, categories)`
   * for each matching region, in address order; regions split by a full output
   * vector are merged back. Nothing is allocated per region or per ioctl.
   */
  visit(range: Range, query: ScanQuery | PreparedQuery, visitor: RegionVisitor): VisitSummary {
    this.#walk(range, query, visitor);
    return { regions: this.#regions, pages: this.#pages, calls: this.#calls, walkEnd: this.#walkEnd };
  }

  /**
   * The walk behind `visit`, `scan` and `scanPacked`: each region goes to `visitor`,
   * into `objects` (as `PageRange`s) or into `packed`. Leaves what it did in
   * `#regions`, `#pages`, `#calls`, `#walkEnd`; returns the range's start.
   */
  #walk(
    range: Range,
    query: ScanQuery | PreparedQuery,
    visitor?: RegionVisitor,
    objects?: PageRange[],
    packed?: PackedScan,
  ): bigint {
    const operation = "PAGEMAP_SCAN";
    if (this.#fd < 0) throw invalid(operation, "the scanner is closed", {}, ERRNO.EBADF);
    const q = isPrepared(query) ? query : prepareQuery(query);
    const span = this.#span;
    // Offsets from the start are plain numbers; so are addresses below 2^53 (all of user space
    // on x86_64 and aarch64), which keeps the loop free of bigints. Above that (the vsyscall
    // page), each ioctl and region converts.
    const high = !pageRangeInto(range, operation, span);
    let base: bigint;
    let len: bigint;
    if (high) ({ start: base, len } = pageRange(range, operation));
    else {
      base = BigInt(span.start);
      len = 0n;
    }
    const start = high ? 0 : span.start;
    const length = high ? Number(len) : span.len;
    if (packed !== undefined) packed.base = base;
    const scan = this.#buffers;
    if (q !== this.#query) {
      scan.setQuery(q.flags, q.inverted, q.required, q.anyOf, q.report);
      this.#query = q;
    }
    const limited = q.maxPages > 0;
    let remaining = q.maxPages;
    let regions = 0;
    let pages = 0;
    let calls = 0;
    // One region held back, so that a region split by a full vector is reported once.
    let heldFirst = -1;
    let heldPages = 0;
    let heldCategories = 0;
    let at = 0; // offset from start
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
      if (high) this.#query = undefined; // scan() wrote the whole argument
      if (n < 0) throw scanError(n, base, base + BigInt(length), q.flags, this.pid);
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
            if (packed !== undefined) appendPacked(packed, heldFirst, heldPages, heldCategories);
            else if (objects !== undefined) objects.push(new ScannedRange(base, heldFirst, heldPages, heldCategories));
            else visitor!(heldFirst, heldPages, heldCategories);
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
      if (packed !== undefined) appendPacked(packed, heldFirst, heldPages, heldCategories);
      else if (objects !== undefined) objects.push(new ScannedRange(base, heldFirst, heldPages, heldCategories));
      else visitor!(heldFirst, heldPages, heldCategories);
      regions++;
    }
    this.#regions = regions;
    this.#pages = pages;
    this.#calls = calls;
    this.#walkEnd = base + BigInt(walkEnd);
    return base;
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
 * The scanner of this process `pagemapScan` and `pagemapScanPacked` keep for
 * `options`' vector length, or `undefined` when they need one of their own (another
 * process, or more vector lengths than are kept).
 */
function keptScanner(options: ScanOptions): PagemapScanner | undefined {
  if ((options.pid ?? "self") !== "self" || !KEEP_SELF_FD) return undefined;
  const vectorLength = options.vectorLength ?? DEFAULT_VECTOR;
  let scanner = selfScanners.get(vectorLength);
  if (scanner === undefined && selfScanners.size < 8) {
    scanner = new PagemapScanner({ vectorLength });
    selfScanners.set(vectorLength, scanner);
  }
  return scanner;
}

/**
 * Runs PAGEMAP_SCAN over a page-aligned range and returns the matching regions,
 * coalesced as the kernel reports them. The walk resumes from `walk_end` whenever
 * the output vector fills, until the range is covered or `maxPages` is reached
 * (`result.walkEnd` says where it stopped). For this process the output vector is
 * reused across calls; for another (`pid`) the pagemap file is opened per call.
 * {@linkcode pagemapScanPacked} is the same scan into typed arrays, without an
 * object per region.
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
  const kept = keptScanner(options);
  if (kept !== undefined) return kept.scan(range, options);
  using scanner = new PagemapScanner({ pid: options.pid, vectorLength: options.vectorLength });
  return scanner.scan(range, options);
}

/**
 * {@linkcode pagemapScan} into typed arrays: the same walk, the regions kept as
 * first pages, page counts and category bits (a {@linkcode PackedScan}) instead of
 * an object each — the form to use when a scan finds thousands of regions, or
 * runs often. Pass the result back as `into` and the next scan reuses its arrays.
 *
 * @param range A page-aligned range (a `Region` is widened to its `pageSpan`).
 * @param options The query, `pid` and `vectorLength`.
 * @param into A packed result to fill (its arrays are reused).
 * @returns `into`, or a new packed result: the regions, `walkEnd` and `calls`.
 * @throws {UffdError} As {@linkcode pagemapScan}.
 *
 * @example
 * ```ts
 * import { pagemapScanPacked, Region } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * for (let p = 0; p < 64; p += 4) mem.bytes[p * Region.pageSize] = 1;
 * let found = pagemapScanPacked(mem, { require: ["PRESENT"] });
 * console.log(found.length, found.pages); // 16 16
 * mem.bytes[1 * Region.pageSize] = 1;
 * found = pagemapScanPacked(mem, { require: ["PRESENT"] }, found); // the same arrays, refilled
 * console.log(found.length, found.pageCounts[0]); // 16 2
 * ```
 */
export function pagemapScanPacked(range: Range, options?: ScanOptions, into?: PackedScan): PackedScan {
  options = optionsBag(options, "PAGEMAP_SCAN");
  const kept = keptScanner(options);
  if (kept !== undefined) return kept.scanPacked(range, options, into);
  using scanner = new PagemapScanner({ pid: options.pid, vectorLength: options.vectorLength });
  return scanner.scanPacked(range, options, into);
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

let acceptedBitsCache = -1;
let answerableBitsCache = -1;

/** {@linkcode acceptedCategoryMask} as a number, probed once. */
function acceptedBits(): number {
  return acceptedBitsCache >= 0 ? acceptedBitsCache : acceptedBitsCache = Number(acceptedCategoryMask());
}

/** {@linkcode answerableCategoryMask} as a number, measured once. */
function answerableBits(): number {
  return answerableBitsCache >= 0 ? answerableBitsCache : answerableBitsCache = Number(answerableCategoryMask());
}
