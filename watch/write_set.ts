/**
 * The answer of a write watch, {@linkcode WriteSet}: which pages of the watched
 * memory were written, as coalesced page runs, as page indices and as byte ranges
 * of the watched buffer, and which could no longer be watched
 * ({@linkcode WriteSet.lost}). Page `i` is the `i`-th page of the smallest
 * page-aligned span covering the memory: `docs/write-watch.md`, "The answer".
 *
 * @example
 * ```ts
 * import { Region, WriteWatch } from "@uffd/uffd";
 * using mem = Region.map(8 * Region.pageSize);
 * using watch = WriteWatch.start(mem);
 * mem.bytes[1 * Region.pageSize] = 1;
 * mem.bytes[2 * Region.pageSize] = 1;
 * const set = watch.collect();
 * console.log([...set], set.ranges()); // [1, 2] [{ firstPage: 1, pages: 2 }]
 * ```
 *
 * @module
 */

/** A run of pages: `pages` pages from `firstPage`. */
export interface PageSpan {
  /** Index of the first page. */
  readonly firstPage: number;
  /** Number of pages. */
  readonly pages: number;
}

/** A run of bytes of the watched buffer. */
export interface ByteSpan {
  /** Offset from the watched memory's first byte. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
}

/**
 * A growable list of page runs `[first, count]` in one `Uint32Array`, that merges a
 * run with the previous one when they touch. Write watch backends append to it
 * from their scan loops without allocating per run.
 *
 * @example
 * ```ts
 * import { RunList } from "./write_set.ts";
 * const runs = new RunList();
 * runs.add(3, 1);
 * runs.add(4, 2);
 * runs.add(9, 1);
 * console.log(runs.length, runs.pages); // 2 4
 * ```
 */
export class RunList {
  #runs = new Uint32Array(512);
  #length = 0;
  #pages = 0;
  #sorted = true;

  /** Number of runs. */
  get length(): number {
    return this.#length;
  }

  /** Number of pages in all runs. */
  get pages(): number {
    return this.#pages;
  }

  /** Appends `count` pages from `first`; runs may come in any order (they are sorted and merged on `freeze`). */
  add(first: number, count: number): void {
    if (count <= 0) return;
    const n = this.#length;
    const runs = this.#runs;
    if (n > 0) {
      const lastFirst = runs[2 * n - 2]!;
      const lastEnd = lastFirst + runs[2 * n - 1]!;
      if (first === lastEnd) {
        runs[2 * n - 1] = runs[2 * n - 1]! + count;
        this.#pages += count;
        return;
      }
      if (first < lastEnd) this.#sorted = false;
    }
    if (2 * n + 2 > runs.length) {
      const bigger = new Uint32Array(runs.length * 2);
      bigger.set(runs);
      this.#runs = bigger;
    }
    this.#runs[2 * n] = first;
    this.#runs[2 * n + 1] = count;
    this.#length = n + 1;
    this.#pages += count;
  }

  /** Appends every run of another list. */
  addAll(other: RunList): void {
    const runs = other.#runs;
    for (let i = 0; i < other.#length; i++) this.add(runs[2 * i]!, runs[2 * i + 1]!);
  }

  /** Empties the list, keeping its storage. */
  clear(): void {
    this.#length = 0;
    this.#pages = 0;
    this.#sorted = true;
  }

  /** A copy of the runs as `[first, count, …]`, sorted, with overlapping and touching runs merged. */
  freeze(): Uint32Array {
    const n = this.#length;
    if (this.#sorted) return this.#runs.slice(0, 2 * n);
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => this.#runs[2 * a]! - this.#runs[2 * b]!);
    const out = new Uint32Array(2 * n);
    let m = 0;
    for (const i of order) {
      const first = this.#runs[2 * i]!;
      const end = first + this.#runs[2 * i + 1]!;
      if (m > 0 && first <= out[2 * m - 2]! + out[2 * m - 1]!) {
        const lastFirst = out[2 * m - 2]!;
        out[2 * m - 1] = Math.max(out[2 * m - 2]! + out[2 * m - 1]!, end) - lastFirst;
      } else {
        out[2 * m] = first;
        out[2 * m + 1] = end - first;
        m++;
      }
    }
    return out.slice(0, 2 * m);
  }
}

/** What a {@linkcode WriteSet} is built from. */
export interface WriteSetInit {
  /** Written runs as `[first, count, …]`, sorted and coalesced. */
  runs: Uint32Array;
  /** Lost runs, the same way. */
  lost?: Uint32Array;
  /** Pages in the watched span. */
  pageCount: number;
  /** The page size. */
  pageSize: number;
  /** Offset of the watched memory's first byte in page 0. */
  head: number;
  /** Length of the watched memory in bytes. */
  byteLength: number;
  /** The memory was found at a new address and is watched there from now on (every page reported written). */
  relocated?: boolean;
  /** The watched memory grew since the last reset, from this many pages. */
  grewFrom?: number;
}

/**
 * The pages written since the last reset, answered by `WriteWatch.written()` or
 * `collect()`. Iterating yields page indices in ascending order.
 *
 * @example
 * ```ts
 * import { WriteSet } from "@uffd/uffd";
 * const set = new WriteSet({ runs: new Uint32Array([2, 3]), pageCount: 8, pageSize: 4096, head: 0, byteLength: 32768 });
 * console.log(set.count, [...set], set.has(3), set.byteRanges()); // 3 [2, 3, 4] true [{ offset: 8192, length: 12288 }]
 * ```
 */
export class WriteSet implements Iterable<number> {
  /** The written pages as coalesced runs `[first, count, first, count, …]`, ascending. */
  readonly runs: Uint32Array;
  /** Number of written pages. */
  readonly count: number;
  /** Pages in the watched span when the answer was taken. */
  readonly pageCount: number;
  /** The page size. */
  readonly pageSize: number;
  /** Offset of the watched memory's first byte inside page 0 (0 when it is page-aligned). */
  readonly head: number;
  /** Length of the watched memory in bytes. */
  readonly byteLength: number;
  /**
   * Pages that can no longer be watched, as `[first, count, …]`: unmapped, moved
   * away by `mremap`, or mapped over by something else. They are not in the
   * written set; their contents are unknown. Empty in the normal case.
   */
  readonly lostRuns: Uint32Array;
  /** `true` when the memory moved (a `WebAssembly.Memory` whose buffer was reallocated): every page is reported written. */
  readonly relocated: boolean;
  /** When the memory grew since the last reset: its page count before, otherwise `undefined`. */
  readonly grewFrom: number | undefined;
  #pages: Uint32Array | undefined;

  /** Builds a set from runs (used by the write watch; handy for tests). */
  constructor(init: WriteSetInit) {
    this.runs = init.runs;
    let count = 0;
    for (let i = 1; i < init.runs.length; i += 2) count += init.runs[i]!;
    this.count = count;
    this.pageCount = init.pageCount;
    this.pageSize = init.pageSize;
    this.head = init.head;
    this.byteLength = init.byteLength;
    this.lostRuns = init.lost ?? new Uint32Array(0);
    this.relocated = init.relocated ?? false;
    this.grewFrom = init.grewFrom;
  }

  /** Number of coalesced runs. */
  get rangeCount(): number {
    return this.runs.length / 2;
  }

  /** The written pages as indices, ascending (computed once, then shared: do not modify it). */
  get pages(): Uint32Array {
    if (this.#pages === undefined) {
      const out = new Uint32Array(this.count);
      let k = 0;
      for (let i = 0; i < this.runs.length; i += 2) {
        const first = this.runs[i]!;
        const end = first + this.runs[i + 1]!;
        for (let p = first; p < end; p++) out[k++] = p;
      }
      this.#pages = out;
    }
    return this.#pages;
  }

  /** The written pages as coalesced runs. */
  ranges(): PageSpan[] {
    const out: PageSpan[] = [];
    for (let i = 0; i < this.runs.length; i += 2) out.push({ firstPage: this.runs[i]!, pages: this.runs[i + 1]! });
    return out;
  }

  /** The lost pages as runs (see {@linkcode lostRuns}). */
  get lost(): PageSpan[] {
    const out: PageSpan[] = [];
    for (let i = 0; i < this.lostRuns.length; i += 2) {
      out.push({ firstPage: this.lostRuns[i]!, pages: this.lostRuns[i + 1]! });
    }
    return out;
  }

  /** Whether page `index` was written (binary search over the runs). */
  has(index: number): boolean {
    let lo = 0;
    let hi = this.runs.length / 2 - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const first = this.runs[2 * mid]!;
      if (index < first) hi = mid - 1;
      else if (index >= first + this.runs[2 * mid + 1]!) lo = mid + 1;
      else return true;
    }
    return false;
  }

  /**
   * The written bytes of the watched memory as coalesced byte ranges: each written
   * page clipped to the memory (the partial first and last pages give fewer bytes
   * than a page).
   */
  byteRanges(): ByteSpan[] {
    const out: ByteSpan[] = [];
    for (let i = 0; i < this.runs.length; i += 2) {
      const from = Math.max(0, this.runs[i]! * this.pageSize - this.head);
      const to = Math.min(this.byteLength, (this.runs[i]! + this.runs[i + 1]!) * this.pageSize - this.head);
      if (to > from) out.push({ offset: from, length: to - from });
    }
    return out;
  }

  /** The byte range of the watched memory that page `index` covers (clipped to the memory). */
  pageBytes(index: number): ByteSpan {
    const from = Math.max(0, index * this.pageSize - this.head);
    const to = Math.min(this.byteLength, (index + 1) * this.pageSize - this.head);
    return { offset: from, length: Math.max(0, to - from) };
  }

  /** Page indices in ascending order. */
  *[Symbol.iterator](): Iterator<number> {
    for (let i = 0; i < this.runs.length; i += 2) {
      const end = this.runs[i]! + this.runs[i + 1]!;
      for (let p = this.runs[i]!; p < end; p++) yield p;
    }
  }
}
