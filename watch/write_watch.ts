/**
 * {@linkcode WriteWatch}: "which pages of this memory were written since I last
 * asked?" — the `GetWriteWatch` model, for a `Region`, an `ArrayBuffer` (or
 * `SharedArrayBuffer`), a typed array or `DataView`, or a `WebAssembly.Memory`.
 * Writes by JavaScript, WebAssembly and native code are all seen: the kernel
 * tracks them. `written()` answers, `reset()` marks every page clean, `collect()`
 * does both atomically; answers are {@linkcode WriteSet}s. Backends, chosen in
 * this order: `async` (WP_ASYNC + PAGEMAP_SCAN, Linux 6.7+), `sync` (a fault
 * handler Worker), `soft-dirty`. What pages, growth, relocation, lost pages and
 * each backend's guarantees mean: `docs/write-watch.md`.
 *
 * @example
 * ```ts
 * import { WriteWatch } from "@uffd/uffd";
 * const memory = new WebAssembly.Memory({ initial: 4, maximum: 16 }); // 64 KiB wasm pages
 * using watch = WriteWatch.start(memory);
 * new Uint8Array(memory.buffer)[70_000] = 1;
 * console.log([...watch.collect()]); // [17]: byte 70000 is in 4 KiB page 17
 * memory.grow(1);
 * new Uint8Array(memory.buffer)[4 * 65536 + 5] = 1; // written before the watch saw the growth
 * const set = watch.collect();
 * console.log(set.grewFrom, [...set]); // 64 [64]
 * ```
 *
 * @module
 */

import { ERRNO, UffdError } from "../kernel/errors.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import { Region } from "../kernel/region.ts";
import { pageCeil, pageFloor } from "../kernel/range.ts";
import { checkTarget, locateTarget, type MemoryTarget, sharedMemory, type TargetSpan } from "../kernel/target.ts";
import { type Feature, FEATURES } from "../ffi/uapi.ts";
import { asyncBackend } from "./_async.ts";
import type { UntouchedPages } from "../kernel/profile.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend, WriteWatchBackendName } from "./_backend.ts";
import { softDirtyBackend } from "./_soft_dirty.ts";
import { syncBackend } from "./_sync.ts";
import { Tracker } from "./_tracker.ts";
import { RunList, WriteSet } from "./write_set.ts";

export type { WriteWatchBackendName } from "./_backend.ts";

/** Options of {@linkcode WriteWatch.start}. */
export interface WriteWatchOptions {
  /** The backend to use; `"auto"` (default) picks the best one available: async, then sync, then soft-dirty. */
  backend?: WriteWatchBackendName | "auto";
  /**
   * Backends automatic selection must not use, and userfaultfd features the
   * backends must do without (to exercise fallbacks): `"WP_ASYNC"` makes the
   * `async` backend unavailable, so that automatic selection falls back to `sync`;
   * `"WP_UNPOPULATED"` makes the `sync` backend pre-populate the memory instead.
   */
  decline?: Iterable<WriteWatchBackendName | Feature>;
}

/** Whether a backend can run here, and why not. */
export interface BackendAvailability {
  /** The backend. */
  readonly name: WriteWatchBackendName;
  /** `true` when it can watch private anonymous memory on this machine. */
  readonly available: boolean;
  /** Why not, when it cannot. */
  readonly reason: string | undefined;
}

/** The backends in the order automatic selection tries them. */
const PROVIDERS: readonly BackendProvider[] = [asyncBackend, syncBackend, softDirtyBackend];
const NAMES: readonly WriteWatchBackendName[] = PROVIDERS.map((p) => p.name);

function span(location: TargetSpan): { address: bigint; head: number; pages: number } {
  const address = pageFloor(location.address);
  const end = pageCeil(location.address + BigInt(location.length));
  return { address, head: Number(location.address - address), pages: Number(end - address) / PAGE_SIZE };
}

/** Whether the memory's first and last pages also hold bytes that are not the memory's. */
function partialPages(location: TargetSpan): { first: boolean; last: boolean } {
  return {
    first: location.address % PAGE_SIZE_N !== 0n,
    last: (location.address + BigInt(location.length)) % PAGE_SIZE_N !== 0n,
  };
}

function refuse(name: WriteWatchBackendName, why: string, errno: number): UffdError {
  return new UffdError({ errno, operation: "WriteWatch", detail: `the ${name} backend cannot be used: ${why}` });
}

/**
 * Watches memory for writes: see the module documentation.
 *
 * @example
 * ```ts
 * import { Region, WriteWatch } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * using watch = WriteWatch.start(mem);
 * mem.bytes[5 * Region.pageSize] = 1;
 * console.log([...watch.written()]); // [5]   (not reset)
 * console.log([...watch.collect()]); // [5]   (reset)
 * console.log([...watch.collect()]); // []
 * ```
 */
export class WriteWatch implements Disposable {
  readonly #target: MemoryTarget;
  readonly #provider: BackendProvider;
  readonly #shared: boolean;
  readonly #decline: readonly Feature[] | undefined;
  #backend: WriteWatchBackend;
  #address: bigint;
  #head: number;
  #byteLength: number;
  #pages: number;
  readonly #written = new RunList();
  readonly #lost = new RunList();
  /** Pages found written by growth, reported by `written()` until the next reset. */
  readonly #pending = new RunList();
  /** The memory moved: every page counts as written until the next reset. */
  #relocatedPending = false;
  /** The page count before the first growth since the last reset. */
  #grewFrom: number | undefined;
  #stopped = false;

  private constructor(
    target: MemoryTarget,
    provider: BackendProvider,
    backend: WriteWatchBackend,
    location: TargetSpan,
    watched: WatchedSpan,
  ) {
    const s = span(location);
    this.#target = target;
    this.#provider = provider;
    this.#backend = backend;
    this.#shared = watched.shared;
    this.#decline = watched.decline;
    this.#address = s.address;
    this.#head = s.head;
    this.#byteLength = location.length;
    this.#pages = s.pages;
  }

  /**
   * Starts watching `target`: from now on every write to it is recorded. Fails with
   * a `UffdError` saying why when the forced backend (or, with `"auto"`, every
   * backend) cannot run here.
   *
   * @param target The memory to watch.
   * @param options The backend (default: the best available) and what to decline.
   * @returns A watch that has recorded nothing yet.
   * @throws {TypeError} For a target that is not memory, an unknown backend or name.
   * @throws {UffdError} `EINVAL` for empty memory; the reason when the backend (every backend, with `"auto"`) cannot
   *   run here.
   *
   * @example
   * ```ts
   * import { WriteWatch } from "@uffd/uffd";
   * const bytes = new Uint8Array(1 << 20);
   * using watch = WriteWatch.start(bytes);
   * bytes[0] = 1;
   * console.log(watch.backend, watch.collect().count); // async 1
   * ```
   */
  static start(target: MemoryTarget, options: WriteWatchOptions = {}): WriteWatch {
    checkTarget(target, "WriteWatch.start");
    if (options === null || typeof options !== "object") {
      throw new TypeError("WriteWatch.start: options must be an object");
    }
    const wanted = options.backend ?? "auto";
    if (wanted !== "auto" && !NAMES.includes(wanted)) {
      throw new TypeError(`WriteWatch.start: unknown backend ${JSON.stringify(wanted)} (${NAMES.join(", ")} or auto)`);
    }
    const declined = new Set<string>();
    const decline = options.decline ?? [];
    if (typeof decline === "string" || typeof (decline as Iterable<unknown>)[Symbol.iterator] !== "function") {
      throw new TypeError("WriteWatch.start: decline must be a list of backend or feature names");
    }
    const features: Feature[] = [];
    for (const name of decline) {
      if (NAMES.includes(name as WriteWatchBackendName)) declined.add(name);
      else if (FEATURES.some((f) => f.name === name)) features.push(name as Feature);
      else {
        throw new TypeError(`WriteWatch.start: unknown backend or feature ${JSON.stringify(name)} in decline`);
      }
    }
    const location = locateTarget(target);
    if (location.length === 0) {
      throw new UffdError({
        errno: ERRNO.EINVAL,
        operation: "WriteWatch.start",
        detail: "the memory is empty, detached or unmapped",
        beforeSyscall: true,
      });
    }
    const s = span(location);
    const watched: WatchedSpan = {
      address: s.address,
      pages: s.pages,
      shared: sharedMemory(target, s.address, s.address + BigInt(s.pages * PAGE_SIZE)),
      partial: partialPages(location),
      decline: Object.freeze(features),
    };
    const choose = (): BackendProvider => {
      const candidates = wanted === "auto" ? PROVIDERS : PROVIDERS.filter((p) => p.name === wanted);
      const reasons: string[] = [];
      for (const provider of candidates) {
        if (declined.has(provider.name)) {
          if (wanted !== "auto") throw refuse(provider.name, "declined by the caller's options", ERRNO.EINVAL);
          reasons.push(`${provider.name}: declined`);
          continue;
        }
        const why = provider.unavailable(watched);
        if (why !== undefined) {
          if (wanted !== "auto") throw refuse(provider.name, why, ERRNO.EOPNOTSUPP);
          reasons.push(`${provider.name}: ${why}`);
          continue;
        }
        return provider;
      }
      throw new UffdError({
        errno: ERRNO.EOPNOTSUPP,
        operation: "WriteWatch",
        detail: `no write-watch backend can run here (${reasons.join("; ")})`,
      });
    };
    // A memory watched already (by another WriteWatch, a Checkpoint): this watch shares its tracker.
    const consumer = Tracker.acquire(watched, wanted, choose);
    return new WriteWatch(target, consumer.tracker.provider, consumer, location, watched);
  }

  /**
   * Which backends can watch private anonymous memory on this machine, in the order
   * automatic selection tries them.
   *
   * @example
   * ```ts
   * import { WriteWatch } from "@uffd/uffd";
   * for (const b of WriteWatch.backends()) console.log(b.name, b.available, b.reason ?? "");
   * ```
   */
  static backends(): BackendAvailability[] {
    const probe: WatchedSpan = { address: 0n, pages: 1, shared: false };
    return PROVIDERS.map((p) => {
      const reason = p.unavailable(probe);
      return { name: p.name, available: reason === undefined, reason };
    });
  }

  /** The backend in use. */
  get backend(): WriteWatchBackendName {
    return this.#backend.name;
  }

  /**
   * What the watch does to pages nobody has touched: `"unpopulated"` (left alone:
   * `async`, `soft-dirty`, `sync` with `WP_UNPOPULATED` or on shared memory),
   * `"zero-page"` (`sync` without `WP_UNPOPULATED`: mapped to the shared zero page
   * so that a write to them faults; no memory), `"allocated"` (the same on a kernel
   * where nothing maps the zero page: each gets a zero-filled page of its own, so
   * untouched memory is no longer free — see `kernelProfile().untouchedFill`).
   *
   * @example
   * ```ts
   * import { Region, WriteWatch } from "@uffd/uffd";
   * using mem = Region.map(4 * Region.pageSize);
   * using watch = WriteWatch.start(mem, { backend: "sync", decline: ["WP_UNPOPULATED"] });
   * console.log(watch.untouched); // "zero-page" where the kernel can map the zero page
   * ```
   */
  get untouched(): UntouchedPages {
    return this.#backend.untouched;
  }

  /** Address of page 0 (the page holding the memory's first byte). */
  get address(): bigint {
    return this.#address;
  }

  /** Offset of the memory's first byte inside page 0 (0 when page-aligned). */
  get head(): number {
    return this.#head;
  }

  /** Length of the watched memory in bytes, as of the last call. */
  get byteLength(): number {
    return this.#byteLength;
  }

  /** Pages in the watched span, as of the last call. */
  get pageCount(): number {
    return this.#pages;
  }

  /** The page size (the base page size). */
  get pageSize(): number {
    return PAGE_SIZE;
  }

  /** `true` once stopped. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * The pages written since the last reset, without resetting.
   *
   * @example
   * ```ts
   * import { Region, WriteWatch } from "@uffd/uffd";
   * using mem = Region.map(4 * Region.pageSize);
   * using watch = WriteWatch.start(mem);
   * mem.bytes[3 * Region.pageSize] = 1;
   * console.log(watch.written().ranges()); // [{ firstPage: 3, pages: 1 }]
   * ```
   */
  written(): WriteSet {
    return this.#answer(false);
  }

  /**
   * The pages written since the last reset, and the reset, in one atomic step: a
   * write racing with it is reported by this call or the next one.
   *
   * @example
   * ```ts
   * import { Region, WriteWatch } from "@uffd/uffd";
   * using mem = Region.map(4 * Region.pageSize);
   * using watch = WriteWatch.start(mem);
   * mem.bytes[0] = 1;
   * console.log(watch.collect().count, watch.collect().count); // 1 0
   * ```
   */
  collect(): WriteSet {
    return this.#answer(true);
  }

  /**
   * Marks every page clean: later answers report only writes made after this.
   *
   * @example
   * ```ts
   * import { Region, WriteWatch } from "@uffd/uffd";
   * using mem = Region.map(4 * Region.pageSize);
   * using watch = WriteWatch.start(mem);
   * mem.bytes[0] = 1;
   * watch.reset();
   * console.log(watch.written().count); // 0
   * ```
   */
  reset(): void {
    this.#check();
    this.#follow(this.#pending);
    this.#backend.reset();
    this.#pending.clear();
    this.#relocatedPending = false;
    this.#grewFrom = undefined;
  }

  /**
   * Stops watching: the memory is no longer write-protected, and the kernel
   * resources are released. Harmless to call twice.
   *
   * @example
   * ```ts
   * import { Region, WriteWatch } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * const watch = WriteWatch.start(mem);
   * watch.stop();
   * console.log(watch.stopped); // true
   * ```
   */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#backend.close();
  }

  /** Same as {@linkcode stop}. */
  [Symbol.dispose](): void {
    this.stop();
  }

  #answer(reset: boolean): WriteSet {
    this.#check();
    const written = this.#written;
    const lost = this.#lost;
    written.clear();
    lost.clear();
    const before = this.#pages;
    const change = this.#follow(this.#pending);
    if (change === "grew" && this.#pages > before) this.#grewFrom ??= before;
    written.addAll(this.#pending);
    this.#backend.scan(reset, written, lost);
    const relocated = this.#relocatedPending;
    if (relocated) {
      written.clear();
      written.add(0, this.#pages);
    }
    const grewFrom = this.#grewFrom;
    if (reset) {
      this.#pending.clear();
      this.#relocatedPending = false;
      this.#grewFrom = undefined;
    }
    return new WriteSet({
      runs: written.freeze(),
      lost: lost.freeze(),
      pageCount: this.#pages,
      pageSize: PAGE_SIZE,
      head: this.#head,
      byteLength: this.#byteLength,
      relocated,
      grewFrom,
    });
  }

  /**
   * Follows the memory: a grown memory is extended (new pages holding data are added
   * to `written`, which is the pending list reported until the next reset), a moved or shrunk one is watched again from scratch at its new
   * place (every page counts as written until the next reset).
   */
  #follow(written: RunList): "same" | "grew" | "moved" {
    if (this.#target instanceof Region) return "same";
    const location = locateTarget(this.#target);
    if (location.length === 0) {
      throw new UffdError({
        errno: ERRNO.EINVAL,
        operation: "WriteWatch",
        detail: this.#target instanceof WebAssembly.Memory
          ? "the memory's buffer is gone"
          : "the watched memory was detached (a typed array over a WebAssembly.Memory is detached when it grows: " +
            "watch the Memory itself)",
      });
    }
    const s = span(location);
    if (s.address === this.#address && s.head === this.#head && location.length === this.#byteLength) return "same";
    if (s.address === this.#address && s.head === this.#head && s.pages >= this.#pages) {
      this.#backend.extend(s.pages, written);
      this.#pages = s.pages;
      this.#byteLength = location.length;
      return "grew";
    }
    // Moved (or shrunk): watch the new place from scratch; what happened in between is unknown.
    // (Another watch of the same memory may have moved its tracker there already: shared.)
    this.#backend.close();
    const moved: WatchedSpan = {
      address: s.address,
      pages: s.pages,
      shared: this.#shared,
      partial: partialPages(location),
      decline: this.#decline,
    };
    this.#backend = Tracker.acquire(moved, this.#provider.name, () => this.#provider);
    this.#address = s.address;
    this.#head = s.head;
    this.#pages = s.pages;
    this.#byteLength = location.length;
    this.#pending.clear();
    this.#grewFrom = undefined;
    this.#relocatedPending = true;
    return "moved";
  }

  #check(): void {
    if (this.#stopped) {
      throw new UffdError({ errno: ERRNO.EBADF, operation: "WriteWatch", detail: "the watch is stopped" });
    }
  }
}
