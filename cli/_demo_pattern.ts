/**
 * What the demo's wasm writer writes: a layout of regions in its memory, the
 * runs of pages one pass writes ({@linkcode passRuns}), and where in each page it
 * puts its stamp ({@linkcode stampOffset}), and what the Worker is started with
 * ({@linkcode WriterInit}). Pure functions and data, shared by the main thread (to
 * draw the regions, to replay the writes) and the Worker (to make them).
 *
 * @example
 * ```ts
 * import { demoLayout, passRuns } from "./_demo_pattern.ts";
 * const layout = demoLayout(256, 900);
 * console.log(passRuns(layout, 0, 1).length / 3); // 3 (runs: globals, hot spot, stripes)
 * ```
 *
 * @module
 */

/** Where the writer writes, in pages of the memory. */
export interface WriterLayout {
  /** Pages in the memory. */
  pages: number;
  /** Written on every pass: the program's hot state. */
  globals: { first: number; pages: number };
  /** A band of `width` pages whose last page moves `pagesPerMs` pages per millisecond along the lane (and wraps). */
  hotSpot: { first: number; pages: number; width: number; pagesPerMs: number };
  /** Every `stride`-th page of the lane, the stride taken in turn from `strides` at each mark (see {@linkcode passRuns}). */
  stripes: { first: number; pages: number; strides: number[] };
}

/**
 * The demo's layout for `pages` pages (a multiple of 64): globals in the first
 * 64th, the hot spot's lane over the next 44 64ths, stripes in the last quarter,
 * with one empty 64th between them. The hot spot crosses its lane in `crossMs`.
 *
 * @example
 * ```ts
 * import { demoLayout } from "./_demo_pattern.ts";
 * const layout = demoLayout(256, 750);
 * console.log(layout.globals, layout.stripes.first); // { first: 0, pages: 4 } 192
 * ```
 */
export function demoLayout(pages: number, crossMs: number): WriterLayout {
  const unit = pages / 64;
  const lane = 44 * unit;
  const width = 3 * unit;
  return {
    pages,
    globals: { first: 0, pages: unit },
    hotSpot: { first: 2 * unit, pages: lane, width, pagesPerMs: (lane - width) / crossMs },
    stripes: { first: 48 * unit, pages: 16 * unit, strides: [1, 2, 4, 8, 16] },
  };
}

/**
 * The runs one pass writes, `[firstPage, count, stepPages, …]`, `elapsedMs` after
 * the writer started, when the main thread has made `marks` marks: the stripes
 * change stride at every mark (the first stride before the first two), so that in
 * the demo each round of the watch has its own.
 *
 * @example
 * ```ts
 * import { demoLayout, passRuns } from "./_demo_pattern.ts";
 * console.log(passRuns(demoLayout(64, 100), 0, 2)); // [0, 1, 1, 2, 3, 1, 48, 8, 2]
 * ```
 */
export function passRuns(layout: WriterLayout, elapsedMs: number, marks: number): number[] {
  const { globals, hotSpot, stripes } = layout;
  const travel = hotSpot.pages - hotSpot.width + 1;
  const offset = Math.floor(elapsedMs * hotSpot.pagesPerMs) % travel;
  const stride = stripes.strides[(Math.max(marks, 1) - 1) % stripes.strides.length]!;
  return [
    globals.first,
    globals.pages,
    1,
    hotSpot.first + offset,
    hotSpot.width,
    1,
    stripes.first,
    Math.ceil(stripes.pages / stride),
    stride,
  ];
}

/**
 * Where pass `pass` (1 for the first) stores its stamp in each page it writes:
 * the passes take the page's 8-byte slots in turn, so that a page keeps the
 * stamps of its last `pageSize / 8` writes.
 *
 * @example
 * ```ts
 * import { stampOffset } from "./_demo_pattern.ts";
 * console.log(stampOffset(1, 4096), stampOffset(511, 4096), stampOffset(512, 4096)); // 8 4088 0
 * ```
 */
export function stampOffset(pass: number, pageSize: number): number {
  return (pass * 8) % pageSize;
}

/** The shared control block's slots (an `Int32Array`). */
export const SLOT = {
  /** The index of the last mark whose action has begun. */
  started: 0,
  /** The index of the last mark whose action has returned. */
  done: 1,
  /** Set to 1 to stop the writer. */
  stop: 2,
  /** Passes completed. */
  passes: 3,
  /** Stores (stamps) made, all passes. */
  stores: 4,
  /** The `done` value read at the start of the last recorded pass (-1: none yet). */
  recorded: 5,
  /** Passes in the pass log (its entries `1 … logged` are complete). */
  logged: 6,
} as const;

/** The fields of one pass's entry in the pass log (an `Int32Array`, entry `g` at `g × size`). */
export const PASS_LOG_FIELDS = {
  /** `done` read before the pass's first store. */
  before: 0,
  /** `started` read after its last store. */
  after: 1,
  /** Its runs, `[firstPage, count, stepPages] × 3`. */
  runs: 2,
  /** Int32 slots per entry. */
  size: 11,
} as const;

/** What the Worker is started with. */
export interface WriterInit {
  /** The shared memory it writes. */
  memory: WebAssembly.Memory;
  /** The page size. */
  pageSize: number;
  /** Where it writes. */
  layout: WriterLayout;
  /** The control block (see {@linkcode SLOT}). */
  control: SharedArrayBuffer;
  /** `due`, an `Int32Array` of `(maxMarks + 1) × pages`. */
  due: SharedArrayBuffer;
  /** `may`, a `Uint8Array` of `(maxMarks + 1) × pages`. */
  may: SharedArrayBuffer;
  /** The pass log, an `Int32Array` of `(maxPasses + 1) × PASS_LOG_FIELDS.size`. */
  passLog: SharedArrayBuffer;
  /** The last mark index the log has room for. */
  maxMarks: number;
  /** The last pass the pass log has room for. */
  maxPasses: number;
  /** The pass log's fields. */
  passLogFields: typeof PASS_LOG_FIELDS;
  /** Pause between passes, in milliseconds. */
  pauseMs: number;
  /** The wasm module's bytes. */
  wasm: Uint8Array<ArrayBuffer>;
  /** The control block's slots. */
  slot: typeof SLOT;
}
