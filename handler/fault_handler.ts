/**
 * {@linkcode FaultHandler}: serves the faults of a userfaultfd from a Worker (its
 * own OS thread), so that any thread — the main isolate's own JavaScript
 * included — can touch write-protected or missing memory and be served, by a
 * policy (see `policies.ts`). Never hangs: if the policy throws or the Worker dies,
 * the userfaultfd is closed (waking every blocked thread) and the error reaches
 * `done` and `stop()`. The threads, the loop, the control calls and failure:
 * `docs/fault-handler.md`.
 *
 * @example Track the pages the main isolate writes
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(256 * Region.pageSize, { populate: true });
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { wp: true });
 * await using handler = await FaultHandler.start(uffd, policies.unprotect());
 * uffd.writeProtect(mem);
 * mem.bytes[3 * Region.pageSize] = 1; // blocks until the Worker unprotects page 3
 * mem.bytes[9 * Region.pageSize] = 1;
 * console.log(handler.collect()); // [{ firstPage: 3, pages: 1 }, { firstPage: 9, pages: 1 }] — re-protected
 * mem.bytes[3 * Region.pageSize] = 2; // faults again
 * console.log(handler.collect(), handler.stats.wp); // [{ firstPage: 3, pages: 1 }] 3
 * ```
 *
 * @module
 */

import { Worker } from "node:worker_threads";
import { ERRNO, failure, invalid } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import {
  CTRL,
  deserializeError,
  type HandlerWorkerData,
  OP,
  PAYLOAD_BYTES,
  type SerializedError,
  STATE,
  type WorkerMessage,
} from "./_protocol.ts";
import { type HandlerStats, readStats, statsBuffer } from "./stats.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK } from "../ffi/linux.ts";
import { onClose } from "../kernel/_on_close.ts";
import type { CopySourceSpec, PolicySpec } from "./fault_policy.ts";
import { BUILTIN_POLICIES } from "./policies.ts";
import { unmappedParts } from "../kernel/maps.ts";
import type { Range } from "../kernel/range.ts";
import { bitmapBytes, type PageRun, pageRuns, type TrackedRange, trackRanges } from "./tracked_pages.ts";
import { type UffdEvent, Userfaultfd } from "../kernel/userfaultfd.ts";

/** Options of {@linkcode FaultHandler.start}. */
export interface FaultHandlerOptions {
  /**
   * The ranges whose pages the handler numbers and tracks (each inside a
   * registration of `uffd`; a `Region` brings its page size). Default: every range
   * registered on `uffd` when the handler starts.
   */
  ranges?: Iterable<Range>;
  /**
   * Receives the address-space events (remap, remove, unmap, fork, unknown) after
   * the handler has processed them, on the main isolate. With it, the child
   * userfaultfd of a fork event belongs to the listener (close it when done);
   * without it, the handler closes it, and the child's faults are no longer held.
   *
   * With `EVENT_FORK`, glibc's `fork()` in this process deadlocks: glibc holds its
   * malloc locks across the system call, which waits until the handler has read
   * the fork event, and the handler's JavaScript needs those locks. Fork with the
   * raw system call, and run no JavaScript in the child (V8's heap is mapped
   * `MADV_DONTFORK`: the child has none); `posix_spawn` (`Deno.Command`) raises no
   * fork event.
   */
  onEvent?: (event: UffdEvent) => void;
  /**
   * The most pages the handler may track, counting those added later with
   * `addRanges()` (default: the pages it starts with, so that nothing can be
   * added). The page bitmaps are reserved for this many pages and grow as ranges
   * are added.
   */
  maxPages?: number;
  /** Messages per `read()` (default 64). */
  batch?: number;
  /**
   * After serving a batch, keep reading for this many microseconds before sleeping
   * in `poll()`: saves the Worker's wake-up when faults come in quick succession
   * (a writer that faults again within microseconds), at the cost of the handler's
   * core staying busy that long after each batch. Default 30 on a machine with more
   * than one CPU, 0 on one CPU (where spinning would only delay the faulting
   * thread). Measured on Linux 6.18, 2 cores: a sequential writer's WP fault round
   * trip went from about 1.2× to about 0.75× the time of a C handler that sleeps in
   * `poll()`; 0 gives the old behaviour.
   */
  spinMicros?: number;
  /** How long `start()` waits for the Worker to load its policy (default 10 000 ms). */
  startTimeoutMs?: number;
  /** How long `collect()` and `control()` wait for the Worker (default 5 000 ms). */
  controlTimeoutMs?: number;
  /** How long `stop()` waits before terminating the Worker and closing the userfaultfd (default 5 000 ms). */
  stopTimeoutMs?: number;
}

/** Where a handler is in its life. */
export type HandlerState = "starting" | "running" | "stopped" | "failed";

/**
 * A handler failed: its policy threw, a kernel call failed or its Worker died.
 * The original error is the `cause`. By then the userfaultfd has been closed.
 *
 * @example
 * ```ts
 * import { FaultHandlerError } from "@uffd/uffd";
 * const e = new FaultHandlerError("the fault handler failed", { cause: new Error("policy bug") });
 * console.log(e.name, (e.cause as Error).message); // FaultHandlerError policy bug
 * ```
 */
export class FaultHandlerError extends Error {
  /** An error with a message and optionally its cause. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FaultHandlerError";
  }
}

const WORKER_URL = new URL("./_worker.ts", import.meta.url).href;
/**
 * `node:worker_threads` takes `file:` and `data:` URLs only: a `data:` module that
 * imports the real one works for both. When the import fails (no read permission,
 * a network error), the bootstrap says so in the control block, where `startSync`
 * — which cannot receive the Worker's error event while it waits — sees it.
 */
const BOOTSTRAP = new URL(`data:text/javascript,${
  encodeURIComponent(`import { workerData } from "node:worker_threads";
import(${JSON.stringify(WORKER_URL)}).catch((e) => {
  const control = new Int32Array(workerData.control);
  const text = new TextEncoder().encode(JSON.stringify({ name: String(e?.name ?? "Error"), message: String(e?.message ?? e) }));
  if (text.length <= workerData.payload.byteLength) {
    new Uint8Array(workerData.payload).set(text);
    Atomics.store(control, ${CTRL.LENGTH}, text.length);
    Atomics.store(control, ${CTRL.STATUS}, 1);
  }
  Atomics.store(control, ${CTRL.STATE}, ${STATE.FAILED});
  Atomics.notify(control, ${CTRL.STATE});
  throw e;
});`)
}`);
const MODES = /^(missing|wp|minor)(\+(missing|wp|minor))*$/;

/** The longest timer delay (setTimeout fires at once beyond it). */
const MAX_DELAY_MS = 2 ** 31 - 1;

function nonNegative(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new TypeError(`FaultHandler.start: ${name} must be a non-negative number`);
  }
  return value;
}

/** A timeout option, at most `MAX_DELAY_MS` (about 24.8 days: longer ones wait that long). */
function delay(value: unknown, name: string, fallback: number): number {
  return Math.min(nonNegative(value, name, fallback), MAX_DELAY_MS);
}

function isIterable(value: unknown): value is Iterable<unknown> {
  return value !== null && typeof value === "object" &&
    typeof (value as Iterable<unknown>)[Symbol.iterator] === "function";
}

/**
 * The built-in `copyFrom` policy reading from memory in this process: that memory
 * must be mapped, and must not be registered for missing faults on this
 * userfaultfd — the handler's own `UFFDIO_COPY` would fault on it and wait for
 * itself (a freed source whose addresses the destination reused does exactly that).
 */
function checkCopySource(
  policy: PolicySpec,
  registrations: readonly { start: bigint; end: bigint; mode: string }[],
  operation: string,
): void {
  if (policy.module !== BUILTIN_POLICIES || policy.export !== "copyPolicy") return;
  const source = (policy.options as { source?: CopySourceSpec } | null)?.source;
  if (source?.kind !== "memory" || source.length === 0) return;
  const start = source.address;
  const end = start + BigInt(source.length);
  for (const r of registrations) {
    if (r.start < end && start < r.end && r.mode.split("+").includes("missing")) {
      throw invalid(
        operation,
        "the copyFrom source overlaps memory registered for missing faults on this userfaultfd: the handler would " +
          "fault on its own source and wait for itself",
        { source: start, length: source.length, registered: r.start },
      );
    }
  }
  const holes = unmappedParts(start, end);
  if (holes && holes.length > 0) {
    throw invalid(
      operation,
      "the copyFrom source is not mapped (freed?)",
      { source: start, hole: holes[0]!.start },
      ERRNO.EFAULT,
    );
  }
}

function checkSpec(policy: PolicySpec): void {
  if (
    policy === null || typeof policy !== "object" || typeof policy.module !== "string" ||
    typeof policy.export !== "string" || typeof policy.name !== "string"
  ) {
    throw new TypeError("FaultHandler.start: policy must be a PolicySpec (from policies.unprotect(), …)");
  }
}

/**
 * Serves a userfaultfd's faults from a Worker with a policy. Start it with
 * {@linkcode FaultHandler.start}; stop it with `stop()` or `await using`.
 *
 * @example Missing pages filled from an image, read by the main isolate
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * const image = new Uint8Array(4 * Region.pageSize).map((_, i) => i % 251);
 * using mem = Region.map(image.length);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { missing: true });
 * const handler = await FaultHandler.start(uffd, policies.copyFrom(image));
 * console.log(mem.bytes[Region.pageSize + 7] === image[Region.pageSize + 7]); // true
 * console.log((await handler.stop()).missing); // 1
 * ```
 */
export class FaultHandler implements AsyncDisposable {
  /** The userfaultfd served. */
  readonly uffd: Userfaultfd;
  /** The policy running. */
  readonly policy: PolicySpec;
  #ranges: readonly TrackedRange[];
  #pages: number;
  readonly #maxPages: number;

  readonly #worker: Worker;
  readonly #own: Userfaultfd;
  readonly #eventFd: number;
  readonly #control: Int32Array;
  readonly #payload: Uint8Array;
  readonly #stats: Float64Array;
  readonly #written: Uint8Array;
  readonly #collected: Uint8Array;
  readonly #onEvent: ((event: UffdEvent) => void) | undefined;
  readonly #controlTimeout: number;
  readonly #stopTimeout: number;
  readonly #done: Promise<HandlerStats>;
  #resolveDone!: (stats: HandlerStats) => void;
  #rejectDone!: (error: FaultHandlerError) => void;
  #ready: PromiseWithResolvers<void> = Promise.withResolvers();
  #failure: FaultHandlerError | undefined;
  #stopped = false;
  #settled = false;
  #exited = false;
  #stopping: Promise<HandlerStats> | undefined;
  #unwatch: () => void;

  private constructor(
    uffd: Userfaultfd,
    policy: PolicySpec,
    ranges: TrackedRange[],
    options: FaultHandlerOptions,
    own: Userfaultfd,
    eventFd: number,
  ) {
    this.uffd = uffd;
    this.policy = policy;
    this.#ranges = Object.freeze(ranges);
    this.#pages = ranges.reduce((n, r) => n + r.pages, 0);
    this.#maxPages = Math.max(this.#pages, options.maxPages ?? 0);
    this.#own = own;
    this.#eventFd = eventFd;
    this.#control = new Int32Array(new SharedArrayBuffer(CTRL.SIZE * 4));
    this.#payload = new Uint8Array(new SharedArrayBuffer(PAYLOAD_BYTES));
    this.#stats = statsBuffer();
    // Growable: addRanges() grows them; views without a length follow the growth on both sides.
    const bitmap = () =>
      new SharedArrayBuffer(Math.max(1, bitmapBytes(this.#pages)), {
        maxByteLength: Math.max(1, bitmapBytes(this.#maxPages)),
      });
    this.#written = new Uint8Array(bitmap());
    this.#collected = new Uint8Array(bitmap());
    this.#onEvent = options.onEvent;
    this.#controlTimeout = delay(options.controlTimeoutMs, "controlTimeoutMs", 5000);
    this.#stopTimeout = delay(options.stopTimeoutMs, "stopTimeoutMs", 5000);
    this.#done = new Promise((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    this.#done.catch(() => {}); // observed through done/stop(); never an unhandled rejection
    const data: HandlerWorkerData = {
      uffd: uffd.share(),
      own: own.share(),
      eventFd,
      control: this.#control.buffer as SharedArrayBuffer,
      payload: this.#payload.buffer as SharedArrayBuffer,
      stats: this.#stats.buffer as SharedArrayBuffer,
      written: this.#written.buffer as SharedArrayBuffer,
      collected: this.#collected.buffer as SharedArrayBuffer,
      ranges: ranges.map((r) => ({
        start: Number(r.address),
        pages: r.pages,
        firstPage: r.firstPage,
        wp: r.mode.split("+").includes("wp"),
        pageSize: r.pageSize,
      })),
      pages: this.pages,
      policy,
      forwardEvents: options.onEvent !== undefined,
      batch: options.batch ?? 64,
      spinMicros: options.spinMicros ?? (navigator.hardwareConcurrency > 1 ? 30 : 0),
    };
    this.#worker = new Worker(BOOTSTRAP, { workerData: data });
    this.#worker.on("message", (m: WorkerMessage) => this.#message(m));
    this.#worker.on("error", (e: unknown) => this.#fail(e, "the fault handler's Worker failed"));
    this.#worker.on("exit", (code: number) => this.#exit(code));
    this.#unwatch = onClose(uffd, () => this.#wake());
  }

  /**
   * Starts a handler for `uffd` (open, non-blocking, with its ranges registered)
   * running `policy`, and resolves once the Worker is serving. If the Worker
   * cannot start (the policy module fails to load, its factory throws), the
   * userfaultfd is closed and the promise rejects with a `FaultHandlerError`.
   *
   * @param uffd Open, non-blocking, with its ranges registered.
   * @param policy What serves the faults (`policies.unprotect()`, …).
   * @param options Tracked ranges, events, batch size, timeouts.
   * @returns The running handler, once its Worker serves.
   * @throws {FaultHandlerError} When the Worker cannot start (the policy does not load, its factory throws, the start
   *   times out); the userfaultfd is closed then.
   * @throws {UffdError} For a closed or blocking userfaultfd, or ranges it does not have registered.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * await using handler = await FaultHandler.start(uffd, policies.zerofill());
   * console.log(handler.state, handler.pages); // running 1
   * ```
   */
  static async start(uffd: Userfaultfd, policy: PolicySpec, options: FaultHandlerOptions = {}): Promise<FaultHandler> {
    const { handler, startTimeout } = FaultHandler.#launch(uffd, policy, options, "FaultHandler.start");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new FaultHandlerError(`the fault handler did not start within ${startTimeout} ms`)),
        startTimeout,
      );
    });
    try {
      await Promise.race([handler.#ready.promise, timeout]);
    } catch (e) {
      const error = e instanceof FaultHandlerError ? e : new FaultHandlerError("the fault handler failed to start", {
        cause: e,
      });
      handler.#fail(error, error.message);
      handler.#worker.terminate();
      throw error;
    } finally {
      clearTimeout(timer);
    }
    handler.#worker.unref();
    return handler;
  }

  /**
   * Same as {@linkcode FaultHandler.start}, for callers that cannot await (a
   * synchronous API that must not return before its memory is served): the main
   * isolate waits with `Atomics.wait` until the Worker serves (bounded by
   * `startTimeoutMs`). The Worker loads without the main isolate's event loop, so
   * this does not deadlock; it blocks the main isolate for the Worker's start-up
   * (tens of milliseconds). On failure the userfaultfd is closed and a
   * `FaultHandlerError` is thrown, with the Worker's error as its cause.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(4 * Region.pageSize, { populate: true });
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { wp: true });
   * const handler = FaultHandler.startSync(uffd, policies.unprotect());
   * uffd.writeProtect(mem);
   * mem.bytes[0] = 1;
   * console.log(handler.collect()); // [{ firstPage: 0, pages: 1 }]
   * handler.stopSync();
   * ```
   */
  static startSync(uffd: Userfaultfd, policy: PolicySpec, options: FaultHandlerOptions = {}): FaultHandler {
    const { handler, startTimeout } = FaultHandler.#launch(uffd, policy, options, "FaultHandler.startSync");
    const ctrl = handler.#control;
    const deadline = Date.now() + startTimeout;
    let error: FaultHandlerError | undefined;
    for (;;) {
      const state = Atomics.load(ctrl, CTRL.STATE);
      if (state === STATE.RUNNING) break;
      if (state !== STATE.STARTING) {
        const cause = handler.#workerError();
        error = new FaultHandlerError(`the fault handler failed to start${cause ? `: ${cause.message}` : ""}`, {
          cause,
        });
        break;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        error = new FaultHandlerError(`the fault handler did not start within ${startTimeout} ms`);
        break;
      }
      Atomics.wait(ctrl, CTRL.STATE, STATE.STARTING, Math.min(left, 100));
    }
    if (error) {
      handler.#fail(error, error.message);
      handler.#worker.terminate();
      throw error;
    }
    handler.#worker.unref();
    return handler;
  }

  /** What `start` and `startSync` share: checks, the fds, the Worker. */
  static #launch(
    uffd: Userfaultfd,
    policy: PolicySpec,
    options: FaultHandlerOptions,
    operation: string,
  ): { handler: FaultHandler; startTimeout: number } {
    if (!(uffd instanceof Userfaultfd)) throw new TypeError(`${operation}: uffd must be a Userfaultfd`);
    checkSpec(policy);
    if (options === null || typeof options !== "object") throw new TypeError(`${operation}: options must be an object`);
    if (options.onEvent !== undefined && typeof options.onEvent !== "function") {
      throw new TypeError(`${operation}: onEvent must be a function`);
    }
    const batch = nonNegative(options.batch, "batch", 64);
    if (!Number.isInteger(batch) || batch < 1 || batch > 4096) {
      throw invalid(operation, "batch must be an integer in [1, 4096]", { batch });
    }
    nonNegative(options.spinMicros, "spinMicros", 0);
    const maxPages = nonNegative(options.maxPages, "maxPages", 0);
    if (!Number.isSafeInteger(maxPages)) throw invalid(operation, "maxPages must be an integer", { maxPages });
    const startTimeout = delay(options.startTimeoutMs, "startTimeoutMs", 10_000);
    delay(options.controlTimeoutMs, "controlTimeoutMs", 5000);
    delay(options.stopTimeoutMs, "stopTimeoutMs", 5000);
    if (options.ranges !== undefined && !isIterable(options.ranges)) {
      throw new TypeError(`${operation}: ranges must be an iterable of ranges`);
    }
    try {
      structuredClone(policy.options);
    } catch (e) {
      throw new TypeError(
        `${operation}: the options of the ${policy.name} policy must be structured-cloneable (they go to a Worker): ${
          (e as Error).message
        }`,
      );
    }
    if (uffd.closed) throw invalid(operation, "the userfaultfd is closed", { fd: uffd.fd }, ERRNO.EBADF);
    if (!uffd.nonblocking) {
      throw invalid(operation, "the handler polls the userfaultfd: open it with { nonblocking: true } (the default)", {
        fd: uffd.fd,
      });
    }
    const registrations = uffd.registrations;
    const given = options.ranges === undefined
      ? registrations.map((r) => ({ address: r.start, length: r.end - r.start }))
      : [...options.ranges];
    checkCopySource(policy, registrations, operation);
    const ranges = trackRanges(given, registrations, operation);
    for (const r of ranges) {
      if (!MODES.test(r.mode)) throw invalid(operation, `unexpected registration mode ${r.mode}`);
    }
    // The handler's own reference, the fd it polls: the caller's close() cannot pull it from under the Worker.
    const own = uffd.duplicate();
    const eventFd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (eventFd < 0) {
      own.close();
      throw failure("eventfd", eventFd);
    }
    try {
      return { handler: new FaultHandler(uffd, policy, ranges, options, own, eventFd), startTimeout };
    } catch (e) {
      own.close();
      libc.close(eventFd);
      throw e;
    }
  }

  /** The tracked ranges and their page numbering (what `collect()` and `written()` number pages by). */
  get ranges(): readonly TrackedRange[] {
    return this.#ranges;
  }

  /** Number of tracked pages. */
  get pages(): number {
    return this.#pages;
  }

  /** The most pages the handler can track (`maxPages`): room for `addRanges()`. */
  get maxPages(): number {
    return this.#maxPages;
  }

  /**
   * The statistics so far, read from shared memory (no round trip; also while the
   * Worker is busy). `faults` and `resolved` count a fault before the ioctl that
   * resolves it wakes its writer: read after the write returns, they include it —
   * exact for a writer that checks them after its own fault. The latency histogram
   * and the other counters may lag by the rest of the batch; every round trip
   * (`collect()`, `written()`, `control()`, `stop()`) is a synchronisation point for all
   * of them.
   */
  get stats(): HandlerStats {
    return readStats(this.#stats);
  }

  /** Where the handler is in its life. */
  get state(): HandlerState {
    if (this.#failure) return "failed";
    switch (Atomics.load(this.#control, CTRL.STATE)) {
      case STATE.STARTING:
        return "starting";
      case STATE.RUNNING:
        return this.#settled ? "stopped" : "running";
      case STATE.FAILED:
        return "failed";
      default:
        return "stopped";
    }
  }

  /**
   * Settles when the handler has ended and its Worker has exited (every fd it used
   * is closed by then): the final statistics once it stopped (by `stop()`, or
   * because the userfaultfd was closed), a `FaultHandlerError` with the cause if it
   * failed. Waiting on it keeps the process alive until then.
   */
  get done(): Promise<HandlerStats> {
    if (!this.#settled && !this.#exited) this.#worker.ref();
    return this.#done;
  }

  /**
   * Reports the tracked pages recorded as written since the last `collect()`,
   * write-protects them again and forgets them — in one step of the Worker,
   * between two fault batches, so that no write is lost: a write that lands
   * before its page is re-protected is reported now, a later one faults and is
   * reported by the next call. Synchronous: the main isolate waits (`Atomics.wait`)
   * for the Worker. Page numbers are those of `ranges`.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(8 * Region.pageSize, { populate: true });
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { wp: true });
   * await using handler = await FaultHandler.start(uffd, policies.unprotect());
   * uffd.writeProtect(mem);
   * mem.page(2)[0] = 1;
   * console.log(handler.collect(), handler.collect()); // [{ firstPage: 2, pages: 1 }] []
   * ```
   */
  collect(): PageRun[] {
    this.#request(OP.COLLECT, "collect");
    return pageRuns(this.#collected, this.pages);
  }

  /**
   * The tracked pages recorded as written since the last `collect()`, without
   * changing anything (read straight from shared memory).
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(8 * Region.pageSize, { populate: true });
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { wp: true });
   * await using handler = await FaultHandler.start(uffd, policies.unprotect({ chunk: 2 }));
   * uffd.writeProtect(mem);
   * mem.page(5)[0] = 1;
   * console.log(handler.written()); // [{ firstPage: 4, pages: 2 }]
   * ```
   */
  written(): PageRun[] {
    return pageRuns(this.#written, this.pages);
  }

  /**
   * Calls the policy's `control(op, arg)` in the Worker, between two fault batches,
   * and returns its result. `arg` and the result travel as JSON (at most 64 KiB).
   * Synchronous, like `collect()`; a policy error is thrown here, and the handler
   * keeps running.
   *
   * @example A policy module (here inline, as a `data:` URL) with a control operation
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * const source = `export default (options, context) => {
   *   let served = 0;
   *   return {
   *     fault(fault) { served++; context.zeropage(fault.page, fault.pageSize); },
   *     control(op) { if (op === "served") return served; throw new Error("unknown " + op); },
   *   };
   * };`;
   * using mem = Region.map(4 * Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * await using handler = await FaultHandler.start(uffd, policies.module(`data:text/javascript,${encodeURIComponent(source)}`));
   * mem.bytes[0] = 1;
   * mem.bytes[2 * Region.pageSize] = 1;
   * console.log(handler.control("served")); // 2
   * ```
   */
  control(op: string, arg?: unknown): unknown {
    if (typeof op !== "string") throw new TypeError("FaultHandler.control: op must be a string");
    let json: string;
    try {
      json = JSON.stringify({ op, arg: arg ?? null });
    } catch (e) {
      throw new TypeError(`FaultHandler.control: arg must be JSON-serializable: ${(e as Error).message}`);
    }
    const request = new TextEncoder().encode(json);
    if (request.length > PAYLOAD_BYTES) {
      throw new RangeError(
        `FaultHandler.control: the argument takes ${request.length} bytes; at most ${PAYLOAD_BYTES}`,
      );
    }
    this.#payload.set(request);
    Atomics.store(this.#control, CTRL.LENGTH, request.length);
    const length = this.#request(OP.CONTROL, `control(${JSON.stringify(op)})`);
    const text = new TextDecoder().decode(this.#payload.slice(0, length));
    if (Atomics.load(this.#control, CTRL.STATUS) !== 0) throw deserializeError(JSON.parse(text) as SerializedError);
    return JSON.parse(text);
  }

  /**
   * Tracks more ranges while the handler runs (a region that grew, a new mapping):
   * each must already be registered on the userfaultfd, and their pages are
   * numbered after the current ones, in order. Synchronous, like `collect()`: when
   * it returns, the Worker records faults in the new ranges. Register a range
   * first, add it, and only then write-protect it — a fault the handler cannot
   * place in a tracked range is resolved but not recorded. Fails with `EINVAL` when
   * the handler would track more than `maxPages` pages.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using a = Region.map(2 * Region.pageSize, { populate: true });
   * using b = Region.map(2 * Region.pageSize, { populate: true });
   * using uffd = Userfaultfd.open();
   * uffd.register(a, { wp: true });
   * await using handler = await FaultHandler.start(uffd, policies.unprotect(), { maxPages: 4 });
   * uffd.writeProtect(a);
   * uffd.register(b, { wp: true });
   * handler.addRanges([b]); // b's pages are 2 and 3
   * uffd.writeProtect(b);
   * b.bytes[Region.pageSize] = 1;
   * console.log(handler.pages, handler.collect()); // 4 [{ firstPage: 3, pages: 1 }]
   * ```
   */
  addRanges(ranges: Iterable<Range>): readonly TrackedRange[] {
    const operation = "FaultHandler.addRanges";
    if (ranges === null || typeof ranges !== "object" || !(Symbol.iterator in ranges)) {
      throw new TypeError(`${operation}: ranges must be an iterable of ranges`);
    }
    const added = trackRanges(ranges, this.uffd.registrations, operation, this.#pages, this.#ranges);
    for (const r of added) {
      if (!MODES.test(r.mode)) throw invalid(operation, `unexpected registration mode ${r.mode}`);
    }
    const total = this.#pages + added.reduce((n, r) => n + r.pages, 0);
    if (total > this.#maxPages) {
      throw invalid(
        operation,
        `the handler would track ${total} pages; it was started with room for ${this.#maxPages} (maxPages)`,
        { pages: total },
      );
    }
    const request = new TextEncoder().encode(JSON.stringify(added.map((r) => ({
      start: Number(r.address),
      pages: r.pages,
      firstPage: r.firstPage,
      wp: r.mode.split("+").includes("wp"),
      pageSize: r.pageSize,
    }))));
    if (request.length > PAYLOAD_BYTES) throw new RangeError(`${operation}: too many ranges at once`);
    const bytes = Math.max(1, bitmapBytes(total));
    for (const bitmap of [this.#written, this.#collected]) {
      const buffer = bitmap.buffer as SharedArrayBuffer;
      if (buffer.byteLength < bytes) buffer.grow(bytes);
    }
    this.#payload.set(request);
    Atomics.store(this.#control, CTRL.LENGTH, request.length);
    this.#request(OP.ADD_RANGES, "addRanges");
    this.#ranges = Object.freeze([...this.#ranges, ...added]);
    this.#pages = total;
    return added;
  }

  /**
   * Stops the handler: the Worker serves the faults already queued (for up to
   * 200 ms), closes its own reference to the userfaultfd and exits. The userfaultfd
   * itself stays open and registered: close it (or unregister) so that later
   * faults do not wait for a handler that is gone. Resolves to the final
   * statistics, or rejects with the handler's failure. Calling it again returns the
   * same promise.
   *
   * @returns The final statistics; rejects with the handler's failure.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * const handler = await FaultHandler.start(uffd, policies.zerofill());
   * mem.bytes[0] = 1;
   * const stats = await handler.stop();
   * console.log(stats.resolved, handler.state); // 1 stopped
   * ```
   */
  stop(): Promise<HandlerStats> {
    if (this.#stopping) return this.#stopping;
    if (this.#settled || this.#exited) return this.#stopping = this.#done;
    this.#worker.ref();
    Atomics.store(this.#control, CTRL.STOP, 1);
    this.#wake();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((resolve) => timer = setTimeout(resolve, this.#stopTimeout));
    this.#stopping = Promise.race([this.#done.then(() => {}, () => {}), timeout]).then(() => {
      clearTimeout(timer);
      if (!this.#settled) {
        this.#fail(
          new FaultHandlerError(`the fault handler did not stop within ${this.#stopTimeout} ms; terminated`),
          "",
        );
        this.#worker.terminate();
        this.#worker.unref(); // terminate() cannot interrupt a blocked FFI call: do not keep the process alive for it
      }
      return this.#done;
    });
    return this.#stopping;
  }

  /**
   * Same as `stop()`, for callers that cannot await: asks the Worker to stop and
   * waits with `Atomics.wait` (at most `timeoutMs`, default `stopTimeoutMs`) until
   * it has served the faults already queued and closed its reference to the
   * userfaultfd. The rest of the ending — the Worker's exit, its eventfd, `done` —
   * follows on the event loop. If the Worker does not stop in time, the
   * userfaultfd is closed (waking every waiter) and the Worker terminated. Returns
   * the statistics; throws the handler's failure, if it failed. As with `stop()`,
   * the userfaultfd itself stays open: close it.
   *
   * @example
   * ```ts
   * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * const handler = FaultHandler.startSync(uffd, policies.zerofill());
   * mem.bytes[0] = 1;
   * console.log(handler.stopSync().resolved, handler.state); // 1 stopped
   * ```
   */
  stopSync(timeoutMs: number = this.#stopTimeout): HandlerStats {
    const ctrl = this.#control;
    if (!this.#settled && !this.#exited && Atomics.load(ctrl, CTRL.STATE) === STATE.RUNNING) {
      // Kept alive until the Worker has exited and `done` settled (moments later), as with stop().
      this.#worker.ref();
      Atomics.store(ctrl, CTRL.STOP, 1);
      this.#wake();
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (Atomics.load(ctrl, CTRL.STATE) !== STATE.RUNNING) break;
        const left = deadline - Date.now();
        if (left <= 0) {
          this.#fail(new FaultHandlerError(`the fault handler did not stop within ${timeoutMs} ms; terminated`), "");
          this.#worker.terminate();
          this.#worker.unref(); // terminate() cannot interrupt a blocked FFI call
          break;
        }
        Atomics.wait(ctrl, CTRL.STATE, STATE.RUNNING, Math.min(left, 100));
      }
    }
    this.#stopping ??= this.#done;
    if (this.#failure) throw this.#failure;
    if (Atomics.load(ctrl, CTRL.STATE) === STATE.FAILED) {
      // The Worker failed; its message has not reached this side yet.
      const cause = this.#workerError();
      throw new FaultHandlerError(`the fault handler failed${cause ? `: ${cause.message}` : ""}`, { cause });
    }
    return this.stats;
  }

  /** The error a failed Worker left in the payload (see `_worker.ts`), if any. */
  #workerError(): Error | undefined {
    const ctrl = this.#control;
    if (Atomics.load(ctrl, CTRL.STATE) !== STATE.FAILED || Atomics.load(ctrl, CTRL.STATUS) === 0) return undefined;
    try {
      const text = new TextDecoder().decode(this.#payload.slice(0, Atomics.load(ctrl, CTRL.LENGTH)));
      return deserializeError(JSON.parse(text) as SerializedError);
    } catch {
      return undefined;
    }
  }

  /** Same as `stop()`, ignoring a failure (already reported through `done`). */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.stop();
    } catch { /* reported through done and stop() */ }
  }

  /** Wakes the Worker through the eventfd (until the Worker has exited and the eventfd is closed). */
  #wake(): void {
    if (!this.#exited) libc.eventfdSignal(this.#eventFd);
  }

  /** Sends a control request and waits for its answer; returns `CTRL.LENGTH`. */
  #request(op: number, what: string): number {
    const ctrl = this.#control;
    if (this.#failure) throw this.#failure;
    if (this.#settled || this.#exited || Atomics.load(ctrl, CTRL.STATE) !== STATE.RUNNING) {
      throw new FaultHandlerError(`${what}: the fault handler is ${this.state}`);
    }
    const seq = Atomics.load(ctrl, CTRL.REQUEST) + 1;
    Atomics.store(ctrl, CTRL.OP, op);
    Atomics.store(ctrl, CTRL.REQUEST, seq);
    this.#wake();
    const deadline = Date.now() + this.#controlTimeout;
    for (;;) {
      const answered = Atomics.load(ctrl, CTRL.RESPONSE);
      if (answered === seq) break;
      const state = Atomics.load(ctrl, CTRL.STATE);
      if (state !== STATE.RUNNING) {
        throw this.#failure ?? new FaultHandlerError(
          `${what}: the fault handler ${state === STATE.FAILED ? "failed" : "stopped"} before answering`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new FaultHandlerError(`${what}: no answer from the fault handler within ${this.#controlTimeout} ms`);
      }
      Atomics.wait(ctrl, CTRL.RESPONSE, answered, Math.min(left, 100));
    }
    if (op !== OP.CONTROL && Atomics.load(ctrl, CTRL.STATUS) !== 0) {
      const text = new TextDecoder().decode(this.#payload.slice(0, Atomics.load(ctrl, CTRL.LENGTH)));
      throw deserializeError(JSON.parse(text) as SerializedError);
    }
    return Atomics.load(ctrl, CTRL.LENGTH);
  }

  #message(message: WorkerMessage): void {
    switch (message.type) {
      case "ready":
        this.#ready.resolve();
        return;
      case "stopped":
        this.#stopped = true;
        this.#worker.terminate(); // its work is done; do not wait for what a policy may have left running
        return;
      case "failed": {
        // The Worker closed the userfaultfd before reporting; closing again is harmless.
        const cause = deserializeError(message.error);
        this.#failure = new FaultHandlerError(`the fault handler failed: ${cause.message}`, { cause });
        this.uffd.close();
        this.#ready.reject(this.#failure);
        this.#worker.terminate();
        return;
      }
      case "event": {
        const event = message.event;
        this.#onEvent?.(event.type === "fork" ? { type: "fork", uffd: Userfaultfd.adopt(event.uffd) } : event);
        return;
      }
    }
  }

  /** The handler failed without a report from the Worker: make sure nothing stays blocked, then reject. */
  #fail(cause: unknown, message: string): void {
    if (this.#settled) return;
    this.#failure ??= cause instanceof FaultHandlerError ? cause : new FaultHandlerError(message, { cause });
    this.uffd.close();
    this.#own.close();
    this.#ready.reject(this.#failure);
    this.#settle();
  }

  #settle(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#unwatch();
    this.#ready.promise.catch(() => {});
    if (this.#failure) this.#rejectDone(this.#failure);
    else this.#resolveDone(this.stats);
  }

  /** The Worker has exited: release what it used, and settle with what it reported. */
  #exit(code: number): void {
    this.#exited = true;
    libc.close(this.#eventFd);
    this.#own.close();
    if (this.#failure || this.#stopped) return this.#settle();
    if (Atomics.load(this.#control, CTRL.STATE) === STATE.STOPPED) return this.#settle();
    this.#fail(new Error(`the Worker exited with code ${code}`), "the fault handler's Worker exited without reporting");
  }
}
