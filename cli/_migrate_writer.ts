/**
 * The program `uffd migrate --demo` moves (and the migration tests move): the
 * demo's wasm `stamp` writer (`_demo_wasm.ts`) in a Worker over a shared
 * `WebAssembly.Memory`, in passes — a first pass that fills the data pages, then
 * each pass its globals and a hot spot that moves `pagesPerMs` pages per
 * millisecond along its lane ({@linkcode migrationLayout}): a known set of pages
 * written per millisecond. It can be parked at a safe point (between two passes:
 * the migration's `pause`), resumed (`resume`), slowed (`throttle`), and started
 * again elsewhere from where it was parked ({@linkcode WriterState}: the pass and
 * the time, the migration's `state`). Every pass is logged (its runs), so the
 * memory after any pass can be replayed from the logs of both processes
 * (`_demo_snapshot_check.ts`'s `replay`) — the undisturbed reference run the
 * destination's memory is checked against.
 *
 * The Worker runs from a `blob:` URL built from this module's functions (as the
 * demo's writer does): starting it needs no permission.
 *
 * @example
 * ```ts
 * import { MigrationWriter, migrationLayout } from "./_migrate_writer.ts";
 * await using writer = await MigrationWriter.start({ layout: migrationLayout(256, { dataPages: 128 }) });
 * const state = await writer.park();
 * console.log(state.pass >= 1, writer.log.count === state.pass); // true true
 * ```
 *
 * @module
 */

import { Region } from "../mod.ts";
import { passRuns, stampOffset, type WriterLayout } from "./_demo_pattern.ts";
import { WASM_WRITER_BYTES } from "./_demo_wasm.ts";
import type { PassLog, PassRecord } from "./_demo_writer.ts";

/** What a parked writer was doing: enough to go on elsewhere (the migration's `state()`). */
export interface WriterState {
  /** The last pass it completed. */
  readonly pass: number;
  /** Milliseconds of writing before it was parked (the hot spot's position). */
  readonly elapsedMs: number;
}

/** Where the migration writer writes: the demo's layout, plus the pages its first pass fills. */
export interface MigrationLayout extends WriterLayout {
  /** Pages `[0, dataPages)` are filled by pass 1; the rest is never touched but by the hot spot and globals. */
  readonly dataPages: number;
}

/**
 * A layout of `pages` pages (a multiple of 64): the first `dataPages` pages hold
 * data (default: three quarters), globals in the first 64th, a hot spot band of
 * `width` pages (default: a 256th of the memory, at least 1) crossing a lane of
 * `lane` pages (default: a tenth of the memory, from the 64th or `laneAt`) at `pagesPerMs`
 * (default: the lane in one second). No stripes.
 *
 * @example
 * ```ts
 * import { migrationLayout } from "./_migrate_writer.ts";
 * const layout = migrationLayout(6400, { pagesPerMs: 2 });
 * console.log(layout.dataPages, layout.hotSpot.pages, layout.hotSpot.pagesPerMs); // 4800 640 2
 * ```
 */
export function migrationLayout(
  pages: number,
  options: {
    dataPages?: number;
    lane?: number;
    laneAt?: number;
    width?: number;
    pagesPerMs?: number;
    globals?: number;
  } = {},
): MigrationLayout {
  const unit = Math.max(1, Math.floor(pages / 64));
  const lane = options.lane ?? Math.max(2, Math.floor(pages / 10));
  const width = Math.min(lane, options.width ?? Math.max(1, Math.floor(pages / 256)));
  const first = Math.min(options.laneAt ?? unit, pages - lane);
  return {
    pages,
    dataPages: Math.min(pages, options.dataPages ?? Math.floor((pages * 3) / 4)),
    globals: { first: 0, pages: Math.min(options.globals ?? Math.min(unit, 16), pages) },
    hotSpot: { first, pages: lane, width, pagesPerMs: options.pagesPerMs ?? lane / 1000 },
    stripes: { first: 0, pages: 0, strides: [1] },
  };
}

/** The control words shared with the Worker (`Int32Array`). */
const CTRL = { park: 0, parked: 1, stop: 2, passes: 3, throttle: 4, logged: 5, SIZE: 8 } as const;
/** Int32 slots per pass in the log: 9 for the runs. */
const LOG_FIELDS = 9;

/** What the Worker is started with. */
interface WriterInit {
  memory: WebAssembly.Memory;
  pageSize: number;
  layout: MigrationLayout;
  control: SharedArrayBuffer;
  elapsed: SharedArrayBuffer;
  log: SharedArrayBuffer;
  maxPasses: number;
  startPass: number;
  elapsedBase: number;
  pauseMs: number;
  stopAfter: number;
  wasm: Uint8Array<ArrayBuffer>;
  ctrl: typeof CTRL;
}

/** The Worker's code: self-contained, its source text is what the Worker runs. */
function migrationWriterWorker(
  scope: { onmessage: ((e: MessageEvent<WriterInit>) => void) | null; postMessage(m: unknown): void },
  pattern: { passRuns: typeof passRuns; stampOffset: typeof stampOffset },
): void {
  scope.onmessage = (e) => {
    const d = e.data;
    const c = d.ctrl;
    const instance = new WebAssembly.Instance(new WebAssembly.Module(d.wasm), { env: { memory: d.memory } });
    const stamp = instance.exports.stamp as (...args: number[]) => void;
    const control = new Int32Array(d.control);
    const elapsed = new Float64Array(d.elapsed);
    const log = new Int32Array(d.log);
    const nap = new Int32Array(new SharedArrayBuffer(4));
    const P = d.pageSize;
    let t0 = performance.now() - d.elapsedBase;
    let pass = d.startPass;
    scope.postMessage("started");
    while (Atomics.load(control, c.stop) === 0) {
      if (Atomics.load(control, c.park) === 1 || (d.stopAfter > 0 && pass >= d.stopAfter)) {
        // Parked between two passes: the memory holds every store of `pass`, none of the next.
        const parkedAt = performance.now();
        elapsed[0] = parkedAt - t0;
        Atomics.store(control, c.parked, pass);
        Atomics.notify(control, c.parked);
        while (Atomics.load(control, c.park) === 1 && Atomics.load(control, c.stop) === 0) {
          Atomics.wait(control, c.park, 1, 100);
        }
        if (d.stopAfter > 0 && pass >= d.stopAfter) {
          while (Atomics.load(control, c.stop) === 0) Atomics.wait(control, c.stop, 0, 100);
          break;
        }
        t0 += performance.now() - parkedAt; // the time parked does not move the hot spot
        Atomics.store(control, c.parked, -1);
        continue;
      }
      const now = performance.now() - t0;
      const runs = pass === 0 ? [0, d.layout.dataPages, 1, 0, 0, 1, 0, 0, 1] : pattern.passRuns(d.layout, now, 1);
      pass++;
      const offset = pattern.stampOffset(pass, P);
      for (let i = 0; i < runs.length; i += 3) {
        const [first, count, step] = [runs[i]!, runs[i + 1]!, runs[i + 2]!];
        if (count > 0) stamp(first * P + offset, step * P, count, pass, first, step);
      }
      if (pass <= d.maxPasses) {
        log.set(runs, pass * 9);
        Atomics.store(control, c.logged, pass);
      }
      elapsed[0] = now;
      Atomics.store(control, c.passes, pass);
      const throttle = Atomics.load(control, c.throttle) / 1000;
      const sleep = d.pauseMs / Math.max(0.01, 1 - throttle);
      if (sleep > 0) Atomics.wait(nap, 0, 0, sleep);
    }
    scope.postMessage("stopped");
  };
}

function workerSource(): string {
  return `const pattern = { passRuns: ${passRuns.toString()}, stampOffset: ${stampOffset.toString()} };\n` +
    `(${migrationWriterWorker.toString()})(self, pattern);\n`;
}

/** Options of {@linkcode MigrationWriter.start}. */
export interface MigrationWriterOptions {
  /** Where it writes (see {@linkcode migrationLayout}). */
  layout: MigrationLayout;
  /** The memory (shared, `layout.pages` pages of this machine's size); default: a new one. */
  memory?: WebAssembly.Memory;
  /** Go on from this state (a parked writer's, from another process): passes continue after `state.pass`. */
  from?: WriterState;
  /** Pause between passes in ms (default 1). */
  pauseMs?: number;
  /** Park by itself after this pass (0: never; default 0). */
  stopAfter?: number;
  /** Passes the log has room for (default 262 144: 9 MiB of log, four minutes at one pass per millisecond). */
  maxPasses?: number;
}

/**
 * The migration's writer: see the module documentation.
 *
 * @example
 * ```ts
 * import { MigrationWriter, migrationLayout } from "./_migrate_writer.ts";
 * const writer = await MigrationWriter.start({ layout: migrationLayout(64, { dataPages: 8 }), stopAfter: 3 });
 * await writer.until(3);
 * console.log(writer.log.at(1).runs[1]); // 8: the first pass filled the data pages
 * await writer.stop();
 * ```
 */
export class MigrationWriter implements AsyncDisposable {
  /** The memory it writes. */
  readonly memory: WebAssembly.Memory;
  /** Where. */
  readonly layout: MigrationLayout;
  /** The first pass of this writer's log (1, or the state's pass + 1). */
  readonly firstPass: number;
  readonly #worker: Worker;
  readonly #control: Int32Array;
  readonly #elapsed: Float64Array;
  readonly #log: Int32Array;
  readonly #stopped: Promise<void>;
  #stopping = false;

  private constructor(options: MigrationWriterOptions) {
    const P = Region.pageSize;
    const layout = options.layout;
    const bytes = layout.pages * P;
    if (bytes % 65536 !== 0) throw new RangeError(`MigrationWriter: ${layout.pages} pages are not whole wasm pages`);
    this.memory = options.memory ??
      new WebAssembly.Memory({ initial: bytes / 65536, maximum: bytes / 65536, shared: true });
    this.layout = layout;
    const maxPasses = options.maxPasses ?? 262_144;
    this.#control = new Int32Array(new SharedArrayBuffer(4 * CTRL.SIZE));
    this.#elapsed = new Float64Array(new SharedArrayBuffer(8));
    this.#log = new Int32Array(new SharedArrayBuffer(4 * LOG_FIELDS * (maxPasses + 1)));
    Atomics.store(this.#control, CTRL.parked, -1);
    const startPass = options.from?.pass ?? 0;
    this.firstPass = startPass + 1;
    Atomics.store(this.#control, CTRL.passes, startPass);
    Atomics.store(this.#control, CTRL.logged, startPass);
    const url = URL.createObjectURL(new Blob([workerSource()], { type: "text/javascript" }));
    this.#worker = new Worker(url, { type: "module" });
    URL.revokeObjectURL(url);
    this.#stopped = new Promise((resolve) => {
      this.#worker.onmessage = (e) => e.data === "stopped" && resolve();
      this.#worker.onerror = (e) => {
        e.preventDefault();
        resolve();
      };
    });
    const init: WriterInit = {
      memory: this.memory,
      pageSize: P,
      layout,
      control: this.#control.buffer as SharedArrayBuffer,
      elapsed: this.#elapsed.buffer as SharedArrayBuffer,
      log: this.#log.buffer as SharedArrayBuffer,
      maxPasses,
      startPass,
      elapsedBase: options.from?.elapsedMs ?? 0,
      pauseMs: options.pauseMs ?? 1,
      stopAfter: options.stopAfter ?? 0,
      wasm: WASM_WRITER_BYTES,
      ctrl: CTRL,
    };
    this.#worker.postMessage(init);
  }

  /** Starts a writer and waits for its first pass. */
  static async start(options: MigrationWriterOptions): Promise<MigrationWriter> {
    const writer = new MigrationWriter(options);
    await writer.until(writer.firstPass);
    return writer;
  }

  /** The last pass completed. */
  get passes(): number {
    return Atomics.load(this.#control, CTRL.passes);
  }

  /** Waits until pass `pass` is complete (at most `timeoutMs`). */
  async until(pass: number, timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.passes < pass) {
      if (performance.now() > deadline) throw new Error(`the writer did not reach pass ${pass} in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Parks it between two passes (the migration's `pause`) and returns where it is. */
  async park(timeoutMs = 10_000): Promise<WriterState> {
    Atomics.store(this.#control, CTRL.park, 1);
    const deadline = performance.now() + timeoutMs;
    while (Atomics.load(this.#control, CTRL.parked) < 0) {
      if (performance.now() > deadline) throw new Error(`the writer did not park within ${timeoutMs} ms`);
      const wait = Atomics.waitAsync(this.#control, CTRL.parked, -1, 20);
      if (wait.async) await wait.value;
    }
    return this.state;
  }

  /** Where it is parked (or was when last parked). */
  get state(): WriterState {
    return { pass: Math.max(0, Atomics.load(this.#control, CTRL.parked)), elapsedMs: this.#elapsed[0]! };
  }

  /** Whether it is parked now. */
  get parked(): boolean {
    return Atomics.load(this.#control, CTRL.parked) >= 0;
  }

  /** Lets a parked writer go on (the migration's `resume`). */
  resume(): void {
    Atomics.store(this.#control, CTRL.park, 0);
    Atomics.notify(this.#control, CTRL.park);
  }

  /** Auto-converge: sleep this share of the time (0 … 0.99). */
  throttle(level: number): void {
    Atomics.store(this.#control, CTRL.throttle, Math.round(Math.min(0.99, Math.max(0, level)) * 1000));
  }

  /** The passes logged so far, `firstPass … count` (earlier ones are another process's). */
  get log(): PassLog {
    const log = this.#log;
    const count = Atomics.load(this.#control, CTRL.logged);
    const first = this.firstPass;
    return {
      count,
      at(pass: number): PassRecord {
        if (!Number.isInteger(pass) || pass < first || pass > count) {
          throw new RangeError(`MigrationWriter.log: no pass ${pass} (${first} … ${count})`);
        }
        return { before: 0, after: 0, runs: log.subarray(pass * LOG_FIELDS, (pass + 1) * LOG_FIELDS) };
      },
    };
  }

  /** The runs of passes `from … to` of the log, for another process. */
  runs(from = this.firstPass, to = this.log.count): number[][] {
    const out: number[][] = [];
    for (let g = from; g <= to; g++) out.push(Array.from(this.log.at(g).runs));
    return out;
  }

  /** Stops the Worker (bounded wait) and terminates it. */
  async stop(): Promise<void> {
    if (this.#stopping) return await this.#stopped;
    this.#stopping = true;
    Atomics.store(this.#control, CTRL.stop, 1);
    Atomics.notify(this.#control, CTRL.park);
    Atomics.notify(this.#control, CTRL.stop);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#stopped, new Promise((r) => timer = setTimeout(r, 5000))]);
    clearTimeout(timer);
    this.#worker.terminate();
  }

  /** Same as {@linkcode stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/**
 * A pass log made of runs (from {@linkcode MigrationWriter.runs}, possibly of two
 * processes, passes `1 … runs.length`), for `replay`.
 *
 * @example
 * ```ts
 * import { logOf } from "./_migrate_writer.ts";
 * const log = logOf([[0, 2, 1, 0, 0, 1, 0, 0, 1]]);
 * console.log(log.count, log.at(1).runs[1]); // 1 2
 * ```
 */
export function logOf(runs: readonly (readonly number[])[]): PassLog {
  return {
    count: runs.length,
    at(pass: number): PassRecord {
      const r = runs[pass - 1];
      if (r === undefined) throw new RangeError(`logOf: no pass ${pass} (1 … ${runs.length})`);
      return { before: 0, after: 0, runs: r };
    },
  };
}
