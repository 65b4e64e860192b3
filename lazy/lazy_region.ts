/**
 * {@linkcode LazyRegion}: memory whose pages are filled on first touch from a
 * source — a checkpoint chain, a file, bytes, other memory or a function: the lazy
 * restore of CRIU and Firecracker, for Deno memory. A `FaultHandler` Worker reads
 * each page from the source the moment some thread touches it; an optional
 * prefetcher fills the rest while nothing faults. Threads, sources, how pages are
 * placed, what a failing source does, `ready` and closing: `docs/lazy-restore.md`.
 *
 * @example Restore a checkpoint chain on demand
 * ```ts
 * import { Checkpoint, LazyRegion, Region } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * using mem = Region.map(16 * Region.pageSize);
 * using ckpt = Checkpoint.start(mem);
 * mem.bytes[5 * Region.pageSize] = 5;
 * ckpt.write(`${dir}/base`);
 * mem.bytes[9 * Region.pageSize] = 9;
 * ckpt.write(`${dir}/delta-1`);
 * await using lazy = await LazyRegion.open({ checkpoint: ckpt.files });
 * console.log(lazy.bytes[5 * Region.pageSize], lazy.bytes[9 * Region.pageSize]); // 5 9
 * console.log(lazy.stats.faults, lazy.stats.zeroPages); // 2 0
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { CheckpointReader } from "../checkpoint/reader.ts";
import { ERRNO, failure, invalid, UffdError } from "../kernel/errors.ts";
import { FaultHandler, type FaultHandlerOptions } from "../handler/fault_handler.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { PollSet } from "../ffi/_pollset.ts";
import type { HandlerStats } from "../handler/stats.ts";
import {
  LAZY_CTRL,
  LAZY_MESSAGE_BYTES,
  LAZY_STAT,
  type LazyFill,
  type LazyPolicyOptions,
  PAGE_STATE,
} from "./_policy.ts";
import type { LazySourceSpec } from "./_source.ts";
import { MADV_DONTNEED, MADV_REMOVE, O_CLOEXEC, O_RDONLY, POLLIN } from "../ffi/linux.ts";
import { onClose } from "../kernel/_on_close.ts";
import { policies } from "../handler/policies.ts";
import { Region } from "../kernel/region.ts";
import { restoreRoom } from "../kernel/target.ts";
import { type PageRun, pageRuns } from "../handler/tracked_pages.ts";
import type { Feature } from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import { optionsBag, positiveInteger } from "../kernel/_validate.ts";

export type { LazySourceFactory, LazySourceInfo, ModulePageSource, PageFiller } from "./_source.ts";
export type { LazyFill } from "./_policy.ts";

/**
 * Where a {@linkcode LazyRegion} gets its pages (page `i` is the source's bytes
 * `[i·P, (i+1)·P)`; past the source's end, zeros):
 *
 * - `{ checkpoint }`: a checkpoint chain, the base first (paths, or an open
 *   `CheckpointReader`, whose files are used); `verify: false` skips the per-page
 *   CRC-32C check.
 * - `{ file }`: a plain file (a path or a `file:` URL).
 * - a `Uint8Array`: bytes (copied once into shared memory unless already shared).
 * - `{ address, length }`: memory of this process that stays mapped while the lazy
 *   region lives (a `Region`).
 * - `{ module }`: a module (absolute URL) whose factory returns a function filling
 *   pages, run in the handler's Worker; `export` names the factory (default
 *   `"default"`), `options` are passed to it (structured-cloneable). Needs `length`.
 */
export type LazySource =
  | Uint8Array
  | { readonly checkpoint: readonly string[] | CheckpointReader; readonly verify?: boolean }
  | { readonly file: string | URL }
  | { readonly address: bigint; readonly length: number | bigint }
  | { readonly module: string | URL; readonly export?: string; readonly options?: unknown };

/** Options of {@linkcode LazyRegion.open}. */
export interface LazyRegionOptions {
  /**
   * Length of the region in bytes, a multiple of the page size. Default: the
   * source's length rounded up to whole pages. Required for a `module` source.
   */
  length?: number;
  /** `"anonymous"` private memory (default), or a `"memfd"` filled through its page cache with `UFFDIO_CONTINUE`. */
  memory?: "anonymous" | "memfd";
  /**
   * Restore into this memory instead of mapping new memory: a `WebAssembly.Memory`
   * (its current pages; pages added later by `grow()` are ordinary memory), or a
   * private anonymous `Region`. Its current contents are dropped first
   * (`MADV_DONTNEED`), so that every page is missing and filled from the source. It
   * stays the caller's: `close()` leaves it mapped, with the pages restored so far.
   * It must be at least as long as the source (a longer target's extra pages are
   * zeros): a shorter one is refused.
   */
  target?: Region | WebAssembly.Memory;
  /** Anonymous memory: place pages with `UFFDIO_COPY` (`"copy"`, default) or `UFFDIO_MOVE` (`"move"`). */
  fill?: "copy" | "move";
  /** Fill every page in the background while no fault waits (default `false`). */
  prefetch?: boolean;
  /** Pages per prefetch run: one read and one ioctl each, and the longest a fault can wait behind one (default 32). */
  prefetchChunk?: number;
  /** Features to treat as missing even if the kernel has them (`"POISON"`: exercise the fallback). */
  decline?: Iterable<Feature>;
  /** Messages the handler reads per `read()` (default 64). */
  batch?: number;
  /**
   * After serving faults, the handler keeps reading for this many microseconds before
   * it sleeps (`FaultHandlerOptions.spinMicros`, whose default applies: 30 on a
   * machine with more than one CPU, 0 otherwise): a restoring program faults again
   * within microseconds, and catching that fault without a wake-up took random
   * faults from 1.4× to 1.0× the time of a C handler that sleeps (Linux 6.18, 2 cores).
   */
  spinMicros?: number;
  /** How long `open()` waits for the handler to start (default 10 000 ms). */
  startTimeoutMs?: number;
  /** How long `close()` waits for the handler to stop (default 2 000 ms). */
  stopTimeoutMs?: number;
}

/** What a {@linkcode LazyRegion} has done so far (read from shared memory, no round trip). */
export interface LazyStats {
  /** Pages of the region. */
  readonly pages: number;
  /** Pages filled (from the source or as zeros). */
  readonly resident: number;
  /** Pages filled because a thread touched them. */
  readonly faults: number;
  /** Pages filled by the prefetcher. */
  readonly prefetched: number;
  /** Pages mapped as zeros (`UFFDIO_ZEROPAGE`, or zero pages continued from the page cache). */
  readonly zeroPages: number;
  /** Pages poisoned because the source failed. */
  readonly poisoned: number;
  /** Faults on pages filled earlier (dropped by the program and read back as zeros, or duplicates). */
  readonly refaults: number;
  /** Bytes read from the source (copies straight from a memory source are not reads). */
  readonly bytesRead: number;
  /** The fault handler's own statistics (faults read, latency histogram, …). */
  readonly handler: HandlerStats;
}

/** Where a lazy region is in its life. */
export type LazyState = "restoring" | "ready" | "failed" | "closed";

const POLICY_URL = new URL("./_policy.ts", import.meta.url).href;
/** How long the mapping outlives an unclean close, for threads woken by it to finish their access. */
const GRACE_MS = 1000;

interface Prepared {
  spec: LazySourceSpec;
  /** Bytes of the source, or -1 when unknown (a module). */
  length: number;
  kind: string;
}

function prepareSource(source: LazySource, operation: string): Prepared {
  if (source instanceof Uint8Array) {
    // The SharedArrayBuffer itself goes to the Worker: a view of it would be cloned element by element
    // (Deno 2.9.6 takes about 20 s for a 64 MiB view as workerData; the buffer alone is instant).
    const length = source.byteLength;
    if (source.buffer instanceof SharedArrayBuffer && source.byteOffset % 8 === 0) {
      return {
        spec: { kind: "bytes", buffer: source.buffer, offset: source.byteOffset, length },
        length,
        kind: "bytes",
      };
    }
    const shared = new SharedArrayBuffer(Math.max(length, 1));
    new Uint8Array(shared).set(source);
    return { spec: { kind: "bytes", buffer: shared, offset: 0, length }, length, kind: "bytes" };
  }
  if (source === null || typeof source !== "object") {
    throw new TypeError(`${operation}: source must be a Uint8Array or { checkpoint | file | module | address }`);
  }
  if ("checkpoint" in source) {
    const chain = source.checkpoint;
    const paths = chain instanceof CheckpointReader ? chain.files.map((f) => f.path) : chain;
    if (!Array.isArray(paths) || paths.some((p) => typeof p !== "string")) {
      throw new TypeError(`${operation}: checkpoint must be the chain's paths (base first) or a CheckpointReader`);
    }
    // Checked here, so that a bad chain is an error of open() (the Worker opens it again).
    using reader = CheckpointReader.open([...paths]);
    if (reader.pageSize !== PAGE_SIZE) {
      throw invalid(operation, `the checkpoint's page size is ${reader.pageSize}; this machine's is ${PAGE_SIZE}`);
    }
    return {
      spec: { kind: "checkpoint", paths: [...paths], verify: source.verify !== false },
      length: reader.imageLength,
      kind: "checkpoint",
    };
  }
  if ("file" in source) {
    const file = source.file;
    let path: string;
    if (file instanceof URL) {
      if (file.protocol !== "file:") throw invalid(operation, "a URL source must be a file: URL", { url: file.href });
      path = decodeURIComponent(file.pathname);
    } else if (typeof file === "string") path = file;
    else throw new TypeError(`${operation}: file must be a path or a file: URL`);
    const fd = libc.open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw failure("open", fd, { path });
    const size = libc.fileSize(fd);
    libc.close(fd);
    if (size < 0) throw failure("lseek", size, { path });
    return { spec: { kind: "file", path }, length: size, kind: "file" };
  }
  if ("module" in source) {
    let url: string;
    try {
      url = new URL(source.module).href;
    } catch {
      throw new TypeError(
        `${operation}: module ${String(source.module)} is not an absolute URL (use new URL("./x.ts", import.meta.url))`,
      );
    }
    const exportName = source.export ?? "default";
    if (typeof exportName !== "string") throw new TypeError(`${operation}: export must be a string`);
    return {
      spec: { kind: "module", url, export: exportName, options: source.options ?? {} },
      length: -1,
      kind: "module",
    };
  }
  if ("address" in source && typeof source.address === "bigint") {
    const length = Number(source.length);
    if (!Number.isSafeInteger(length) || length < 0) throw invalid(operation, "bad source length", { length });
    if (source.address <= 0n || source.address >= 2n ** 53n) {
      throw invalid(operation, "the source address is not a user-space address", { address: source.address });
    }
    return { spec: { kind: "memory", address: Number(source.address), length }, length, kind: "memory" };
  }
  throw new TypeError(`${operation}: source must be a Uint8Array or { checkpoint | file | module | address }`);
}

/** The region of a `target` option: page-aligned private anonymous memory. */
function targetRegion(target: Region | WebAssembly.Memory, operation: string): Region {
  let region: Region;
  if (target instanceof WebAssembly.Memory) region = Region.of(target);
  else if (target instanceof Region) {
    if (target.kind !== "private") {
      throw invalid(operation, `a target Region must be private anonymous memory, not ${target.kind}`);
    }
    region = target;
  } else throw new TypeError(`${operation}: target must be a WebAssembly.Memory or a Region`);
  if (region.pageSpan.address !== region.address || region.pageSpan.length !== BigInt(region.length)) {
    throw invalid(operation, "the target must start and end on page boundaries", { address: region.address });
  }
  return region;
}

/**
 * Memory filled on first touch from a source: see the module documentation.
 *
 * @example Bytes restored on demand, zero pages mapped as zeros
 * ```ts
 * import { LazyRegion, Region } from "@uffd/uffd";
 * const image = new Uint8Array(8 * Region.pageSize);
 * image.fill(1, 0, Region.pageSize); // page 0 has data; pages 1–7 are zero
 * await using lazy = await LazyRegion.open(image, { prefetch: true });
 * await lazy.ready;
 * console.log(lazy.bytes[0], lazy.stats.resident, lazy.stats.zeroPages); // 1 8 7
 * ```
 */
export class LazyRegion implements AsyncDisposable {
  /**
   * The memory: an anonymous or memfd `Region` registered for missing faults (or the
   * `target`'s). Unmapped by `close()`, unless it is a target.
   */
  readonly region: Region;
  /** Length in bytes. */
  readonly length: number;
  /** Number of pages. */
  readonly pages: number;
  /** The memory kind. */
  readonly memory: "anonymous" | "memfd";
  /** How pages are placed: `"copy"`, `"move"` or `"continue"` (memfd). */
  readonly fill: LazyFill;
  /** Whether a prefetcher runs. */
  readonly prefetch: boolean;
  /** The kind of source: `"checkpoint"`, `"file"`, `"bytes"`, `"memory"` or `"module"`. */
  readonly source: string;
  /** The fault handler serving the region. */
  readonly handler: FaultHandler;

  readonly #uffd: Userfaultfd;
  readonly #state: Uint8Array;
  readonly #stats: Float64Array;
  readonly #ctrl: Int32Array;
  readonly #message: Uint8Array;
  /** The region was mapped here (not a caller's target): `close()` unmaps it. */
  readonly #owned: boolean;
  readonly #ready: PromiseWithResolvers<LazyStats> = Promise.withResolvers();
  #settled = false;
  #failure: Error | undefined;
  #closing: Promise<void> | undefined;
  #closed = false;
  #keepAlive: ReturnType<typeof setInterval> | undefined;

  private constructor(
    region: Region,
    uffd: Userfaultfd,
    handler: FaultHandler,
    shared: { state: Uint8Array; stats: Float64Array; ctrl: Int32Array; message: Uint8Array },
    fill: LazyFill,
    prefetch: boolean,
    source: string,
    owned: boolean,
  ) {
    this.#owned = owned;
    this.region = region;
    this.length = region.length;
    this.pages = region.length / PAGE_SIZE;
    this.memory = fill === "continue" ? "memfd" : "anonymous";
    this.fill = fill;
    this.prefetch = prefetch;
    this.source = source;
    this.handler = handler;
    this.#uffd = uffd;
    this.#state = shared.state;
    this.#stats = shared.stats;
    this.#ctrl = shared.ctrl;
    this.#message = shared.message;
    this.#ready.promise.catch(() => {}); // observed through ready; never an unhandled rejection
    // A handler that fails closes the userfaultfd (from its Worker or from here).
    onClose(uffd, () => this.#handlerEnded());
    this.#watch();
  }

  /**
   * Maps a region of `options.length` bytes (default: the source's length in whole
   * pages), registers it for missing faults and starts the handler that fills it
   * from `source`. Resolves once the handler serves faults; nothing is read yet
   * (unless `prefetch`). Bad input and a source that cannot be opened (a missing
   * file, a damaged chain, a module that fails to load) reject here.
   *
   * @param source A checkpoint chain, a file, bytes, memory (`{ address, length }`) or a module.
   * @param options Length, memory kind, how pages are placed, prefetch, an existing `target`, timeouts.
   * @returns The region, mapped and served: touch its `bytes`.
   * @throws {UffdError} For a source or target that does not fit (a target shorter than the image says how to grow it).
   * @throws {FaultHandlerError} When the handler does not start.
   *
   * @example A module source: pages computed in the handler's Worker
   * ```ts
   * import { LazyRegion, Region } from "@uffd/uffd";
   * const module = `data:text/javascript,${encodeURIComponent(
   *   "export default () => (index, page) => { page.fill(index + 1); };",
   * )}`;
   * await using lazy = await LazyRegion.open({ module }, { length: 4 * Region.pageSize });
   * console.log(lazy.bytes[2 * Region.pageSize + 100]); // 3
   * ```
   */
  static async open(source: LazySource, options: LazyRegionOptions = {}): Promise<LazyRegion> {
    const operation = "LazyRegion.open";
    options = optionsBag(options, operation);
    const prepared = prepareSource(source, operation);
    const target = options.target === undefined ? undefined : targetRegion(options.target, operation);
    if (target !== undefined && options.length !== undefined && options.length !== target.length) {
      throw invalid(operation, "length must be the target's length", { length: options.length, target: target.length });
    }
    // The one restore rule (as Checkpoint.restore): a shorter target is refused — it would drop the image's
    // end without a word — and a longer one gets zeros after the image.
    if (target !== undefined && prepared.length >= 0) {
      restoreRoom(operation, options.target!, target.length, prepared.length);
    }
    let length = target?.length ?? options.length;
    if (length === undefined) {
      if (prepared.length < 0) throw invalid(operation, "a module source needs options.length");
      length = Math.ceil(prepared.length / PAGE_SIZE) * PAGE_SIZE;
    }
    if (typeof length !== "number") throw new TypeError(`${operation}: length must be a number`);
    if (!Number.isSafeInteger(length) || length <= 0 || length % PAGE_SIZE !== 0) {
      throw invalid(operation, `length must be a positive multiple of the page size (${PAGE_SIZE})`, { length });
    }
    const memory = options.memory ?? "anonymous";
    if (memory !== "anonymous" && memory !== "memfd") {
      throw invalid(operation, 'memory must be "anonymous" or "memfd"', { memory: String(memory) });
    }
    if (options.fill !== undefined && options.fill !== "copy" && options.fill !== "move") {
      throw invalid(operation, 'fill must be "copy" or "move"', { fill: String(options.fill) });
    }
    if (target !== undefined && memory !== "anonymous") {
      throw invalid(operation, "a target is filled with anonymous pages: no memory option");
    }
    if (memory === "memfd" && options.fill !== undefined) {
      throw invalid(operation, "a memfd region is filled through its page cache (UFFDIO_CONTINUE): no fill option");
    }
    const fill: LazyFill = memory === "memfd" ? "continue" : options.fill ?? "copy";
    const chunk = positiveInteger(options.prefetchChunk, operation, "prefetchChunk", 32, 4096);
    const prefetch = options.prefetch === true;
    const required: Feature[] = [];
    if (fill === "move") required.push("MOVE");
    if (fill === "continue") required.push("MINOR_SHMEM");
    const uffd = Userfaultfd.open({ features: ["POISON"], require: required, decline: options.decline });
    let region: Region;
    try {
      if (target !== undefined) {
        target.zap(); // every page missing: each is filled from the source
        region = target;
      } else region = Region.map(length, memory === "memfd" ? { memfd: true, name: "uffd-lazy" } : {});
    } catch (e) {
      uffd.close();
      throw e;
    }
    const pages = length / PAGE_SIZE;
    const state = new Uint8Array(new SharedArrayBuffer(pages));
    const stats = new Float64Array(new SharedArrayBuffer(LAZY_STAT.SIZE * 8));
    const ctrl = new Int32Array(new SharedArrayBuffer(LAZY_CTRL.SIZE * 4));
    const message = new Uint8Array(new SharedArrayBuffer(LAZY_MESSAGE_BYTES));
    const policyOptions: LazyPolicyOptions = {
      source: prepared.spec,
      pages,
      fill,
      memfd: region.fd ?? -1,
      prefetch,
      chunk,
      poison: uffd.features.has("POISON"),
      state: state.buffer as SharedArrayBuffer,
      stats: stats.buffer as SharedArrayBuffer,
      control: ctrl.buffer as SharedArrayBuffer,
      message: message.buffer as SharedArrayBuffer,
    };
    const handlerOptions: FaultHandlerOptions = {
      ranges: [region],
      batch: options.batch,
      spinMicros: options.spinMicros,
      startTimeoutMs: options.startTimeoutMs,
      stopTimeoutMs: options.stopTimeoutMs ?? 2000,
    };
    let handler: FaultHandler;
    try {
      uffd.register(region, memory === "memfd" ? { missing: true, minor: true } : { missing: true });
      handler = await FaultHandler.start(
        uffd,
        policies.module(POLICY_URL, policyOptions, "lazyPolicy"),
        handlerOptions,
      );
    } catch (e) {
      uffd.close();
      if (target === undefined) region.unmap(); // nobody touched it yet
      throw e;
    }
    return new LazyRegion(
      region,
      uffd,
      handler,
      { state, stats, ctrl, message },
      fill,
      prefetch,
      prepared.kind,
      target === undefined,
    );
  }

  /** The region's bytes. Touching a page that is not resident waits for the handler; see the module doc on poison. */
  get bytes(): Uint8Array {
    this.#checkOpen("LazyRegion.bytes");
    return this.region.bytes;
  }

  /** The statistics so far. */
  get stats(): LazyStats {
    const s = this.#stats;
    return {
      pages: this.pages,
      resident: s[LAZY_STAT.settled]! - s[LAZY_STAT.poisoned]!,
      faults: s[LAZY_STAT.faults]!,
      prefetched: s[LAZY_STAT.prefetched]!,
      zeroPages: s[LAZY_STAT.zeroPages]!,
      poisoned: s[LAZY_STAT.poisoned]!,
      refaults: s[LAZY_STAT.refaults]!,
      bytesRead: s[LAZY_STAT.bytesRead]!,
      handler: this.handler.stats,
    };
  }

  /** Where the region is in its life. */
  get state(): LazyState {
    if (this.#closed || this.#closing) return "closed";
    if (this.#failure || Atomics.load(this.#ctrl, LAZY_CTRL.FAILED) === 1) return "failed";
    return Atomics.load(this.#ctrl, LAZY_CTRL.SETTLED) === 1 ? "ready" : "restoring";
  }

  /**
   * Resolves with the statistics once every page is settled (filled, zero or
   * poisoned); rejects if the handler fails or the region is closed first. Waiting
   * on it keeps the process alive. See the module documentation.
   */
  get ready(): Promise<LazyStats> {
    if (!this.#settled && this.#keepAlive === undefined) this.#keepAlive = setInterval(() => {}, 60_000);
    return this.#ready.promise;
  }

  /**
   * The pages poisoned so far (the source failed for them), as runs of page numbers.
   *
   * @example
   * ```ts
   * import { LazyRegion, Region } from "@uffd/uffd";
   * await using lazy = await LazyRegion.open(new Uint8Array(2 * Region.pageSize));
   * console.log(lazy.poisoned()); // []
   * ```
   */
  poisoned(): PageRun[] {
    const bitmap = new Uint8Array(Math.ceil(this.pages / 8));
    const state = this.#state;
    for (let i = 0; i < this.pages; i++) if (state[i] === PAGE_STATE.POISONED) bitmap[i >> 3]! |= 1 << (i & 7);
    return pageRuns(bitmap, this.pages);
  }

  /**
   * Copies `length` bytes from `offset` out of the region, safely: a page known
   * to be poisoned is refused without being touched, and missing pages are read by
   * the kernel (`process_vm_readv` on this process), which waits for the handler
   * like any access but reports a page poisoned meanwhile as an error instead of
   * `SIGBUS`. Throws a `UffdError` `EIO` naming the page and the source's error.
   *
   * @example
   * ```ts
   * import { LazyRegion, Region } from "@uffd/uffd";
   * await using lazy = await LazyRegion.open(new Uint8Array(4 * Region.pageSize).fill(9));
   * console.log(lazy.read(Region.pageSize - 2, 4)); // Uint8Array(4) [ 9, 9, 9, 9 ]
   * ```
   */
  read(offset: number, length: number, into: Uint8Array = new Uint8Array(length)): Uint8Array {
    const operation = "LazyRegion.read";
    this.#checkRange(operation, offset, length);
    if (!(into instanceof Uint8Array) || into.length < length) {
      throw new TypeError(`${operation}: into must be a Uint8Array of at least ${length} bytes`);
    }
    const out = into.length === length ? into : into.subarray(0, length);
    if (length === 0) return out;
    if (this.#prepare(operation, offset, length)) {
      out.set(this.region.bytes.subarray(offset, offset + length));
      return out;
    }
    this.#copy(operation, offset, length, libc.addressOf(out), false);
    return out;
  }

  /**
   * Writes `data` into the region at `offset`, with the same safety as `read()`: a
   * missing page is filled from the source first (the write lands on the source's
   * bytes), and a poisoned page is an error, not a signal.
   *
   * @example
   * ```ts
   * import { LazyRegion, Region } from "@uffd/uffd";
   * await using lazy = await LazyRegion.open(new Uint8Array(4 * Region.pageSize).fill(9));
   * lazy.write(10, new Uint8Array([1, 2]));
   * console.log(lazy.bytes.subarray(9, 13)); // Uint8Array(4) [ 9, 1, 2, 9 ]
   * ```
   */
  write(offset: number, data: Uint8Array): void {
    const operation = "LazyRegion.write";
    if (!(data instanceof Uint8Array)) throw new TypeError(`${operation}: data must be a Uint8Array`);
    this.#checkRange(operation, offset, data.length);
    if (data.length === 0) return;
    if (this.#prepare(operation, offset, data.length)) {
      this.region.bytes.set(data, offset);
      return;
    }
    this.#copy(operation, offset, data.length, libc.addressOf(data), true);
  }

  /**
   * Stops the handler (serving the faults already queued), closes the userfaultfd
   * and unmaps the region; `ready` rejects if it had not resolved. Calling it again
   * returns the same promise. See the module documentation for a handler that
   * cannot stop.
   */
  close(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  /** Same as {@linkcode close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#stopKeepAlive();
    let clean = true;
    try {
      await this.handler.stop();
    } catch {
      clean = false; // failed before, or could not stop in time (terminated)
    }
    // Threads still waiting in a fault: the handler did not stop cleanly, or faults are queued unread.
    let waiting = !clean;
    if (!this.#uffd.closed) {
      const queue = new PollSet([this.#uffd.fd]);
      waiting ||= queue.poll(0) > 0 && (queue.revents(0) & POLLIN) !== 0;
    }
    const stats = this.handler.stats;
    waiting ||= stats.faults > stats.resolved + stats.vanished;
    this.#uffd.close(); // wakes whoever still waits
    this.#closed = true;
    this.#reject(
      new UffdError({
        errno: ERRNO.EBADF!,
        operation: "LazyRegion",
        detail: "closed before every page was restored",
      }),
    );
    if (!this.#owned) return; // a caller's target: unregistered, and left as it is
    if (!waiting) {
      this.region.unmap();
      return;
    }
    // A woken thread retries its access right away: release the memory now, keep the
    // (empty) mapping a little longer so that it does not find the address unmapped.
    const region = this.region;
    try {
      region.advise(region.kind === "memfd" ? MADV_REMOVE : MADV_DONTNEED);
    } catch { /* best effort: the mapping goes away below */ }
    const timer = setTimeout(() => region.unmap(), GRACE_MS);
    Deno.unrefTimer(timer);
  }

  /** Validates a byte range of the region. */
  #checkRange(operation: string, offset: number, length: number): void {
    this.#checkOpen(operation);
    if (typeof offset !== "number" || typeof length !== "number") {
      throw new TypeError(`${operation}: offset and length must be numbers`);
    }
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw invalid(operation, "offset and length must be non-negative integers", { offset, length });
    }
    if (offset + length > this.length) {
      throw invalid(operation, "the range is outside the region", { offset, length, regionLength: this.length });
    }
  }

  /**
   * Before an access of `[offset, offset + length)`: throws for a known poisoned page
   * or a failed handler; returns `true` when every page is resident (a plain copy is safe).
   */
  #prepare(operation: string, offset: number, length: number): boolean {
    if (this.#failure || Atomics.load(this.#ctrl, LAZY_CTRL.FAILED) === 1) throw this.#failed(operation);
    const state = this.#state;
    const first = Math.floor(offset / PAGE_SIZE);
    const last = Math.floor((offset + length - 1) / PAGE_SIZE);
    let resident = true;
    for (let i = first; i <= last; i++) {
      const s = state[i];
      if (s === PAGE_STATE.POISONED) throw this.#poisonedError(operation, i);
      if (s === PAGE_STATE.MISSING) resident = false;
    }
    return resident;
  }

  /** Copies through the kernel (`process_vm_readv`/`writev` on this process); a poisoned page ends it with EFAULT. */
  #copy(operation: string, offset: number, length: number, local: bigint, write: boolean): void {
    const pid = libc.getpid();
    let done = 0;
    while (done < length) {
      const remote = this.region.address + BigInt(offset + done);
      const here = local + BigInt(done);
      const rc = write
        ? libc.processVmWritev(pid, here, remote, length - done)
        : libc.processVmReadv(pid, here, remote, length - done);
      if (rc <= 0) {
        const page = Math.floor((offset + done) / PAGE_SIZE);
        if (this.#state[page] === PAGE_STATE.POISONED) throw this.#poisonedError(operation, page);
        if (this.#failure || Atomics.load(this.#ctrl, LAZY_CTRL.FAILED) === 1) throw this.#failed(operation);
        throw new UffdError({
          errno: rc < 0 ? -rc : ERRNO.EFAULT!,
          operation: write ? "process_vm_writev" : "process_vm_readv",
          args: { offset: offset + done, length: length - done },
        });
      }
      done += rc;
    }
    // Without POISON the handler fails by closing the userfaultfd: the copy then completed on empty memory.
    if (this.#failure || Atomics.load(this.#ctrl, LAZY_CTRL.FAILED) === 1) throw this.#failed(operation);
  }

  #poisonedError(operation: string, page: number): UffdError {
    let reason: string | null = null;
    try {
      reason = this.handler.state === "running" ? this.handler.control("error", page) as string | null : null;
    } catch { /* the handler is gone: no detail */ }
    return new UffdError({
      errno: ERRNO.EIO!,
      operation,
      detail: `page ${page} is poisoned: the source failed for it${reason ? ` (${reason})` : ""}`,
      args: { page },
      hint: "touching it through bytes raises SIGBUS; every other page is intact",
    });
  }

  #failed(operation: string): UffdError {
    const cause = this.#failure;
    const length = Atomics.load(this.#ctrl, LAZY_CTRL.MESSAGE_LENGTH);
    const reason = length > 0 ? new TextDecoder().decode(this.#message.slice(0, length)) : cause?.message;
    return new UffdError({
      errno: ERRNO.EIO!,
      operation,
      detail: `the lazy region's handler failed${reason ? `: ${reason}` : ""}`,
      cause,
      hint: "the pages not restored before the failure read as zeros",
    });
  }

  #checkOpen(operation: string): void {
    if (this.#closed || this.#closing) {
      throw invalid(operation, "the lazy region is closed", undefined, ERRNO.EBADF);
    }
  }

  /**
   * Settles `ready` when the policy reports every page settled, or when the handler
   * ended first; waits on the policy's event word (and looks every second, for a
   * Worker that died without a word). Keeps nothing alive by itself.
   */
  async #watch(): Promise<void> {
    const ctrl = this.#ctrl;
    while (!this.#settled) {
      const seen = Atomics.load(ctrl, LAZY_CTRL.EVENT);
      if (Atomics.load(ctrl, LAZY_CTRL.SETTLED) === 1) {
        this.#settled = true;
        this.#stopKeepAlive();
        this.#ready.resolve(this.stats);
        return;
      }
      if (Atomics.load(ctrl, LAZY_CTRL.PREFETCH_STOPPED) === 1) {
        const left = this.pages - this.#stats[LAZY_STAT.settled]!;
        const length = Atomics.load(ctrl, LAZY_CTRL.MESSAGE_LENGTH);
        const reason = new TextDecoder().decode(this.#message.slice(0, length));
        this.#reject(
          new UffdError({
            errno: ERRNO.ENOENT!,
            operation: "LazyRegion",
            detail: `the prefetcher stopped with ${left} of ${this.pages} pages not restored: ${reason}`,
            args: { pagesLeft: left },
          }),
        );
        return;
      }
      if (
        Atomics.load(ctrl, LAZY_CTRL.ENDED) === 1 || Atomics.load(ctrl, LAZY_CTRL.FAILED) === 1 ||
        this.handler.state === "failed" || this.handler.state === "stopped"
      ) {
        this.#handlerEnded();
        return;
      }
      const wait = Atomics.waitAsync(ctrl, LAZY_CTRL.EVENT, seen, 1000);
      if (wait.async) await wait.value;
    }
  }

  /** The handler ended before every page was settled: by `close()`, or on its own (it failed). */
  #handlerEnded(): void {
    if (this.#closing || this.#settled) return;
    if (Atomics.load(this.#ctrl, LAZY_CTRL.FAILED) === 1) this.#failure ??= this.#failed("LazyRegion");
    this.#failure ??= new Error("the fault handler ended");
    this.handler.stop().then(
      () => this.#fail(this.#failure!),
      (e) => this.#fail(e instanceof Error ? e : new Error(String(e))),
    );
  }

  #fail(error: Error): void {
    this.#failure = error;
    this.#reject(error);
  }

  #reject(error: Error): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#stopKeepAlive();
    this.#ready.reject(error);
  }

  #stopKeepAlive(): void {
    if (this.#keepAlive !== undefined) clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
  }
}
