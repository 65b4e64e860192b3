/**
 * The demo writer's Worker: runs the wasm module's `stamp` in passes over the
 * shared memory until told to stop, and logs each pass against the main thread's
 * marks (see `_demo_writer.ts` for why this order of loads and stores makes the log
 * exact) and in the pass log (what it wrote, for a replay). Answers `"stopped"`
 * when it stops.
 *
 * The Worker runs from a `blob:` URL built from this function's source text
 * ({@linkcode writerWorkerSource}), so starting it needs no permission at all (a
 * Worker loaded from a file needs `--allow-read`, which the writer should not
 * need). That is why {@linkcode writerWorker} refers to nothing outside itself: what
 * it needs comes as arguments or in the init message.
 *
 * @example
 * ```ts
 * import { writerWorkerSource } from "./_demo_writer_worker.ts";
 * console.log(writerWorkerSource().includes("function writerWorker")); // true
 * ```
 *
 * @module
 */

import { passRuns, stampOffset, type WriterInit } from "./_demo_pattern.ts";

/** The part of a Worker's global scope the writer uses. */
export interface WriterScope {
  /** Receives the {@linkcode WriterInit} message. */
  onmessage: ((e: MessageEvent<WriterInit>) => void) | null;
  /** Answers `"stopped"`. */
  postMessage(message: unknown): void;
}

/** The pure functions the Worker's code uses (passed in, because its source text must stand alone). */
export interface WriterPattern {
  /** {@linkcode passRuns}. */
  passRuns: typeof passRuns;
  /** {@linkcode stampOffset}. */
  stampOffset: typeof stampOffset;
}

/**
 * The Worker's code. Self-contained: its source text is what the Worker runs.
 *
 * @example
 * ```ts
 * import { writerWorker } from "./_demo_writer_worker.ts";
 * console.log(writerWorker.length); // 2
 * ```
 */
export function writerWorker(scope: WriterScope, pattern: WriterPattern): void {
  scope.onmessage = (e) => {
    const { memory, pageSize, layout, maxMarks, maxPasses, pauseMs, slot, passLogFields: fields } = e.data;
    const instance = new WebAssembly.Instance(new WebAssembly.Module(e.data.wasm as Uint8Array<ArrayBuffer>), {
      env: { memory },
    });
    const stamp = instance.exports.stamp as (
      at: number,
      step: number,
      count: number,
      pass: number,
      page: number,
      pageStep: number,
    ) => void;
    const control = new Int32Array(e.data.control);
    const due = new Int32Array(e.data.due);
    const may = new Uint8Array(e.data.may);
    const passLog = new Int32Array(e.data.passLog);
    const pages = layout.pages;
    const nap = new Int32Array(new SharedArrayBuffer(4));
    const t0 = performance.now();
    let pass = 0;
    while (Atomics.load(control, slot.stop) === 0) {
      // Every mark up to `before` returned before the first store of this pass.
      const before = Atomics.load(control, slot.done);
      const runs = pattern.passRuns(layout, performance.now() - t0, before);
      pass++;
      const offset = pattern.stampOffset(pass, pageSize);
      let stores = 0;
      for (let i = 0; i < runs.length; i += 3) {
        const [first, count, step] = [runs[i]!, runs[i + 1]!, runs[i + 2]!];
        stamp(first * pageSize + offset, step * pageSize, count, pass, first, step);
        stores += count;
      }
      Atomics.add(control, slot.stores, stores);
      // A sequentially consistent store: every store of the pass is performed before
      // it, and the load of `started` below cannot move above it.
      Atomics.store(control, slot.passes, pass);
      const after = Atomics.load(control, slot.started);
      // So this pass is reported at a mark in [lo, hi].
      const lo = before + 1;
      const hi = after + 1;
      for (let i = 0; i < runs.length; i += 3) {
        const [first, count, step] = [runs[i]!, runs[i + 1]!, runs[i + 2]!];
        for (let k = 0, page = first; k < count; k++, page += step) {
          if (hi <= maxMarks && due[hi * pages + page]! < lo) due[hi * pages + page] = lo;
          for (let m = lo; m <= Math.min(hi, maxMarks); m++) may[m * pages + page] = 1;
        }
      }
      if (pass <= maxPasses) {
        const at = pass * fields.size;
        passLog[at + fields.before] = before;
        passLog[at + fields.after] = after;
        passLog.set(runs, at + fields.runs);
        Atomics.store(control, slot.logged, pass); // the entry is complete
      }
      Atomics.store(control, slot.recorded, before);
      Atomics.wait(nap, 0, 0, pauseMs);
    }
    scope.postMessage("stopped");
  };
}

/**
 * The Worker's source: {@linkcode passRuns}, {@linkcode stampOffset} and
 * {@linkcode writerWorker}, as text.
 *
 * @example
 * ```ts
 * import { writerWorkerSource } from "./_demo_writer_worker.ts";
 * const url = URL.createObjectURL(new Blob([writerWorkerSource()], { type: "text/javascript" }));
 * console.log(url.startsWith("blob:")); // true
 * URL.revokeObjectURL(url);
 * ```
 */
export function writerWorkerSource(): string {
  return `const pattern = { passRuns: ${passRuns.toString()}, stampOffset: ${stampOffset.toString()} };\n` +
    `(${writerWorker.toString()})(self, pattern);\n`;
}
