/**
 * The demo's running program: a small WebAssembly module ({@link ./demo_wasm.ts})
 * that a Worker runs in a loop over a shared `WebAssembly.Memory`, on its own OS
 * thread, while the main thread watches that memory, or snapshots it.
 *
 * The writer works in passes (one every 2 ms or so). Pass `g` (1 for the first)
 * stores one 8-byte stamp, `g << 32 | page`, into each page of a few regions — its
 * "globals" (the first pages, every pass), a hot spot that moves along the memory
 * with time, and stripes whose stride changes with every mark
 * ({@linkcode passRuns}) — in its own slot of the page ({@linkcode stampOffset}),
 * in ascending page order, and records which pages it wrote.
 *
 * **Marks tie the writer's log to the main thread's actions.** The main thread wraps
 * each action it wants to compare against (starting a watch, each `collect()`) in
 * {@linkcode WasmWriter.mark}: the shared counter `started` is raised to the
 * mark's index before the action, `done` after it. A pass reads `done` (say `b`)
 * before its first store and `started` (say `a`) after its last one, with a
 * sequentially consistent store in between. So the pass began after action `b`
 * returned and ended before action `a + 1` began: a get-and-clear write watch must
 * report each of its pages at one of the marks `b + 1 … a + 1` — exactly at `b + 1`
 * when `a = b` (the pass fell between two actions), at either side when it ran
 * during one. The writer records, per mark `m` and page:
 *
 * - `due(m)`: the largest `b + 1` over the passes with `a + 1 = m` that wrote the
 *   page (0: none) — by mark `m`, the page must have been reported at a mark in
 *   `due … m`;
 * - `may(m)`: 1 when a pass with `b + 1 ≤ m ≤ a + 1` wrote the page — the only
 *   pages mark `m` may report.
 *
 * Both are final for mark `m` once the writer has recorded a pass that began after
 * action `m` returned ({@linkcode WasmWriter.settled}).
 *
 * **The pass log** ({@linkcode WasmWriter.passLog}) keeps, per pass, `before`,
 * `after` and its runs: enough to replay every store the writer made, in order,
 * and so to know what the memory held after any one of them (the writer is the
 * only one writing it, and it starts as zeros).
 *
 * @example
 * ```ts
 * import { WasmWriter } from "./_demo_writer.ts";
 * await using writer = await WasmWriter.start();
 * const { index } = writer.mark(() => undefined);
 * await writer.settled(index);
 * console.log(writer.passes > 0, writer.mayAt(index).length === writer.pages); // true true
 * ```
 *
 * @module
 */

import { Region } from "../mod.ts";
import { WASM_WRITER_BYTES } from "./_demo_wasm.ts";
import { demoLayout, PASS_LOG_FIELDS, SLOT, type WriterInit, type WriterLayout } from "./_demo_pattern.ts";
import { writerWorkerSource } from "./_demo_writer_worker.ts";

export type { WriterLayout };

/** One pass of the writer, as the pass log records it. */
export interface PassRecord {
  /** `done` read before its first store: every mark up to this one had returned. */
  readonly before: number;
  /** `started` read after its last store: no mark after this one had begun. */
  readonly after: number;
  /** What it wrote: `[firstPage, count, stepPages, …]` ({@linkcode passRuns}), stamps in this order. */
  readonly runs: ArrayLike<number>;
}

/** The writer's passes, as far as they are logged. */
export interface PassLog {
  /** Passes logged: `1 … count`. */
  readonly count: number;
  /** Pass `pass` (`1 … count`). */
  at(pass: number): PassRecord;
}

/** Options of {@linkcode WasmWriter.start}. */
export interface WasmWriterOptions {
  /** Pages of the memory, a multiple of 64 (default 256). */
  pages?: number;
  /** How long the hot spot takes to cross its lane (default 900 ms: a little longer than the demo's watch). */
  crossMs?: number;
  /** Pause between passes (default 2 ms). */
  pauseMs?: number;
  /** Marks the log has room for (default 64). */
  maxMarks?: number;
  /** Passes the pass log has room for (default 16 384: half a minute at the default pause). */
  maxPasses?: number;
  /** How long to wait for the Worker's first pass (default 10 s). */
  startTimeoutMs?: number;
}

/** What {@linkcode WasmWriter.mark} returns. */
export interface Mark<T> {
  /** The mark's index (1 for the first). */
  index: number;
  /** What the action returned. */
  result: T;
  /** Passes the writer had completed when the action returned. */
  passes: number;
  /** Stores (stamps) the writer had made when the action returned. */
  stores: number;
  /** How long the action took, in milliseconds. */
  ms: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A Worker running the wasm writer over a shared memory: see the module
 * documentation.
 *
 * @example
 * ```ts
 * import { WasmWriter } from "./_demo_writer.ts";
 * const writer = await WasmWriter.start({ pages: 64 });
 * console.log(writer.memory.buffer.byteLength === 64 * writer.pageSize); // true
 * await writer.stop();
 * ```
 */
export class WasmWriter implements AsyncDisposable {
  /** The shared memory the writer writes. */
  readonly memory: WebAssembly.Memory;
  /** Where it writes. */
  readonly layout: WriterLayout;
  /** The page size. */
  readonly pageSize: number;
  /** The last mark index the log has room for. */
  readonly maxMarks: number;
  readonly #worker: Worker;
  readonly #control: Int32Array<SharedArrayBuffer>;
  readonly #due: Int32Array<SharedArrayBuffer>;
  readonly #may: Uint8Array<SharedArrayBuffer>;
  readonly #passLog: Int32Array<SharedArrayBuffer>;
  readonly #stopped: Promise<void>;
  #error: string | undefined;
  #marks = 0;
  #stopping = false;

  private constructor(options: Required<WasmWriterOptions>) {
    this.pageSize = Region.pageSize;
    const pages = options.pages;
    if (!Number.isInteger(pages) || pages <= 0 || pages % 64 !== 0) {
      throw new RangeError(`WasmWriter: pages must be a positive multiple of 64, not ${pages}`);
    }
    const wasmPages = Math.ceil((pages * this.pageSize) / 65536);
    if (wasmPages * 65536 !== pages * this.pageSize) {
      throw new RangeError(`WasmWriter: ${pages} pages of ${this.pageSize} bytes are not whole 64 KiB wasm pages`);
    }
    this.memory = new WebAssembly.Memory({ initial: wasmPages, maximum: wasmPages, shared: true });
    this.layout = demoLayout(pages, options.crossMs);
    this.maxMarks = options.maxMarks;
    const control = new SharedArrayBuffer(8 * 4);
    const due = new SharedArrayBuffer(4 * (this.maxMarks + 1) * pages);
    const may = new SharedArrayBuffer((this.maxMarks + 1) * pages);
    const passLog = new SharedArrayBuffer(4 * (options.maxPasses + 1) * PASS_LOG_FIELDS.size);
    this.#control = new Int32Array(control);
    this.#due = new Int32Array(due);
    this.#may = new Uint8Array(may);
    this.#passLog = new Int32Array(passLog);
    Atomics.store(this.#control, SLOT.recorded, -1);
    // From a blob: URL, so that no permission is needed (see _demo_writer_worker.ts).
    const url = URL.createObjectURL(new Blob([writerWorkerSource()], { type: "text/javascript" }));
    this.#worker = new Worker(url, { type: "module" });
    URL.revokeObjectURL(url);
    this.#stopped = new Promise((resolve) => {
      this.#worker.onmessage = () => resolve();
      this.#worker.onerror = (e) => {
        e.preventDefault();
        this.#error = e.message;
        resolve();
      };
    });
    const init: WriterInit = {
      memory: this.memory,
      pageSize: this.pageSize,
      layout: this.layout,
      control,
      due,
      may,
      passLog,
      maxMarks: this.maxMarks,
      maxPasses: options.maxPasses,
      passLogFields: PASS_LOG_FIELDS,
      pauseMs: options.pauseMs,
      wasm: WASM_WRITER_BYTES,
      slot: SLOT,
    };
    this.#worker.postMessage(init);
  }

  /** Starts the writer and waits for its first pass. */
  static async start(options: WasmWriterOptions = {}): Promise<WasmWriter> {
    const writer = new WasmWriter({
      pages: options.pages ?? 256,
      crossMs: options.crossMs ?? 900,
      pauseMs: options.pauseMs ?? 2,
      maxMarks: options.maxMarks ?? 64,
      maxPasses: options.maxPasses ?? 16_384,
      startTimeoutMs: options.startTimeoutMs ?? 10_000,
    });
    try {
      await writer.#until(() => writer.passes > 0, options.startTimeoutMs ?? 10_000, "start writing");
    } catch (e) {
      await writer.stop();
      throw e;
    }
    return writer;
  }

  /** Pages of the memory. */
  get pages(): number {
    return this.layout.pages;
  }

  /** Passes completed so far. */
  get passes(): number {
    return Atomics.load(this.#control, SLOT.passes);
  }

  /** Stores (stamps) made so far. */
  get stores(): number {
    return Atomics.load(this.#control, SLOT.stores);
  }

  /** Marks made so far (the index of the last one). */
  get marks(): number {
    return this.#marks;
  }

  /**
   * Runs `action` as the next mark: raises `started` before it and `done` after
   * it (also when it throws), so that the writer's log can be compared with it.
   */
  mark<T>(action: () => T): Mark<T> {
    const index = this.#marks + 1;
    if (index > this.maxMarks) throw new RangeError(`WasmWriter: the log has room for ${this.maxMarks} marks`);
    this.#marks = index;
    Atomics.store(this.#control, SLOT.started, index);
    const t0 = performance.now();
    try {
      const result = action();
      const ms = performance.now() - t0;
      return { index, result, passes: this.passes, stores: this.stores, ms };
    } finally {
      Atomics.store(this.#control, SLOT.done, index);
    }
  }

  /**
   * Runs the asynchronous `action` as the next mark: like {@linkcode mark}, with
   * `done` raised once its promise has settled.
   *
   * @example
   * ```ts
   * import { WasmWriter } from "./_demo_writer.ts";
   * await using writer = await WasmWriter.start({ pages: 64 });
   * const m = await writer.markAsync(() => new Promise((r) => setTimeout(() => r("ok"), 20)));
   * console.log(m.index, m.result, m.ms >= 19); // 1 ok true
   * ```
   */
  async markAsync<T>(action: () => Promise<T>): Promise<Mark<T>> {
    const index = this.#marks + 1;
    if (index > this.maxMarks) throw new RangeError(`WasmWriter: the log has room for ${this.maxMarks} marks`);
    this.#marks = index;
    Atomics.store(this.#control, SLOT.started, index);
    const t0 = performance.now();
    try {
      const result = await action();
      const ms = performance.now() - t0;
      return { index, result, passes: this.passes, stores: this.stores, ms };
    } finally {
      Atomics.store(this.#control, SLOT.done, index);
    }
  }

  /**
   * Waits until the log is final for mark `index`: the writer has recorded a pass
   * that began after the mark's action returned. Throws when the writer stopped or
   * did not get there within `timeoutMs`.
   */
  settled(index: number, timeoutMs = 5000): Promise<void> {
    return this.#until(() => Atomics.load(this.#control, SLOT.recorded) >= index, timeoutMs, `pass mark ${index}`);
  }

  /** `due` for mark `index` (see the module documentation): one entry per page. */
  dueAt(index: number): Int32Array {
    return this.#due.subarray(index * this.pages, (index + 1) * this.pages);
  }

  /** `may` for mark `index` (see the module documentation): one entry per page. */
  mayAt(index: number): Uint8Array {
    return this.#may.subarray(index * this.pages, (index + 1) * this.pages);
  }

  /**
   * The pass log as far as it goes now (see the module documentation). Its
   * entries are final: read them at any time.
   *
   * @example
   * ```ts
   * import { WasmWriter } from "./_demo_writer.ts";
   * await using writer = await WasmWriter.start({ pages: 64 });
   * const log = writer.passLog;
   * console.log(log.count >= 1, log.at(1).runs.length); // true 9
   * ```
   */
  get passLog(): PassLog {
    const entries = this.#passLog;
    const count = Atomics.load(this.#control, SLOT.logged);
    return {
      count,
      at(pass: number): PassRecord {
        if (!Number.isInteger(pass) || pass < 1 || pass > count) {
          throw new RangeError(`WasmWriter.passLog: no pass ${pass} (1 … ${count})`);
        }
        const at = pass * PASS_LOG_FIELDS.size;
        return {
          before: entries[at + PASS_LOG_FIELDS.before]!,
          after: entries[at + PASS_LOG_FIELDS.after]!,
          runs: entries.subarray(at + PASS_LOG_FIELDS.runs, at + PASS_LOG_FIELDS.size),
        };
      },
    };
  }

  /** Stops the writer and waits for its Worker to finish (bounded), then terminates it. */
  async stop(): Promise<void> {
    if (this.#stopping) return await this.#stopped;
    this.#stopping = true;
    Atomics.store(this.#control, SLOT.stop, 1);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#stopped, new Promise((resolve) => timer = setTimeout(resolve, 5000))]);
    clearTimeout(timer);
    this.#worker.terminate();
  }

  /** Same as {@linkcode stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!condition()) {
      if (this.#error !== undefined) throw new Error(`the wasm writer failed: ${this.#error}`);
      if (this.#stopping) throw new Error(`the wasm writer was stopped before it could ${what}`);
      if (performance.now() > deadline) {
        throw new Error(`the wasm writer did not ${what} within ${timeoutMs} ms`);
      }
      await sleep(1);
    }
  }
}
