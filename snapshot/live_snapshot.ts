/**
 * {@linkcode LiveSnapshot}: a point-in-time copy of memory taken while the program
 * keeps writing to it — QEMU's background snapshot, for a `Region`, an
 * `ArrayBuffer`, a typed array or a `WebAssembly.Memory`, into a checkpoint file,
 * a `Uint8Array` or a callback.
 *
 * `await LiveSnapshot.take(target, { sink })` write-protects the target and
 * returns: that moment is the snapshot's. Writers go on at once; a write to a page
 * not saved yet waits while a Worker saves the old content, and a background
 * copier saves the rest. `await snap.done` resolves when every page is saved. Two
 * Workers and who does what, the guarantees (one moment, exactly once, no torn
 * page, `MADV_DONTNEED`/`munmap`/`mremap` on the target, never hangs), the sinks,
 * requirements and measured figures: `docs/live-snapshot.md`.
 *
 * @example A consistent copy while a writer keeps going
 * ```ts
 * import { LiveSnapshot, Region } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * mem.bytes.fill(1);
 * const copy = new Uint8Array(mem.length);
 * await using snap = await LiveSnapshot.take(mem, { sink: copy });
 * mem.bytes.fill(2); // the main isolate writes on: each page faults once, saved first
 * const result = await snap.done;
 * console.log(copy.every((b) => b === 1), mem.bytes[0], result.savedPages); // true 2 64
 * ```
 *
 * @module
 */

import { Worker } from "node:worker_threads";
import { ERRNO, failure, invalid } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { deserializeError } from "../handler/_protocol.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, MADV_DONTNEED } from "../ffi/linux.ts";
import { kernelRelease } from "../kernel/access.ts";
import { kernelProfile, type UntouchedPages, untouchedPages } from "../kernel/profile.ts";
import { pageBitsPlan } from "../kernel/_page_contents.ts";
import { pageCeil, pageFloor } from "../kernel/range.ts";
import { Region } from "../kernel/region.ts";
import { checkTarget, locateTarget, type MemoryTarget, privateAnonymous, type TargetSpan } from "../kernel/target.ts";
import { closeTarget } from "./_faults.ts";
import { pageStateBuffers } from "./_pages.ts";
import { emptyQueue } from "./_sinks.ts";
import {
  type FileWritten,
  PROGRESS,
  PROGRESS_SLOTS,
  QUEUE_EMPTY,
  SNAP_CTRL,
  type SnapshotMessage,
  type SnapshotWorkerData,
  STALL_BUCKETS,
  type WorkerSinkSpec,
} from "./_protocol.ts";
import { Feature } from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import { positiveInteger } from "../kernel/_validate.ts";
import { type Lease, Tracker } from "../watch/_tracker.ts";

export type { FileWritten } from "./_protocol.ts";

/** A callback sink: receives each page once, on the main thread (see the module documentation). */
export type SnapshotPageCallback = (pageIndex: number, bytes: Uint8Array) => void | Promise<void>;

/** Where a snapshot's pages go: a checkpoint file (path or `file:` URL), a `Uint8Array`, or a callback. */
export type SnapshotSink = string | URL | Uint8Array | SnapshotPageCallback;

/** Options of {@linkcode LiveSnapshot.take}. */
export interface LiveSnapshotOptions {
  /** Where the pages go (required). */
  sink: SnapshotSink;
  /**
   * Features to treat as missing even if the kernel has them, to exercise the
   * fallbacks: `["WP_UNPOPULATED"]` makes never-touched pages be populated with the
   * zero page first.
   */
  decline?: Iterable<Feature>;
  /**
   * Pages per chunk (default 64): the copier saves and unprotects a chunk at a time,
   * under the chunk's lock. A write to a page of the chunk being copied waits for
   * that copy; fewer pages mean shorter such waits and more system calls.
   */
  chunkPages?: number;
  /** Callback sink: pages staged and not yet delivered before the copier waits (default 4096, 16 MiB). */
  stagingPages?: number;
  /**
   * When an `madvise` (`MADV_DONTNEED`, …), `munmap` or `mremap` of the target is
   * in flight, save every page left before letting it proceed (default `true`): the
   * snapshot is then always right, and the call waits until it is complete. With
   * `false` the call proceeds at once, and pages it drops before they are saved
   * (unless provably intact) make the snapshot fail.
   */
  holdChanges?: boolean;
  /** File sink: `fsync` the file before it is renamed into place (default `false`). */
  durable?: boolean;
  /** Aborts the snapshot (`done` rejects; the target is released). */
  signal?: AbortSignal;
  /** How long `take()` waits for the Workers to start and protect the target (default 30 000 ms). */
  startTimeoutMs?: number;
}

/** A snapshot's progress, read from shared memory at any time. */
export interface SnapshotProgress {
  /** Pages in the snapshot (of the smallest page-aligned span covering the target). */
  readonly pages: number;
  /** Pages saved so far. */
  readonly savedPages: number;
  /** Of those, saved by the fault handler before a write was let through. */
  readonly byFault: number;
  /** Of those, saved by the background copier. */
  readonly byCopier: number;
  /** Of the saved pages, those saved as zeros without being read. */
  readonly zeroPages: number;
  /** Bytes read from the target so far. */
  readonly bytesRead: number;
  /** Write-protect faults served. */
  readonly faults: number;
  /** `MADV_DONTNEED`-like removals of part of the target seen. */
  readonly removes: number;
  /** Times an address-space change in flight made the fault handler save every page left first. */
  readonly heldChanges: number;
  /**
   * Pages of a removed range saved after the removal's event was read (with
   * `holdChanges: false`, or an event that arrived between the fault handler's check and
   * its read), each checked write-protected — so not yet dropped — before and
   * after its copy.
   */
  readonly rescuedPages: number;
  /** Milliseconds since the target was protected (until the last page was saved, once it was). */
  readonly elapsedMs: number;
  /** Image bytes saved per second so far (`savedPages × pageSize / elapsed`). */
  readonly bytesPerSecond: number;
  /**
   * How long writers waited: faults per bucket of time from the fault handler's `read`
   * of the fault to the page's unprotection (`[0, 1)`, `[1, 2)`, `[2, 4)`, … µs;
   * the last bucket is open-ended).
   */
  readonly stallMicros: readonly number[];
}

/** What a finished snapshot did. */
export interface SnapshotResult extends SnapshotProgress {
  /** Whether never-touched pages were handled by `WP_UNPOPULATED` (else by filling them first). */
  readonly wpUnpopulated: boolean;
  /**
   * What never-touched pages cost: `"unpopulated"` (`WP_UNPOPULATED`), `"zero-page"`
   * (mapped to the shared zero page first: no memory), `"allocated"` (a kernel where
   * nothing maps the zero page: each got a zero-filled page of its own).
   */
  readonly untouched: UntouchedPages;
  /** The checkpoint file written (file sink). */
  readonly file: FileWritten | undefined;
}

/**
 * A snapshot failed (a page it would have saved was dropped or unmapped, the sink
 * failed, the callback threw, a Worker died) or was aborted. The target has been
 * released by then. The original error is the `cause`.
 *
 * @example
 * ```ts
 * import { LiveSnapshotError } from "@uffd/uffd";
 * const e = new LiveSnapshotError("the snapshot failed", { cause: new Error("disk full") });
 * console.log(e.name, (e.cause as Error).message); // LiveSnapshotError disk full
 * ```
 */
export class LiveSnapshotError extends Error {
  /** An error with a message and optionally its cause. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LiveSnapshotError";
  }
}

const WORKER_URL = new URL("./_worker.ts", import.meta.url).href;
/** `node:worker_threads` takes `file:` and `data:` URLs only: a `data:` module that imports the real one works for both. */
const BOOTSTRAP = new URL(`data:text/javascript,${encodeURIComponent(`import ${JSON.stringify(WORKER_URL)};`)}`);
const ABORT_GRACE_MS = 5_000;
/** The two Workers: the fault handler and the copier. */
type Role = "faults" | "copier";
const ROLES: readonly Role[] = ["faults", "copier"];
/** glibc's `IS_MMAPPED` bit in a chunk's size word. */
const IS_MMAPPED = 2n;

/** Where the target's bytes are; an unmapped region is refused. */
function locate(target: MemoryTarget): TargetSpan {
  const operation = "LiveSnapshot.take";
  checkTarget(target, operation);
  if (target instanceof Region && !target.mapped) {
    throw invalid(operation, "the region has been unmapped", { address: target.address });
  }
  return locateTarget(target);
}

/**
 * Whether the whole pages around `[address, address + length)` belong to the
 * owner's memory alone. Memory that starts and ends on page boundaries does. An
 * allocation glibc served with `mmap` (an `ArrayBuffer` of 1 MiB or more, usually)
 * starts 16 bytes into its own mapping, after a header whose size word has
 * `IS_MMAPPED` set. A smaller buffer shares its pages with other allocations —
 * which the snapshot's own Worker might write, and it would wait for itself.
 */
function ownsSpan(location: TargetSpan): boolean {
  const owner = location.owner;
  if (owner === undefined) return true;
  const start = pageFloor(location.address);
  const end = pageCeil(location.address + BigInt(location.length));
  // Pages wholly inside the owner's memory are its own.
  if (start >= owner.address && end <= owner.address + BigInt(owner.length)) return true;
  const head = Number(owner.address % PAGE_SIZE_N);
  const ownerEnd = owner.address + BigInt(owner.length);
  if (head === 0 && ownerEnd % PAGE_SIZE_N === 0n) return true;
  if (head !== 16) return false;
  const header = new BigUint64Array(libc.bufferAt(owner.address - 16n, 16));
  const size = header[1]!;
  if ((size & IS_MMAPPED) === 0n) return false;
  return owner.address - 16n + (size & ~7n) >= pageCeil(ownerEnd);
}

function filePath(sink: string | URL): string {
  if (sink instanceof URL) {
    if (sink.protocol !== "file:") {
      throw invalid("LiveSnapshot.take", "a URL sink must be a file: URL", { url: sink.href });
    }
    return decodeURIComponent(sink.pathname);
  }
  if (sink.length === 0) throw invalid("LiveSnapshot.take", "the sink path is empty");
  return sink;
}

/** Settles once, whichever way. */
function deferred<T>(): PromiseWithResolvers<T> & { settled: boolean } {
  const d = Promise.withResolvers<T>() as PromiseWithResolvers<T> & { settled: boolean };
  d.settled = false;
  const { resolve, reject } = d;
  d.resolve = (v) => {
    if (d.settled) return;
    d.settled = true;
    resolve(v);
  };
  d.reject = (e) => {
    if (d.settled) return;
    d.settled = true;
    reject(e);
  };
  return d;
}

/**
 * A snapshot in progress: see the module documentation. Take one with
 * {@linkcode LiveSnapshot.take}; wait for it with `done`; give it up with
 * `abort()` or `await using`.
 *
 * @example Into a checkpoint file, restored elsewhere
 * ```ts
 * import { Checkpoint, LiveSnapshot, Region } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * using mem = Region.map(32 * Region.pageSize);
 * mem.page(3).fill(7);
 * const snap = await LiveSnapshot.take(mem, { sink: `${dir}/snap.ckpt` });
 * mem.page(3).fill(8);
 * const { file } = await snap.done;
 * using copy = Region.map(32 * Region.pageSize);
 * Checkpoint.restore(copy, [file!.path]);
 * console.log(copy.page(3)[0], file!.dataPages); // 7 1
 * Deno.removeSync(dir, { recursive: true });
 * ```
 */
export class LiveSnapshot implements AsyncDisposable {
  /** Pages in the snapshot: those of the smallest page-aligned span covering the target. */
  readonly pageCount: number;
  /** The page size. */
  readonly pageSize: number = PAGE_SIZE;
  /** Offset of the target's first byte inside page 0 (0 when page-aligned). */
  readonly head: number;
  /** Length of the target in bytes. */
  readonly byteLength: number;
  /** Whether never-touched pages are handled by `WP_UNPOPULATED` (else filled first: see {@linkcode untouched}). */
  readonly wpUnpopulated: boolean;
  /** What never-touched pages cost (see `SnapshotResult.untouched`). */
  readonly untouched: UntouchedPages;

  readonly #uffd: Userfaultfd;
  readonly #copierUffd: Userfaultfd;
  /** A watch's userfaultfd, lent for the snapshot: given back (with the pages written) when the snapshot ends. */
  readonly #lease: Lease | undefined;
  readonly #lent: Uint8Array | undefined;
  readonly #workers: Record<Role, Worker>;
  readonly #eventFd: number;
  /** The target's page span: `[base, base + pages * PAGE_SIZE)`. */
  readonly #span: { base: number; pages: number };
  readonly #control: Int32Array;
  readonly #progress: Float64Array;
  readonly #keep: unknown[];
  readonly #callback: SnapshotPageCallback | undefined;
  readonly #queue: Int32Array | undefined;
  readonly #staging: Region | undefined;
  readonly #protected = deferred<void>();
  /** Opened when `take()` returns (or the snapshot fails): no callback runs before the caller has the snapshot. */
  readonly #deliveryGate = deferred<void>();
  /** Each Worker has reported how it ended (or died without reporting). */
  readonly #ended: Record<Role, ReturnType<typeof deferred<void>>> = { faults: deferred(), copier: deferred() };
  readonly #exited: Record<Role, ReturnType<typeof deferred<void>>> = { faults: deferred(), copier: deferred() };
  readonly #done: Promise<SnapshotResult>;
  #failure: LiveSnapshotError | undefined;
  #file: FileWritten | undefined;
  #complete = false;
  #settled = false;
  #unwatchSignal: (() => void) | undefined;

  private constructor(
    uffd: Userfaultfd,
    copierUffd: Userfaultfd,
    data: SnapshotWorkerData,
    keep: unknown[],
    callback: SnapshotPageCallback | undefined,
    staging: Region | undefined,
    head: number,
    byteLength: number,
    lease: Lease | undefined,
  ) {
    this.#uffd = uffd;
    this.#lease = lease;
    this.#lent = data.lent === null ? undefined : new Uint8Array(data.lent);
    this.#copierUffd = copierUffd;
    this.#eventFd = data.eventFd;
    this.#span = { base: data.base, pages: data.pages };
    this.#control = new Int32Array(data.control);
    this.#progress = new Float64Array(data.progress);
    this.#keep = keep;
    this.#callback = callback;
    this.#queue = data.sink.kind === "staging" ? new Int32Array(data.sink.queue) : undefined;
    this.#staging = staging;
    this.pageCount = data.pages;
    this.head = head;
    this.byteLength = byteLength;
    this.wpUnpopulated = data.wpUnpopulated;
    this.untouched = untouchedPages(data.untouchedFill);
    const start = (role: Role, workerData: SnapshotWorkerData) => {
      const worker = new Worker(BOOTSTRAP, { workerData });
      worker.on("message", (m: SnapshotMessage) => this.#message(role, m));
      worker.on("error", (e: unknown) => {
        this.#fail(
          new LiveSnapshotError(`the snapshot's Worker failed: ${e instanceof Error ? e.message : String(e)}`, {
            cause: e,
          }),
        );
      });
      worker.on("exit", (code: number) => this.#exit(role, code));
      return worker;
    };
    this.#workers = {
      faults: start("faults", data),
      copier: start("copier", { ...data, role: "copier", uffd: copierUffd.share() }),
    };
    this.#done = this.#finish();
    this.#done.catch(() => {}); // observed through done; never an unhandled rejection
  }

  /**
   * Write-protects `target` and starts saving it into `options.sink`; resolves
   * once the target is protected — the snapshot's moment — with the snapshot
   * running. If it cannot start, nothing stays protected and the promise rejects.
   *
   * @param target Private anonymous memory.
   * @param options The sink (a path, a `Uint8Array` or a callback), chunk and staging sizes, `signal`, timeouts, what
   *   to decline.
   * @returns The snapshot, once the target is protected: that moment is the snapshot's. `done` says when it is
   *   complete.
   * @throws {TypeError} For a target or sink of the wrong type.
   * @throws {UffdError} `EOPNOTSUPP` for memory that is not private anonymous or a kernel without what it needs;
   *   `EINVAL` for a sink of the wrong size.
   * @throws {LiveSnapshotError} When the Workers do not start.
   *
   * @example A callback sink, called on the main thread
   * ```ts
   * import { LiveSnapshot } from "@uffd/uffd";
   * const memory = new WebAssembly.Memory({ initial: 1 }); // 16 pages of 4 KiB
   * new Uint8Array(memory.buffer)[5 * 4096] = 9;
   * const seen = new Map<number, number>();
   * const snap = await LiveSnapshot.take(memory, { sink: (page, bytes) => void seen.set(page, bytes[0]) });
   * await snap.done;
   * console.log(seen.size, seen.get(5)); // 16 9
   * ```
   */
  static async take(target: MemoryTarget, options: LiveSnapshotOptions): Promise<LiveSnapshot> {
    const operation = "LiveSnapshot.take";
    if (options === null || typeof options !== "object") throw new TypeError(`${operation}: options must be an object`);
    const location = locate(target);
    if (location.length === 0 || location.address === 0n) {
      throw invalid(operation, "the memory is empty or detached", { length: location.length });
    }
    const spanStart = pageFloor(location.address);
    const spanEnd = pageCeil(location.address + BigInt(location.length));
    const pages = Number(spanEnd - spanStart) / PAGE_SIZE;
    const head = Number(location.address - spanStart);
    if (target instanceof Region && target.pageSize !== PAGE_SIZE) {
      throw invalid(operation, "huge-page memory is not supported", { pageSize: target.pageSize }, ERRNO.EOPNOTSUPP);
    }
    if (!ownsSpan(location)) {
      throw invalid(
        operation,
        "the memory shares its first or last page with other data (a small ArrayBuffer from the malloc heap): " +
          "protecting it could make the snapshot's own thread wait for itself",
        { address: location.address, length: location.length },
      );
    }
    // Which pages are protected and which hold data: PAGEMAP_SCAN (6.7), else the pagemap's uffd-wp bit (5.17).
    const pageBits = pageBitsPlan();
    if (!pageBits.scan && !pageBits.wpBit) {
      throw invalid(
        operation,
        `this kernel (${kernelRelease()}) reports write protection neither through PAGEMAP_SCAN (Linux 6.7) nor ` +
          "in /proc/self/pagemap (bit 57, Linux 5.17): the snapshot could not check that every page is protected",
        {},
        ERRNO.EOPNOTSUPP,
      );
    }
    if (!privateAnonymous(target, spanStart, spanEnd)) {
      throw invalid(
        operation,
        "only private anonymous memory can be snapshotted (shared memory can be written through other mappings, " +
          "which raise no fault here)",
        { address: location.address },
        ERRNO.EOPNOTSUPP,
      );
    }
    const chunkPages = positiveInteger(options.chunkPages, operation, "chunkPages", 64, 1 << 16);
    const stagingPages = positiveInteger(options.stagingPages, operation, "stagingPages", 4096, 1 << 30);
    const startTimeout = options.startTimeoutMs ?? 30_000;
    if (typeof startTimeout !== "number" || !(startTimeout >= 0)) {
      throw new TypeError(`${operation}: startTimeoutMs must be a non-negative number`);
    }
    if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
      throw new TypeError(`${operation}: signal must be an AbortSignal`);
    }
    const sink = options.sink;
    const keep: unknown[] = [target];
    let sinkSpec: WorkerSinkSpec;
    let callback: SnapshotPageCallback | undefined;
    if (typeof sink === "string" || sink instanceof URL) {
      const path = filePath(sink);
      const random = crypto.getRandomValues(new BigUint64Array(1))[0]!;
      sinkSpec = {
        kind: "file",
        path,
        tmp: `${path}.tmp-${Deno.pid}-${random.toString(36)}`,
        durable: options.durable === true,
        chainId: random === 0n ? 1n : random,
        crcs: new SharedArrayBuffer(Math.max(4, pages * 4)),
        ranks: new SharedArrayBuffer(Math.max(4, pages * 4)),
      };
    } else if (sink instanceof Uint8Array) {
      if (sink.byteLength !== location.length) {
        throw invalid(operation, `the sink must have the target's length (${location.length} bytes)`, {
          sinkLength: sink.byteLength,
        });
      }
      const address = libc.addressOf(sink);
      if (address < spanEnd && spanStart < address + BigInt(sink.byteLength)) {
        throw invalid(operation, "the sink overlaps the target", { sink: address });
      }
      keep.push(sink);
      sinkSpec = { kind: "bytes", address: Number(address), length: sink.byteLength };
    } else if (typeof sink === "function") {
      callback = sink;
      sinkSpec = { kind: "staging", address: 0, limit: stagingPages, queue: emptyQueue(pages) };
    } else {
      throw new TypeError(`${operation}: sink must be a path, a file: URL, a Uint8Array or a function`);
    }
    const declined = [...(options.decline ?? [])];
    // Memory a write watch (or checkpoint) tracks: its userfaultfd is the only one the memory can have; the
    // snapshot borrows it, and every write it lets through goes to the watch.
    const tracker = Tracker.at(spanStart);
    let lease: Lease | undefined;
    if (tracker !== undefined) {
      if (tracker.backend.pages !== pages) {
        throw invalid(operation, "a watch of this memory covers another span", { pages }, ERRNO.EBUSY);
      }
      lease = tracker.lend();
      if (lease === undefined) {
        throw invalid(
          operation,
          `this memory is watched with the ${tracker.backend.name} backend, whose writes never fault to user space: ` +
            "a snapshot needs the write faults",
          { backend: tracker.backend.name },
          ERRNO.EBUSY,
        );
      }
    }
    let uffd: Userfaultfd;
    try {
      uffd = lease?.uffd.duplicate() ?? Userfaultfd.open({
        require: [Feature.PAGEFAULT_FLAG_WP, Feature.EVENT_REMOVE, Feature.EVENT_UNMAP, Feature.EVENT_REMAP],
        features: [Feature.WP_UNPOPULATED],
        decline: declined,
      });
    } catch (e) {
      lease?.end(new Uint8Array(0));
      throw e;
    }
    const lent = lease === undefined ? null : new SharedArrayBuffer(Math.ceil(pages / 8));
    const wpUnpopulated = uffd.features.has(Feature.WP_UNPOPULATED);
    const fill = kernelProfile().untouchedFill;
    if (!wpUnpopulated && fill === "none") {
      uffd.close();
      lease?.end(new Uint8Array(0));
      throw invalid(
        operation,
        `without WP_UNPOPULATED (Linux 6.4) never-touched pages must be populated first, and this kernel ` +
          `(${kernelRelease()}) has neither MADV_POPULATE_READ (5.14) nor a userfaultfd that can map zero pages`,
        {},
        ERRNO.EOPNOTSUPP,
      );
    }
    let eventFd = -1;
    let staging: Region | undefined;
    let copierUffd: Userfaultfd | undefined;
    let snapshot: LiveSnapshot;
    try {
      if (lease === undefined) uffd.register({ address: spanStart, length: pages * PAGE_SIZE }, { wp: true });
      // The copier's own reference: it unprotects what it saved without sharing the fault Worker's fd number.
      copierUffd = uffd.duplicate();
      eventFd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (eventFd < 0) throw failure("eventfd", eventFd);
      if (sinkSpec.kind === "staging") {
        staging = Region.map(pages * PAGE_SIZE);
        sinkSpec = { ...sinkSpec, address: Number(staging.address) };
      }
      const data: SnapshotWorkerData = {
        role: "faults",
        uffd: uffd.share(),
        eventFd,
        control: new SharedArrayBuffer(SNAP_CTRL.SIZE * 4),
        progress: new SharedArrayBuffer(PROGRESS_SLOTS * 8),
        ...pageStateBuffers(pages, chunkPages),
        base: Number(spanStart),
        pages,
        head,
        length: location.length,
        wpUnpopulated,
        untouchedFill: wpUnpopulated ? null : fill,
        pageBits,
        sink: sinkSpec,
        chunkPages,
        batch: 64,
        holdChanges: options.holdChanges !== false,
        lent,
      };
      snapshot = new LiveSnapshot(uffd, copierUffd, data, keep, callback, staging, head, location.length, lease);
    } catch (e) {
      uffd.close();
      copierUffd?.close();
      lease?.end(new Uint8Array(0));
      if (eventFd >= 0) libc.close(eventFd);
      staging?.unmap();
      throw e;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new LiveSnapshotError(`the snapshot did not start within ${startTimeout} ms`)),
        startTimeout,
      );
    });
    try {
      await Promise.race([snapshot.#protected.promise, timeout]);
    } catch (e) {
      const error = e instanceof LiveSnapshotError ? e : new LiveSnapshotError("the snapshot failed to start", {
        cause: e,
      });
      snapshot.#fail(error);
      await snapshot.#done.catch(() => {});
      throw error;
    } finally {
      clearTimeout(timer);
    }
    snapshot.#deliveryGate.resolve();
    const signal = options.signal;
    if (signal) {
      const onAbort = () => snapshot.abort(signal.reason);
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener("abort", onAbort, { once: true });
        snapshot.#unwatchSignal = () => signal.removeEventListener("abort", onAbort);
      }
    }
    return snapshot;
  }

  /**
   * Settles when the snapshot is complete — every page saved (and, for a callback
   * sink, delivered), the userfaultfd closed, the Workers gone — with what it did;
   * or rejects with a `LiveSnapshotError` when it failed or was aborted.
   */
  get done(): Promise<SnapshotResult> {
    return this.#done;
  }

  /** The progress so far, read from shared memory (no round trip; also while the Workers are busy). */
  get progress(): SnapshotProgress {
    const p = this.#progress;
    const started = p[PROGRESS.startedAt]!;
    const finished = p[PROGRESS.finishedAt]!;
    const elapsedMs = started === 0 ? 0 : (finished || performance.timeOrigin + performance.now()) - started;
    const savedPages = Atomics.load(this.#control, SNAP_CTRL.SAVED);
    return {
      pages: p[PROGRESS.pages]!,
      savedPages,
      byFault: p[PROGRESS.byFault]!,
      byCopier: p[PROGRESS.byCopier]! + p[PROGRESS.byHandler]!,
      zeroPages: p[PROGRESS.zeroHandler]! + p[PROGRESS.zeroCopier]!,
      bytesRead: p[PROGRESS.bytesHandler]! + p[PROGRESS.bytesCopier]!,
      faults: p[PROGRESS.faults]!,
      removes: p[PROGRESS.removes]!,
      heldChanges: p[PROGRESS.heldChanges]!,
      rescuedPages: p[PROGRESS.rescued]!,
      elapsedMs,
      bytesPerSecond: elapsedMs > 0 ? (savedPages * PAGE_SIZE * 1000) / elapsedMs : 0,
      stallMicros: Array.from(p.subarray(PROGRESS.stall, PROGRESS.stall + STALL_BUCKETS)),
    };
  }

  /**
   * Gives the snapshot up: the Workers stop, the target is released (the
   * userfaultfd closed), a partly written file removed, and `done` rejects with a
   * `LiveSnapshotError` whose cause is `reason`. Harmless once the snapshot has
   * settled.
   *
   * @example
   * ```ts
   * import { LiveSnapshot, LiveSnapshotError, Region } from "@uffd/uffd";
   * using mem = Region.map(4096 * Region.pageSize, { populate: true });
   * const snap = await LiveSnapshot.take(mem, { sink: () => new Promise((r) => setTimeout(r, 1)) });
   * snap.abort(new Error("changed my mind"));
   * const e = await snap.done.catch((e) => e);
   * console.log(e instanceof LiveSnapshotError, (e.cause as Error).message); // true changed my mind
   * ```
   */
  abort(reason?: unknown): void {
    if (this.#settled || this.#failure) return;
    this.#fail(
      new LiveSnapshotError("the snapshot was aborted", {
        cause: reason ?? new DOMException("the snapshot was aborted", "AbortError"),
      }),
    );
  }

  /** Aborts the snapshot unless it is complete, and waits until it has settled. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#settled) this.abort();
    try {
      await this.#done;
    } catch { /* reported through done */ }
  }

  /** Wakes the fault Worker through the eventfd, and the copier where it waits. */
  #wake(): void {
    if (!this.#exited.faults.settled || !this.#exited.copier.settled) libc.eventfdSignal(this.#eventFd);
    Atomics.notify(this.#control, SNAP_CTRL.STATE);
    Atomics.notify(this.#control, SNAP_CTRL.DELIVERED);
  }

  #message(role: Role, message: SnapshotMessage): void {
    switch (message.type) {
      case "protected":
        this.#protected.resolve();
        return;
      case "done":
        if (role === "faults") {
          this.#file = message.file;
          this.#complete = true;
          if (this.#lease !== undefined) {
            // The fault Worker serves the watch's faults until told: take the userfaultfd back now.
            Atomics.store(this.#control, SNAP_CTRL.RETURNED, 1);
            this.#wake();
            return; // it answers "returned"
          }
        }
        break;
      case "returned":
        this.#giveBack();
        break;
      case "aborted":
        break;
      case "failed": {
        // The Worker closed its reference to the userfaultfd before reporting.
        const cause = deserializeError(message.error);
        this.#fail(new LiveSnapshotError(`the snapshot failed: ${cause.message}`, { cause }));
        break;
      }
    }
    this.#ended[role].resolve();
    this.#workers[role].terminate(); // its work is done
  }

  /**
   * Fails (or aborts) the snapshot: asks the Workers to stop (each closes its
   * reference to the userfaultfd and reports), and if they do not within a grace
   * period, closes both references from here and terminates them.
   */
  #fail(error: LiveSnapshotError): void {
    if (this.#settled) return;
    this.#failure ??= error;
    this.#protected.reject(this.#failure);
    this.#deliveryGate.resolve();
    if (Atomics.exchange(this.#control, SNAP_CTRL.ABORT, 1) !== 0) return; // already stopping
    this.#wake();
    const ended = Promise.all([this.#ended.faults.promise, this.#ended.copier.promise]);
    const timer = setTimeout(() => {
      this.#closeFromHere(this.#uffd);
      this.#closeFromHere(this.#copierUffd);
      for (const role of ROLES) {
        this.#ended[role].resolve();
        this.#workers[role].terminate();
      }
    }, ABORT_GRACE_MS);
    ended.finally(() => clearTimeout(timer));
  }

  /**
   * Closes a reference to the userfaultfd from the main thread (a Worker did not). The target is unregistered
   * first, unless the userfaultfd is a watch's: some kernels (Debian's 6.1.0-50) leave the uffd-wp bits in the
   * PTEs at the last close, and a later registration would start with those pages protected.
   */
  #closeFromHere(uffd: Userfaultfd): void {
    if (this.#lease === undefined && !uffd.closed) closeTarget(uffd, this.#span.base, this.#span.pages);
    else uffd.close();
  }

  #exit(role: Role, code: number): void {
    this.#exited[role].resolve();
    if (!this.#ended[role].settled) {
      // It died without reporting: its reference may still be open (nobody else uses it now).
      this.#closeFromHere(role === "faults" ? this.#uffd : this.#copierUffd);
      this.#fail(new LiveSnapshotError(`the snapshot's ${role} Worker exited (code ${code}) without reporting`));
      this.#ended[role].resolve();
    }
    if (this.#exited.faults.settled && this.#exited.copier.settled) libc.close(this.#eventFd);
  }

  /** The whole life after the constructor: the Workers' ends, delivery (callback sink), their exits, the result. */
  async #finish(): Promise<SnapshotResult> {
    try {
      const delivery = this.#callback ? this.#deliver() : Promise.resolve();
      // A callback that throws fails the snapshot at once.
      delivery.catch((e) => this.#fail(asSnapshotError(e)));
      await Promise.all([this.#ended.faults.promise, this.#ended.copier.promise]);
      if (this.#failure) throw this.#failure;
      if (!this.#complete) throw new LiveSnapshotError("the snapshot was aborted");
      await delivery;
      if (this.#failure) throw this.#failure;
      await Promise.all([this.#exited.faults.promise, this.#exited.copier.promise]);
      return this.#result();
    } catch (e) {
      const error = this.#failure ?? asSnapshotError(e);
      this.#fail(error);
      await Promise.all([this.#ended.faults.promise, this.#ended.copier.promise]);
      // terminate() cannot interrupt a Worker stuck in a system call: do not wait for it forever.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const exits = Promise.all([this.#exited.faults.promise, this.#exited.copier.promise]);
      await Promise.race([exits, new Promise((r) => timer = setTimeout(r, ABORT_GRACE_MS))]);
      clearTimeout(timer);
      for (const role of ROLES) if (!this.#exited[role].settled) this.#workers[role].unref();
      throw error;
    } finally {
      this.#giveBack(); // a lent userfaultfd goes back to its watch however the snapshot ended
      this.#settled = true;
      this.#unwatchSignal?.();
      if (this.#exited.faults.settled && this.#exited.copier.settled) {
        this.#staging?.unmap(); // the Workers are gone: nobody writes it any more
      }
      this.#keep.length = 0;
    }
  }

  /** Gives a lent userfaultfd back to its watch (once), with every page a write was let through on. */
  #giveBack(): void {
    if (this.#lease === undefined || this.#lent === undefined) return;
    this.#lease.end(this.#lent);
  }

  #result(): SnapshotResult {
    return { ...this.progress, wpUnpopulated: this.wpUnpopulated, untouched: this.untouched, file: this.#file };
  }

  /**
   * Calls the callback for every queued page, on this thread, in the order the
   * Workers queued them; frees each staged page after its call. Ends when every
   * page is delivered, or throws (the callback's error, or the snapshot's failure).
   */
  async #deliver(): Promise<void> {
    const ctrl = this.#control;
    const queue = this.#queue!;
    const staging = this.#staging!;
    const stagedBytes = staging.bytes;
    const zeros = new Uint8Array(PAGE_SIZE);
    const callback = this.#callback!;
    const pages = this.pageCount;
    const imageEnd = this.head + this.byteLength;
    let delivered = 0;
    await this.#deliveryGate.promise;
    // Waiting: Atomics.waitAsync alone does not keep Deno's event loop alive; a timer does.
    const pause = (seen: number) => {
      const wait = Atomics.waitAsync(ctrl, SNAP_CTRL.PUBLISHED, seen, 100);
      if (!wait.async) return Promise.resolve();
      let timer: ReturnType<typeof setTimeout> | undefined;
      return Promise.race([wait.value, new Promise<void>((r) => timer = setTimeout(r, 100))]).finally(() =>
        clearTimeout(timer)
      );
    };
    let runStart = -1;
    let runEnd = -1;
    const free = () => {
      if (runStart >= 0) staging.advise(MADV_DONTNEED, staging.pages(runStart, runEnd - runStart));
      runStart = runEnd = -1;
    };
    while (delivered < pages) {
      if (this.#failure) throw this.#failure;
      if (Atomics.load(queue, delivered) === QUEUE_EMPTY) {
        if (this.#ended.faults.settled && this.#ended.copier.settled) {
          if (this.#failure) throw this.#failure;
          if (Atomics.load(queue, delivered) === QUEUE_EMPTY) throw new LiveSnapshotError("the snapshot was aborted");
          continue;
        }
        await pause(Atomics.load(ctrl, SNAP_CTRL.PUBLISHED));
        continue;
      }
      // Deliver every slot filled so far, then tell the copier (which may wait for room).
      for (; delivered < pages; delivered++) {
        const entry = Atomics.load(queue, delivered);
        if (entry === QUEUE_EMPTY) break;
        const page = entry >= 0 ? entry : -1 - entry;
        const from = Math.max(page * PAGE_SIZE, this.head);
        const to = Math.min((page + 1) * PAGE_SIZE, imageEnd);
        const bytes = entry >= 0 ? stagedBytes.subarray(from, to) : zeros.subarray(0, to - from);
        const result = callback(page, bytes);
        if (result !== undefined && typeof (result as Promise<void>)?.then === "function") await result;
        if (this.#failure) throw this.#failure;
        if (entry >= 0) {
          if (runEnd === page) runEnd++;
          else {
            free();
            runStart = page;
            runEnd = page + 1;
          }
        }
      }
      free();
      Atomics.store(ctrl, SNAP_CTRL.DELIVERED, delivered);
      Atomics.notify(ctrl, SNAP_CTRL.DELIVERED);
    }
  }
}

function asSnapshotError(e: unknown): LiveSnapshotError {
  return e instanceof LiveSnapshotError
    ? e
    : new LiveSnapshotError(`the snapshot failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}
