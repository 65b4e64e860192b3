/**
 * # uffd — Linux userfaultfd and PAGEMAP_SCAN for Deno
 *
 * Write-protect memory and learn about every write, resolve missing faults from
 * another thread, and ask the kernel which pages were written — through
 * `Deno.dlopen` on libc, with no compiled addon.
 *
 * - {@linkcode Userfaultfd}: a userfaultfd with typed ranges, every `UFFDIO_*`
 *   operation and typed events.
 * - {@linkcode Region}: memory the library maps, or wraps (`ArrayBuffer`,
 *   `WebAssembly.Memory`).
 * - The kernel interface as constants: {@linkcode FEATURES}, {@linkcode IOCTLS},
 *   {@linkcode CATEGORIES}, `UFFDIO_*`, `UFFD_FEATURE_*`, `PAGE_IS_*`.
 * - {@linkcode UffdError}: every failure, with the errno name, the operation and a hint.
 *
 * Linux only (x86_64, aarch64). Needs `--allow-ffi` (and `--allow-read` for the
 * `/proc` files some features read).
 *
 * @example Track writes asynchronously (Linux 6.7+)
 * ```ts
 * import { Feature, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * using uffd = Userfaultfd.open({ features: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
 * uffd.register(mem, { wp: true });
 * uffd.writeProtect(mem);
 * mem.bytes[5 * Region.pageSize] = 1; // resolved by the kernel: WP_ASYNC
 * ```
 *
 * @module
 */

export * from "./ffi/uapi.ts";
export * from "./ffi/linux.ts";
export * from "./kernel/names.ts";
export * from "./kernel/errors.ts";
export * from "./kernel/range.ts";
export * from "./kernel/region.ts";
export { type MemoryTarget } from "./kernel/target.ts";
export * from "./kernel/access.ts";
export * from "./kernel/userfaultfd.ts";
export * from "./kernel/pagemap.ts";
export * from "./kernel/pagemap_scan.ts";
export {
  type KernelProfile,
  kernelProfile,
  type PagemapScanTraits,
  profileNotes,
  type ThpTraits,
  type TraitNote,
  type UntouchedFill,
  type UntouchedPages,
  untouchedPages,
  type ZeroFill,
  type ZeroPageTraits,
} from "./kernel/profile.ts";
export * from "./kernel/maps.ts";
export * from "./watch/write_set.ts";
export * from "./watch/_backend.ts";
export * from "./watch/_async.ts";
export * from "./watch/_sync.ts";
export * from "./watch/_soft_dirty.ts";
export * from "./watch/write_watch.ts";
export * from "./checkpoint/crc32c.ts";
export * from "./checkpoint/_format.ts";
export { type CheckpointFileInfo, CheckpointReader, type PageSource } from "./checkpoint/reader.ts";
export * from "./checkpoint/checkpoint.ts";
export * from "./kernel/semantics.ts";
export * from "./handler/fault_handler.ts";
export * from "./handler/policies.ts";
export * from "./handler/builtin_policies.ts";
export { emptyStats, type HandlerStats } from "./handler/stats.ts";
export { type PageRun, pageRuns, type TrackedRange } from "./handler/tracked_pages.ts";
export {
  LiveSnapshot,
  LiveSnapshotError,
  type LiveSnapshotOptions,
  type SnapshotPageCallback,
  type SnapshotProgress,
  type SnapshotResult,
  type SnapshotSink,
} from "./snapshot/live_snapshot.ts";
export type { FileWritten } from "./snapshot/_protocol.ts";
export * from "./lazy/lazy_region.ts";
