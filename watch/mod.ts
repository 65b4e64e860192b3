/**
 * Write watches: a {@linkcode WriteWatch} says which pages of a `Region`, an
 * `ArrayBuffer`, a typed array or a `WebAssembly.Memory` were written since it
 * last asked (`written()`, `reset()`, atomic `collect()`), as a
 * {@linkcode WriteSet}. Its backends — `async` (WP_ASYNC + PAGEMAP_SCAN), `sync`
 * (a fault handler) and `soft-dirty` — and what each guarantees:
 * `docs/write-watch.md`.
 *
 * @example
 * ```ts
 * import { WriteWatch } from "@uffd/uffd/watch";
 * const memory = new WebAssembly.Memory({ initial: 4 });
 * using watch = WriteWatch.start(memory);
 * new Uint8Array(memory.buffer)[70_000] = 1;
 * console.log([...watch.collect()]); // [17] with 4 KiB pages
 * ```
 *
 * @module
 */

export {
  type BackendAvailability,
  WriteWatch,
  type WriteWatchBackendName,
  type WriteWatchOptions,
} from "./write_watch.ts";
export { type ByteSpan, type PageSpan, WriteSet, type WriteSetInit } from "./write_set.ts";

// Names from the layers below that this entry's API uses, re-exported so that it reads whole
// (each is documented in its own entry).
export {
  type ExternalMemory,
  type Feature,
  type MemoryTarget,
  type Range,
  Region,
  type RegionKind,
  type UntouchedPages,
} from "../kernel/mod.ts";
