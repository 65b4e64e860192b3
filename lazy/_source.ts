/**
 * Where a `LazyRegion` gets its pages, as seen from inside the fault handler's
 * Worker: {@linkcode openPageSource} turns a {@linkcode LazySourceSpec} (what the
 * main side sends) into a {@linkcode PageSource} that reads region page `i` into a
 * buffer the caller owns. Internal; the sources and how each is read:
 * `docs/lazy-restore.md`, "Inside the Worker".
 *
 * @example A file source, read from this thread
 * ```ts
 * import { openPageSource } from "./_source.ts";
 * const path = Deno.makeTempFileSync();
 * Deno.writeFileSync(path, new Uint8Array(5000).fill(7));
 * const source = await openPageSource({ kind: "file", path }, 4096, 3);
 * const page = new Uint8Array(4096);
 * source.read(1, 1, page);
 * console.log(page[0], page[903], page[904], source.zeroRun(2, 1)); // 7 7 0 1
 * source.close();
 * Deno.removeSync(path);
 * ```
 *
 * @module
 */

import { CheckpointReader } from "../checkpoint/reader.ts";
import { crc32cWords } from "../checkpoint/crc32c.ts";
import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";

/** A page source as the Worker receives it (structured-cloneable). */
export type LazySourceSpec =
  | { kind: "checkpoint"; paths: string[]; verify?: boolean }
  | { kind: "file"; path: string }
  | { kind: "bytes"; buffer: SharedArrayBuffer; offset: number; length: number }
  | { kind: "memory"; address: number; length: number }
  | { kind: "module"; url: string; export: string; options: unknown };

/** What a page-source module's factory learns about the region. */
export interface LazySourceInfo {
  /** The page size. */
  readonly pageSize: number;
  /** Number of pages of the region. */
  readonly pages: number;
  /** Length of the region in bytes. */
  readonly length: number;
  /**
   * The handler's userfaultfd descriptor, readable while a fault waits: a streaming
   * source that waits for data in `available()` may poll it too, and return at once.
   * Only for polling: never read, write or close it.
   */
  readonly faultFd: number;
}

/**
 * Fills `page` (one page, zeroed before the call) with the bytes of region page
 * `index`, or throws (or rejects) when it cannot: that page is then poisoned.
 */
export type PageFiller = (index: number, page: Uint8Array) => void | Promise<void>;

/**
 * A page source a module builds, beyond a bare {@linkcode PageFiller}: `close()` is
 * called when the handler stops. A source whose pages arrive over time (a stream)
 * may also say what it has, which lets the prefetcher work in runs and wait for it:
 *
 * - `zeroRun(first, max)`: how many pages from `first` (at most `max`) are zero
 *   without reading (mapped with `UFFDIO_ZEROPAGE`); 0 when `first` is not.
 * - `dataRun(first, max)`: how many pages from `first` (at least 1, at most `max`)
 *   one `read` produces; with it, `read(first, into, count)` fills `count` pages of
 *   `into` (not zeroed first).
 * - `available(first, max)`: for the prefetcher only — how many pages from `first`
 *   can be produced now without waiting; 0 when none yet: the prefetcher serves
 *   waiting faults and asks again. It may wait a little for data itself (polling
 *   `info.faultFd` to return as soon as a fault waits).
 */
export interface ModulePageSource {
  /** Fills pages; see {@linkcode PageFiller} (and `dataRun` above for the third argument). */
  read(index: number, page: Uint8Array, count?: number): void | Promise<void>;
  /** Releases what the source holds. */
  close?(): void;
  /** Pages from `first` known to be zero without reading (0: `first` is not). */
  zeroRun?(first: number, max: number): number;
  /** Pages from `first` that one `read` produces (1 … `max`). */
  dataRun?(first: number, max: number): number;
  /** For the prefetcher: pages from `first` that can be read without waiting (0: not yet). */
  available?(first: number, max: number): number;
}

/**
 * What a page-source module exports: a factory called once in the handler's
 * Worker, returning the function that fills pages (or a {@linkcode ModulePageSource}).
 */
export type LazySourceFactory<Options = unknown> = (
  options: Options,
  info: LazySourceInfo,
) => PageFiller | ModulePageSource | Promise<PageFiller | ModulePageSource>;

/** A source opened in the Worker. Page numbers are the region's. */
export interface PageSource {
  /** Bytes the source has (pages past them are zero). */
  readonly length: number;
  /** The number of pages from `first` (at most `max`) known to be zero without reading; 0 if `first` is not. */
  zeroRun(first: number, max: number): number;
  /** The number of pages from `first` (at least 1, at most `max`) that one `read` fetches in one go. */
  dataRun(first: number, max: number): number;
  /** The address of page `page`'s bytes when the source is memory and holds the whole page; otherwise -1. */
  address(page: number): number;
  /** Reads `count` pages (at most `dataRun(first, …)`) into the first `count` pages of `into`. */
  read(first: number, count: number, into: Uint8Array): void | Promise<void>;
  /** For the prefetcher: pages from `first` (at most `max`) readable without waiting; 0: not yet. Absent: all. */
  available?(first: number, max: number): number;
  /** Releases files and the like. */
  close(): void;
}

/**
 * Opens `spec` for a region of `pages` pages of `pageSize` bytes; `faultFd` is the
 * handler's userfaultfd (a module source may poll it while it waits for data).
 */
export async function openPageSource(
  spec: LazySourceSpec,
  pageSize: number,
  pages: number,
  faultFd = -1,
): Promise<PageSource> {
  switch (spec.kind) {
    case "checkpoint":
      return new CheckpointSource(spec.paths, spec.verify !== false, pageSize, pages);
    case "file":
      return new FileSource(spec.path, pageSize, pages);
    case "bytes":
      return new MemorySource(Number(libc.addressOf(spec.buffer)) + spec.offset, spec.length, pageSize, pages);
    case "memory":
      return new MemorySource(spec.address, spec.length, pageSize, pages);
    case "module":
      return await moduleSource(spec, pageSize, pages, faultFd);
    default:
      throw new TypeError(`unknown page source kind ${(spec as { kind: unknown }).kind}`);
  }
}

function sourceError(page: number, operation: string, detail: string, errno = ERRNO.EIO!, cause?: unknown): UffdError {
  return new UffdError({ errno, operation, detail: `page ${page}: ${detail}`, cause });
}

/** Pages past `length` bytes are zero; the page holding the last byte is data. */
function tailZeroRun(first: number, max: number, length: number, pageSize: number): number {
  const dataPages = Math.ceil(length / pageSize);
  return first >= dataPages ? max : 0;
}

function tailDataRun(first: number, max: number, length: number, pageSize: number): number {
  return Math.max(1, Math.min(max, Math.ceil(length / pageSize) - first));
}

/** `pread` until `length` bytes are in `into` or the file ends; zero-fills the rest. */
function preadFully(fd: number, into: Uint8Array, length: number, offset: number, page: number, path: string): void {
  let done = 0;
  while (done < length) {
    const view = done === 0 ? into : into.subarray(done);
    const got = libc.pread(fd, view, length - done, BigInt(offset + done));
    if (got < 0) {
      throw failure("pread", got, { path, offset: offset + done }, undefined, `page ${page}`);
    }
    if (got === 0) {
      into.fill(0, done, length);
      return;
    }
    done += got;
  }
}

/** A plain file: page `i` is the file's bytes `[i·P, (i+1)·P)`. */
class FileSource implements PageSource {
  readonly length: number;
  readonly #fd: number;
  readonly #path: string;
  readonly #page: number;

  constructor(path: string, pageSize: number, _pages: number) {
    this.#path = path;
    this.#page = pageSize;
    this.#fd = libc.open(path, O_RDONLY | O_CLOEXEC);
    if (this.#fd < 0) throw failure("open", this.#fd, { path });
    const size = libc.fileSize(this.#fd);
    this.length = size >= 0 ? size : Number.MAX_SAFE_INTEGER; // unknown: short reads zero-fill
  }

  zeroRun(first: number, max: number): number {
    return tailZeroRun(first, max, this.length, this.#page);
  }

  dataRun(first: number, max: number): number {
    return tailDataRun(first, max, this.length, this.#page);
  }

  address(): number {
    return -1;
  }

  read(first: number, count: number, into: Uint8Array): void {
    preadFully(this.#fd, into, count * this.#page, first * this.#page, first, this.#path);
  }

  close(): void {
    libc.close(this.#fd);
  }
}

/** Bytes in this process (a shared `Uint8Array`, a `Region`): copied from where they are. */
class MemorySource implements PageSource {
  readonly length: number;
  readonly #base: number;
  readonly #page: number;
  readonly #bytes: Uint8Array;

  constructor(address: number, length: number, pageSize: number, _pages: number) {
    this.#base = address;
    this.length = length;
    this.#page = pageSize;
    this.#bytes = length === 0 ? new Uint8Array(0) : new Uint8Array(libc.bufferAt(BigInt(address), length));
  }

  zeroRun(first: number, max: number): number {
    return tailZeroRun(first, max, this.length, this.#page);
  }

  dataRun(first: number, max: number): number {
    return tailDataRun(first, max, this.length, this.#page);
  }

  address(page: number): number {
    return (page + 1) * this.#page <= this.length ? this.#base + page * this.#page : -1;
  }

  read(first: number, count: number, into: Uint8Array): void {
    const from = first * this.#page;
    const to = Math.min(this.length, from + count * this.#page);
    into.set(this.#bytes.subarray(from, to));
    into.fill(0, to - from, count * this.#page);
  }

  close(): void {}
}

/** One file of a chain as the source reads it: its own descriptor, for `pread` at slot offsets. */
interface ChainFile {
  fd: number;
  path: string;
}

/**
 * A checkpoint chain. The newest copy of every image page is indexed once (file,
 * slot offset, CRC); region page `i` is image bytes `[i·P, (i+1)·P)`, which is slot
 * `i` when the image starts on a page boundary (`head` 0) and otherwise the end of
 * slot `i` followed by the start of slot `i + 1`.
 */
class CheckpointSource implements PageSource {
  readonly length: number;
  readonly #page: number;
  readonly #verify: boolean;
  readonly #head: number;
  readonly #slots: number;
  /** Per image page: the file holding its newest copy, or -1 (zero). */
  readonly #file: Int32Array;
  readonly #offset: Float64Array;
  readonly #crc: Int32Array;
  readonly #files: ChainFile[] = [];
  /** Word views of the buffers the caller reads into (a handful, each reused), for the checksums. */
  readonly #words = new Map<ArrayBufferLike, Uint32Array>();
  /** Two slots, for images that do not start on a page boundary. */
  #pair: Uint8Array | undefined;

  constructor(paths: string[], verify: boolean, pageSize: number, _pages: number) {
    const reader = CheckpointReader.open(paths);
    try {
      if (reader.pageSize !== pageSize) {
        throw new UffdError({
          errno: ERRNO.EINVAL!,
          operation: "LazyRegion.open",
          detail: `the checkpoint's page size is ${reader.pageSize}; this machine's is ${pageSize}`,
          beforeSyscall: true,
        });
      }
      this.length = reader.imageLength;
      this.#page = pageSize;
      this.#verify = verify;
      this.#head = reader.head;
      this.#slots = reader.pageCount;
      this.#file = new Int32Array(this.#slots).fill(-1);
      this.#offset = new Float64Array(this.#slots);
      this.#crc = new Int32Array(this.#slots);
      for (let i = 0; i < this.#slots; i++) {
        const s = reader.source(i);
        if (s === undefined) continue;
        this.#file[i] = s.file;
        this.#offset[i] = s.offset;
        this.#crc[i] = s.crc;
      }
      for (const f of reader.files) {
        const fd = libc.open(f.path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw failure("open", fd, { path: f.path });
        this.#files.push({ fd, path: f.path });
      }
    } catch (e) {
      this.close();
      throw e;
    } finally {
      reader.close();
    }
  }

  /** Whether image slot `slot` is zero (stored as zero, or beyond the image). */
  #zeroSlot(slot: number): boolean {
    return slot >= this.#slots || this.#file[slot]! < 0;
  }

  zeroRun(first: number, max: number): number {
    let n = 0;
    if (this.#head === 0) {
      while (n < max && this.#zeroSlot(first + n)) n++;
    } else {
      while (n < max && this.#zeroSlot(first + n) && this.#zeroSlot(first + n + 1)) n++;
    }
    return n;
  }

  dataRun(first: number, max: number): number {
    if (this.#head !== 0) return 1;
    const file = this.#file[first]!;
    const start = this.#offset[first]!;
    let n = 1;
    while (
      n < max && first + n < this.#slots && this.#file[first + n] === file &&
      this.#offset[first + n] === start + n * this.#page
    ) n++;
    return n;
  }

  address(): number {
    return -1;
  }

  read(first: number, count: number, into: Uint8Array): void {
    const P = this.#page;
    if (this.#head === 0) {
      const file = this.#file[first]!;
      if (file < 0) {
        into.fill(0, 0, count * P);
        return;
      }
      const f = this.#files[file]!;
      preadFully(f.fd, into, count * P, this.#offset[first]!, first, f.path);
      if (this.#verify) {
        for (let k = 0; k < count; k++) this.#check(first + k, into, k * P);
      }
      return;
    }
    // The image starts `head` bytes into its first page: region page i spans two slots.
    const pair = this.#pair ??= new Uint8Array(2 * P);
    const head = this.#head;
    for (let k = 0; k < count; k++) {
      const page = first + k;
      this.#readSlot(page, pair, 0);
      this.#readSlot(page + 1, pair, P);
      into.set(pair.subarray(head, head + P), k * P);
    }
  }

  /** Reads image slot `slot` (zeros when stored as zero or beyond the image) into `into` at `at`. */
  #readSlot(slot: number, into: Uint8Array, at: number): void {
    const P = this.#page;
    if (this.#zeroSlot(slot)) {
      into.fill(0, at, at + P);
      return;
    }
    const f = this.#files[this.#file[slot]!]!;
    preadFully(f.fd, into.subarray(at, at + P), P, this.#offset[slot]!, slot, f.path);
    if (this.#verify) this.#check(slot, into, at);
  }

  /** Checks the slot of image page `slot`, at byte `at` of `buffer`, against its CRC-32C. */
  #check(slot: number, buffer: Uint8Array, at: number): void {
    let words = this.#words.get(buffer.buffer);
    if (words === undefined) {
      words = new Uint32Array(buffer.buffer, 0, Math.floor(buffer.buffer.byteLength / 4));
      this.#words.set(buffer.buffer, words);
    }
    const crc = crc32cWords(words, (buffer.byteOffset + at) / 4, this.#page / 4) | 0;
    if (crc !== this.#crc[slot]) {
      const f = this.#files[this.#file[slot]!]!;
      throw sourceError(
        slot,
        "checkpoint",
        `checksum mismatch in ${f.path} (stored 0x${(this.#crc[slot]! >>> 0).toString(16).padStart(8, "0")}, ` +
          `0x${(crc >>> 0).toString(16).padStart(8, "0")} read)`,
      );
    }
  }

  close(): void {
    for (const f of this.#files) libc.close(f.fd);
    this.#files.length = 0;
  }
}

/** A module's page function, or its streaming source. */
async function moduleSource(
  spec: { url: string; export: string; options: unknown },
  pageSize: number,
  pages: number,
  faultFd: number,
): Promise<PageSource> {
  const exports: Record<string, unknown> = await import(spec.url);
  const factory = exports[spec.export];
  if (typeof factory !== "function") {
    throw new TypeError(`page source module ${spec.url} has no function export ${JSON.stringify(spec.export)}`);
  }
  const info: LazySourceInfo = { pageSize, pages, length: pages * pageSize, faultFd };
  const made = await (factory as LazySourceFactory)(spec.options, info);
  const fill: PageFiller | undefined = typeof made === "function" ? made : made?.read?.bind(made);
  if (typeof fill !== "function") {
    throw new TypeError(`the factory ${spec.export} of ${spec.url} returned neither a function nor { read }`);
  }
  const object = typeof made === "function" ? undefined : made;
  const done = object?.close?.bind(object);
  const length = pages * pageSize;
  if (object?.dataRun !== undefined || object?.zeroRun !== undefined || object?.available !== undefined) {
    // A streaming source: runs, zeros it knows of, and "not yet" for the prefetcher.
    const zeroRun = object.zeroRun?.bind(object);
    const dataRun = object.dataRun?.bind(object);
    const available = object.available?.bind(object);
    return {
      length,
      zeroRun: (first, max) => zeroRun?.(first, max) ?? 0,
      dataRun: (first, max) => Math.max(1, Math.min(max, dataRun?.(first, max) ?? 1)),
      address: () => -1,
      read(first: number, count: number, into: Uint8Array): void | Promise<void> {
        if (dataRun === undefined) into.fill(0, 0, pageSize);
        return object.read(first, into, dataRun === undefined ? 1 : count);
      },
      available,
      close(): void {
        done?.();
      },
    };
  }
  return {
    length,
    zeroRun: () => 0,
    dataRun: () => 1,
    address: () => -1,
    read(first: number, _count: number, into: Uint8Array): void | Promise<void> {
      into.fill(0, 0, pageSize);
      return fill(first, into.length === pageSize ? into : into.subarray(0, pageSize));
    },
    close(): void {
      done?.();
    },
  };
}
