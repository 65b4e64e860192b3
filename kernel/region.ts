/**
 * Mapped memory as an object. {@linkcode Region.map} maps memory the library owns
 * (private or shared anonymous, a `memfd`, hugetlb); {@linkcode Region.of} wraps
 * memory someone else owns (an `ArrayBuffer`, a typed array, a
 * `WebAssembly.Memory`) and never unmaps it. A `Region` is a `Range`, so it can be
 * passed to every `Userfaultfd` operation.
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * using mem = Region.map(16 * Region.pageSize);
 * mem.bytes[0] = 42;
 * console.log(mem.page(0)[0], mem.pageCount); // 42 16
 * ```
 *
 * @module
 */

import { type EventKind, wouldDeadlock } from "./_event_readers.ts";
import { ERRNO, failure, invalid, UffdError } from "./errors.ts";
import * as libc from "../ffi/_libc.ts";
import {
  MADV_DONTNEED,
  MADV_DONTNEED_LOCKED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_REMOVE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from "../ffi/linux.ts";
import { pageCeil, pageFloor, pageRange, type Range, toLength } from "./range.ts";
import { cInt, optionsBag } from "./_validate.ts";
import { thpTraits } from "./profile.ts";

/** How {@linkcode Region.map} maps memory. */
export interface MapOptions {
  /** `MAP_SHARED` anonymous memory (shmem) instead of private. */
  shared?: boolean;
  /** Back the region with a `memfd` (shared; the fd stays open as `region.fd`). */
  memfd?: boolean;
  /** Use huge pages (`MAP_HUGETLB`, or `MFD_HUGETLB` with `memfd`); needs reserved huge pages. */
  hugetlb?: boolean;
  /** Fault every page in now (`MAP_POPULATE`). */
  populate?: boolean;
  /** Protection, `PROT_READ | PROT_WRITE` by default. */
  prot?: number;
  /** The memfd's name in `/proc/<pid>/maps` (default `"uffd"`). */
  name?: string;
  /**
   * Transparent huge pages for private anonymous memory: `true` asks for them
   * (`MADV_HUGEPAGE`), `false` refuses them (`MADV_NOHUGEPAGE`). By default the kernel
   * decides — except where a huge page faulted in through a neighbouring mapping can
   * populate this one (`kernelProfile().thp.fillsNeighbours`: THP `always`), where the
   * region is mapped `MADV_NOHUGEPAGE`: its pages then hold only what was put there (a
   * region registered for missing faults has no zero-filled pages it never touched),
   * a write populates and dirties one page, not 512, and the mapping cannot merge with
   * a neighbour that has huge pages.
   */
  thp?: boolean;
  /**
   * Start the region on a multiple of this many bytes (a power of two, at least the
   * page size): `2 ** 21` for a 2 MiB boundary, where a transparent huge page can
   * start; `2 ** 30` for a 1 GiB one. An aligned block more is reserved, the region
   * mapped at its first boundary, and the rest unmapped. Where a region starts
   * decides how much of the page tables a walk over it visits: a `PAGEMAP_SCAN` of
   * 1 GiB never touched takes 1.8 µs from a 1 GiB boundary and 4.8–10 µs from
   * wherever `mmap` put it (6.18, measured in C).
   */
  align?: number;
}

/** What backs a region. */
export type RegionKind = "private" | "shared" | "memfd" | "hugetlb" | "external";

/** Memory owned by someone else that {@linkcode Region.of} can wrap. */
export type ExternalMemory = ArrayBufferLike | ArrayBufferView | WebAssembly.Memory;

let hugePageSizeCache: number | undefined;

/** The default huge page size from `/proc/meminfo` (2 MiB when it cannot be read). */
function hugePageSize(): number {
  if (hugePageSizeCache === undefined) {
    hugePageSizeCache = 2 * 1024 * 1024;
    const meminfo = libc.readTextFile("/proc/meminfo");
    const match = typeof meminfo === "string" ? /^Hugepagesize:\s+(\d+) kB/m.exec(meminfo) : null;
    if (match) hugePageSizeCache = Number(match[1]) * 1024;
  }
  return hugePageSizeCache;
}

/** `MapOptions.align` as a bigint, 0n when there is none; a refusal names what is wrong. */
function alignment(align: number | undefined, pageSize: number, operation: string): bigint {
  if (align === undefined) return 0n;
  if (typeof align !== "number" || !Number.isInteger(Math.log2(align)) || align < pageSize || align > 2 ** 40) {
    throw invalid(operation, `align must be a power of two between ${pageSize} and 2 ** 40, not ${align}`, {
      align: String(align),
    });
  }
  return BigInt(align);
}

/**
 * `mmap` at the first multiple of `align` inside a reservation of `len + align`
 * bytes (`PROT_NONE`), the slack around it unmapped: the address, or `-errno`.
 */
function mapAligned(len: bigint, align: bigint, prot: number, flags: number, fd: number | undefined): bigint {
  const reserved = libc.mmap(0n, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0n);
  if (reserved < 0n) return reserved;
  const start = (reserved + align - 1n) & ~(align - 1n);
  const address = libc.mmap(start, len, prot, flags | MAP_FIXED, fd ?? -1, 0n);
  if (address < 0n) {
    libc.munmap(reserved, len + align);
    return address;
  }
  if (start > reserved) libc.munmap(reserved, start - reserved);
  libc.munmap(start + len, reserved + align - start);
  return address;
}

function fail(rc: number | bigint, operation: string, args: Record<string, unknown>, hint?: string): never {
  throw failure(operation, rc, args, hint);
}

/** Advices that drop pages, raising `EVENT_REMOVE`. */
const REMOVING = new Set([MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_DONTNEED_LOCKED]);

/** Throws `EDEADLK` when the call would wait for an event only this thread could read (`_event_readers.ts`). */
function refuseDeadlock(kind: EventKind, start: bigint, len: bigint, operation: string): void {
  const why = wouldDeadlock(kind, start, start + len);
  if (why === undefined) return;
  throw new UffdError({
    errno: ERRNO.EDEADLK,
    operation,
    args: { start, len },
    detail: why,
    hint: "read the events on another thread (a FaultHandler's Worker, or share() the userfaultfd with a Worker " +
      "that reads them), make this call from another thread, or close the userfaultfd first",
    beforeSyscall: true,
  });
}

/**
 * A mapping: its address, length and bytes, with the memory operations the
 * library needs (`madvise`, `mprotect`, populate, zap, `munmap`).
 *
 * @example
 * ```ts
 * import { MADV_DONTNEED, Region } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize, { populate: true });
 * mem.bytes.fill(7);
 * mem.advise(MADV_DONTNEED); // private anonymous memory reads back as zeros
 * console.log(mem.bytes[0]); // 0
 * ```
 */
export class Region implements Range, Disposable {
  /** The address of the first byte. */
  readonly address: bigint;
  /** Length in bytes. */
  readonly length: number;
  /** What backs it. */
  readonly kind: RegionKind;
  /** The size of the pages backing it: the base page size, or the huge page size for hugetlb. */
  readonly pageSize: number;
  /** The memfd behind a `memfd` region (closed on unmap), otherwise `undefined`. */
  readonly fd: number | undefined;
  /** `true` when the library mapped it and `unmap()` releases it. */
  readonly owned: boolean;

  #buffer: ArrayBuffer | undefined;
  #source: ExternalMemory | undefined;
  #mapped = true;

  private constructor(
    address: bigint,
    length: number,
    kind: RegionKind,
    pageSize: number,
    fd: number | undefined,
    source: ExternalMemory | undefined,
  ) {
    this.address = address;
    this.length = length;
    this.kind = kind;
    this.pageSize = pageSize;
    this.fd = fd;
    this.owned = source === undefined;
    this.#source = source;
    const start = pageFloor(address);
    this.pageSpan = Object.freeze({ address: start, length: pageCeil(address + BigInt(length)) - start });
  }

  /** The base page size of this machine, from `sysconf(_SC_PAGESIZE)`. */
  static get pageSize(): number {
    return libc.PAGE_SIZE;
  }

  /** The default huge page size (`Hugepagesize` in `/proc/meminfo`). */
  static get hugePageSize(): number {
    return hugePageSize();
  }

  /**
   * Maps `length` bytes (a multiple of the page size; of the huge page size with `hugetlb`).
   *
   * @param length Bytes: a multiple of the page size (of the huge page size with `hugetlb`).
   * @param options Shared, memfd, hugetlb, populate, protection, name, THP, alignment.
   * @returns The new region; `unmap()` (or `using`) releases it.
   * @throws {UffdError} `EINVAL` for a length that is not whole pages or an `align` that is not a power of two of at
   *   least the page size; `ENOMEM` from `mmap` (with `hugetlb`: no huge
   *   pages reserved).
   *
   * @example
   * ```ts
   * import { Region } from "@uffd/uffd";
   * using shm = Region.map(8 * Region.pageSize, { memfd: true });
   * console.log(shm.kind, shm.fd !== undefined); // memfd true
   * ```
   */
  static map(length: number, options?: MapOptions): Region {
    const operation = "Region.map";
    const len = toLength(length, operation);
    options = optionsBag(options, operation);
    const pageSize = options.hugetlb ? hugePageSize() : libc.PAGE_SIZE;
    if (len === 0n || len % BigInt(pageSize) !== 0n) {
      throw invalid(operation, `length must be a non-zero multiple of the page size (${pageSize})`, { length });
    }
    const prot = options.prot === undefined ? PROT_READ | PROT_WRITE : cInt(options.prot, operation, "prot");
    const populate = options.populate ? MAP_POPULATE : 0;
    let fd: number | undefined;
    let flags: number;
    let kind: RegionKind;
    if (options.memfd) {
      const name = options.name ?? "uffd";
      const mfd = libc.memfdCreate(name, MFD_CLOEXEC | (options.hugetlb ? MFD_HUGETLB : 0));
      if (mfd < 0) fail(mfd, "memfd_create", { name }, options.hugetlb ? HUGETLB_HINT : undefined);
      const rc = libc.ftruncate(mfd, len);
      if (rc < 0) {
        libc.close(mfd);
        fail(rc, "ftruncate", { fd: mfd, length: len });
      }
      fd = mfd;
      flags = MAP_SHARED | populate;
      kind = options.hugetlb ? "hugetlb" : "memfd";
    } else {
      flags = (options.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_NORESERVE | populate |
        (options.hugetlb ? MAP_HUGETLB : 0);
      kind = options.hugetlb ? "hugetlb" : options.shared ? "shared" : "private";
    }
    if (options.thp !== undefined && typeof options.thp !== "boolean") {
      throw new TypeError(`${operation}: thp must be a boolean, not ${typeof options.thp}`);
    }
    const thp = kind !== "private"
      ? undefined
      : options.thp ?? (thpTraits()?.fillsNeighbours === true ? false : undefined);
    // The advice must come before the pages: populate afterwards, not with MAP_POPULATE.
    if (thp !== undefined) flags &= ~MAP_POPULATE;
    const align = alignment(options.align, pageSize, operation);
    const address = align === 0n
      ? libc.mmap(0n, len, prot, flags, fd ?? -1, 0n)
      : mapAligned(len, align, prot, flags, fd);
    if (address < 0n) {
      if (fd !== undefined) libc.close(fd);
      fail(address, "mmap", { length: len, prot, flags }, options.hugetlb ? HUGETLB_HINT : undefined);
    }
    if (thp !== undefined) {
      libc.madvise(address, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
      if (populate !== 0 && libc.madvise(address, len, MADV_POPULATE_WRITE) < 0) {
        // Before Linux 5.14: what MAP_POPULATE does on private memory, a write fault per page.
        const bytes = new Uint8Array(libc.bufferAt(address, Number(len)));
        for (let i = 0; i < bytes.length; i += libc.PAGE_SIZE) bytes[i] = 0;
      }
    }
    return new Region(address, Number(len), kind, pageSize, fd, undefined);
  }

  /**
   * Wraps memory owned by someone else: an `ArrayBuffer` (or `SharedArrayBuffer`),
   * a typed array or `DataView` (just the bytes it views), or a
   * `WebAssembly.Memory`. The region keeps the owner alive and never unmaps it.
   * When the memory does not start or end on a page boundary, kernel operations
   * act on the whole pages that cover it (`pageSpan`).
   *
   * @param memory An `ArrayBuffer`, `SharedArrayBuffer`, typed array, `DataView` or `WebAssembly.Memory`.
   * @returns A region over its bytes that never unmaps them.
   * @throws {TypeError} For anything else.
   * @throws {UffdError} `EINVAL` when the memory is empty or detached.
   *
   * @example
   * ```ts
   * import { Region } from "@uffd/uffd";
   * const memory = new WebAssembly.Memory({ initial: 1 });
   * const region = Region.of(memory);
   * console.log(region.length, region.kind); // 65536 external
   * ```
   */
  static of(memory: ExternalMemory): Region {
    const buffer = ArrayBuffer.isView(memory) ? memory.buffer : memory;
    if (buffer instanceof ArrayBuffer && buffer.detached) {
      throw invalid("Region.of", "the memory is empty or detached", { length: 0 });
    }
    if (
      !(memory instanceof WebAssembly.Memory) && !ArrayBuffer.isView(memory) && !(memory instanceof ArrayBuffer) &&
      !(memory instanceof SharedArrayBuffer)
    ) {
      throw new TypeError("Region.of: expected an ArrayBuffer, a typed array, a DataView or a WebAssembly.Memory");
    }
    const { address, length } = spanOf(memory);
    if (length === 0 || address === 0n) throw invalid("Region.of", "the memory is empty or detached", { length });
    return new Region(address, length, "external", libc.PAGE_SIZE, undefined, memory);
  }

  /** `false` once `unmap()` ran. */
  get mapped(): boolean {
    return this.#mapped;
  }

  /**
   * The smallest page-aligned range covering the region (the region itself when it is
   * aligned), with a bigint length. Computed once: kernel operations on a region read it
   * on every call.
   */
  readonly pageSpan: { readonly address: bigint; readonly length: bigint };

  /** Number of pages in `pageSpan`. */
  get pageCount(): number {
    return Number(this.pageSpan.length) / libc.PAGE_SIZE;
  }

  /** The region's bytes. Throws once the region is unmapped. */
  get bytes(): Uint8Array {
    this.#check("Region.bytes");
    const source = this.#source;
    if (source === undefined) {
      this.#buffer ??= libc.bufferAt(this.address, this.length);
      return new Uint8Array(this.#buffer);
    }
    if (source instanceof WebAssembly.Memory) {
      const offset = Number(this.address - libc.addressOf(source.buffer));
      return new Uint8Array(source.buffer, offset, this.length);
    }
    if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    return new Uint8Array(source);
  }

  /**
   * The bytes of base page `index` of `pageSpan` that belong to the region.
   *
   * @example
   * ```ts
   * import { Region } from "@uffd/uffd";
   * using mem = Region.map(2 * Region.pageSize);
   * mem.page(1).fill(1);
   * console.log(mem.bytes[Region.pageSize]); // 1
   * ```
   */
  page(index: number): Uint8Array {
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) {
      throw new RangeError(`page index ${index} is outside [0, ${this.pageCount})`);
    }
    const spanStart = this.pageSpan.address;
    const pageStart = spanStart + BigInt(index * libc.PAGE_SIZE);
    const from = Math.max(0, Number(pageStart - this.address));
    const to = Math.min(this.length, from + libc.PAGE_SIZE - (from === 0 ? Number(this.address - pageStart) : 0));
    return this.bytes.subarray(from, to);
  }

  /** The address of base page `index` of `pageSpan` (`pageCount` gives the end address). */
  pageAddress(index: number): bigint {
    if (!Number.isInteger(index) || index < 0 || index > this.pageCount) {
      throw new RangeError(`page index ${index} is outside [0, ${this.pageCount}]`);
    }
    return this.pageSpan.address + BigInt(index) * libc.PAGE_SIZE_N;
  }

  /** A sub-range of whole base pages: `count` pages from page `first`. */
  pages(first: number, count = 1): Range {
    if (
      !Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 1 || first + count > this.pageCount
    ) {
      throw new RangeError(`pages ${first}..${first + count} are outside [0, ${this.pageCount})`);
    }
    return { address: this.pageAddress(first), length: count * libc.PAGE_SIZE };
  }

  /**
   * `madvise(advice)` on the region, or on a page-aligned range inside it. An
   * advice that drops pages (`MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`) over
   * memory registered on a userfaultfd with `EVENT_REMOVE` whose events this very
   * thread reads is refused with `EDEADLK`: the kernel would make the call wait for
   * the event to be read, by the thread that is waiting.
   */
  advise(advice: number, range: Range = this.pageSpan): void {
    cInt(advice, "madvise", "advice");
    const { start, len } = this.#inside(range, "madvise");
    if (REMOVING.has(advice)) refuseDeadlock("remove", start, len, "madvise");
    const rc = libc.madvise(start, len, advice);
    if (rc < 0) fail(rc, "madvise", { start, len, advice });
  }

  /** `mprotect(prot)` on the region, or on a page-aligned range inside it. */
  protect(prot: number, range: Range = this.pageSpan): void {
    cInt(prot, "mprotect", "prot");
    const { start, len } = this.#inside(range, "mprotect");
    const rc = libc.mprotect(start, len, prot);
    if (rc < 0) fail(rc, "mprotect", { start, len, prot });
  }

  /**
   * Faults pages in without touching their contents: `MADV_POPULATE_READ`, or
   * `MADV_POPULATE_WRITE` with `write`.
   *
   * What a read population puts in untouched private anonymous memory depends on the
   * kernel: usually the shared zero page (no memory used), but a kernel without a
   * shared zero page for read faults (some builds; s390's `mm_forbids_zeropage`)
   * allocates a zero-filled page of its own for each — the region then costs its
   * full size, and its pages look written to anything that asks whether a page holds
   * data. `kernelProfile().zeroPage.populateRead` says which (`"zero-page"` or
   * `"allocates"`); `UFFDIO_ZEROPAGE` (`Userfaultfd.zeropage`) may still map the zero
   * page there (`kernelProfile().zeroPage.uffdZeropage`).
   *
   * @example
   * ```ts
   * import { kernelProfile, readPagemap, Region } from "@uffd/uffd";
   * using mem = Region.map(2 * Region.pageSize);
   * mem.populate();
   * const [page] = readPagemap(mem);
   * console.log(page.present, page.exclusive === (kernelProfile().zeroPage.populateRead === "allocates")); // true true
   * ```
   */
  populate(options?: { write?: boolean; range?: Range }): void {
    options = optionsBag(options, "Region.populate");
    const advice = options.write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
    const { start, len } = this.#inside(options.range ?? this.pageSpan, "madvise");
    const rc = libc.madvise(start, len, advice);
    if (rc < 0) fail(rc, options.write ? "MADV_POPULATE_WRITE" : "MADV_POPULATE_READ", { start, len });
  }

  /**
   * Drops pages (`MADV_DONTNEED`): private anonymous memory reads back as zeros
   * afterwards. Refused with `EDEADLK` where it would wait for this thread itself
   * (see {@linkcode advise}).
   */
  zap(range: Range = this.pageSpan): void {
    this.advise(MADV_DONTNEED, range);
  }

  /**
   * Moves pages of this region to `destination` with `mremap(MREMAP_MAYMOVE |
   * MREMAP_FIXED)`, replacing whatever was mapped there; the source pages become a
   * hole. Returns the new address.
   *
   * With `EVENT_REMAP` the kernel queues a remap event and, for the old range, an
   * unmap one (`EVENT_UNMAP`), and this call waits until they are read: a reader that
   * stops after the remap leaves it blocked. Over memory registered on a userfaultfd
   * whose events this thread reads, it is refused with `EDEADLK`.
   */
  movePages(range: Range, destination: bigint): bigint {
    const { start, len } = this.#inside(range, "mremap");
    const to = pageRange({ address: destination, length: len }, "mremap").start;
    refuseDeadlock("remap", start, len, "mremap");
    refuseDeadlock("unmap", start, len, "mremap");
    refuseDeadlock("unmap", to, len, "mremap");
    const moved = libc.mremap(start, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (moved < 0n) fail(moved, "mremap", { start, len, destination: to });
    return moved;
  }

  /**
   * Maps the same `memfd` a second time (a shared alias), for example to fill the
   * page cache behind a range registered for minor faults.
   */
  alias(): Region {
    this.#check("Region.alias");
    if (this.fd === undefined) throw invalid("Region.alias", "only a memfd region can be aliased");
    const len = BigInt(this.length);
    const address = libc.mmap(0n, len, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, 0n);
    if (address < 0n) fail(address, "mmap", { length: len, fd: this.fd });
    return new Region(address, this.length, this.kind, this.pageSize, undefined, undefined);
  }

  /**
   * Releases the region: owned memory is unmapped (its `bytes` are detached first, so
   * stale views read as empty instead of faulting) and its memfd closed. Memory
   * wrapped by `Region.of` is left alone. Calling it twice is harmless. Refused with
   * `EDEADLK` while the region is registered on a userfaultfd with `EVENT_UNMAP` whose
   * events this thread reads (close that userfaultfd first: `using` declarations are
   * disposed in reverse order, so declare the region before the userfaultfd).
   */
  unmap(): void {
    if (!this.#mapped) return;
    if (this.owned) refuseDeadlock("unmap", this.address, BigInt(this.length), "munmap");
    this.#mapped = false;
    if (!this.owned) {
      this.#source = undefined;
      return;
    }
    this.#buffer?.transfer(0);
    this.#buffer = undefined;
    const len = BigInt(this.length);
    const rc = libc.munmap(this.address, len);
    if (this.fd !== undefined) libc.close(this.fd);
    if (rc < 0) fail(rc, "munmap", { start: this.address, len });
  }

  /** Same as {@linkcode unmap}. */
  [Symbol.dispose](): void {
    this.unmap();
  }

  #check(operation: string): void {
    if (!this.#mapped) throw invalid(operation, "the region has been unmapped", { address: this.address });
  }

  #inside(range: Range, operation: string): { start: bigint; len: bigint } {
    this.#check(operation);
    const r = pageRange(range, operation);
    const span = this.pageSpan;
    const spanEnd = span.address + span.length;
    if (r.start < span.address || r.start + r.len > spanEnd) {
      throw invalid(operation, "the range is not inside the region", {
        start: r.start,
        len: r.len,
        region: span.address,
        regionLength: span.length,
      });
    }
    return r;
  }
}

/**
 * Where the bytes of memory someone else owns are: the address of the first byte
 * (`0n` when there is none) and the length — of a `WebAssembly.Memory`'s current
 * buffer, of just the bytes a view views, or of a whole buffer. The one place that
 * asks (`Region.of` and `locateTarget` use it).
 */
export function spanOf(memory: ExternalMemory): { address: bigint; length: number } {
  if (memory instanceof WebAssembly.Memory) {
    const buffer = memory.buffer;
    return { address: libc.addressOf(buffer), length: buffer.byteLength };
  }
  return { address: memory.byteLength === 0 ? 0n : libc.addressOf(memory), length: memory.byteLength };
}

const HUGETLB_HINT = "huge pages must be reserved first: echo N > /proc/sys/vm/nr_hugepages (as root)";
