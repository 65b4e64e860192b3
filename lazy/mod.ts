/**
 * Lazy restore: a {@linkcode LazyRegion} is memory whose pages are filled on first
 * touch from a checkpoint chain, a file, bytes, other memory or a function, with
 * an optional prefetcher. How pages are placed, what a failing source does, and
 * when it is `ready`: `docs/lazy-restore.md`.
 *
 * @example
 * ```ts
 * import { LazyRegion } from "@uffd/uffd/lazy";
 * await using lazy = await LazyRegion.open(new Uint8Array(4 * 4096).fill(3));
 * console.log(lazy.bytes[4096], lazy.stats.faults); // 3 1
 * ```
 *
 * @module
 */

export {
  type LazyFill,
  LazyRegion,
  type LazyRegionOptions,
  type LazySource,
  type LazySourceFactory,
  type LazySourceInfo,
  type LazyState,
  type LazyStats,
  type ModulePageSource,
  type PageFiller,
} from "./lazy_region.ts";

// Names from the layers below that this entry's API uses, re-exported so that it reads whole
// (each is documented in its own entry).
export {
  type EventsOptions,
  type ExternalMemory,
  type Feature,
  type ForkEvent,
  type Ioctl,
  type MemoryTarget,
  type Origin,
  type PagefaultEvent,
  type Range,
  Region,
  type RegionKind,
  type RegisterOptions,
  type RemapEvent,
  type RemoveEvent,
  type SharedUserfaultfd,
  type UffdEvent,
  type UnknownEvent,
  type UnmapEvent,
  Userfaultfd,
  type WakeOptions,
} from "../kernel/mod.ts";

export {
  FaultHandler,
  type HandlerState,
  type HandlerStats,
  type PageRun,
  type PolicySpec,
  type TrackedRange,
} from "../handler/mod.ts";

export { type CheckpointFileInfo, type CheckpointKind, CheckpointReader, type PageSource } from "../checkpoint/mod.ts";
