/**
 * Incremental checkpoints: {@linkcode Checkpoint} writes a base image of memory
 * and then deltas of the pages written since, {@linkcode CheckpointReader} opens
 * and checks a chain of them and restores it or single pages, and
 * {@linkcode crc32c} is their checksum. The file format: `docs/checkpoint-format.md`.
 *
 * @example
 * ```ts
 * import { Checkpoint } from "@uffd/uffd/checkpoint";
 * import { Region } from "@uffd/uffd/kernel";
 * const dir = Deno.makeTempDirSync();
 * using mem = Region.map(8 * Region.pageSize);
 * using ckpt = Checkpoint.start(mem);
 * mem.bytes[0] = 1;
 * console.log(ckpt.write(`${dir}/base`).entries); // 1
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @module
 */

export { Checkpoint, type CheckpointOptions, type CheckpointWritten } from "./checkpoint.ts";
export {
  type CheckpointFileInfo,
  type CheckpointKind,
  CheckpointReader,
  type PageSource,
  type RestoreResult,
} from "./reader.ts";
export { crc32c } from "./crc32c.ts";

// Names from the layers below that this entry's API uses, re-exported so that it reads whole
// (each is documented in its own entry).
export {
  type ExternalMemory,
  Feature,
  type MemoryTarget,
  type Range,
  Region,
  type RegionKind,
  type UntouchedPages,
} from "../kernel/mod.ts";

export {
  type ByteSpan,
  type PageSpan,
  WriteSet,
  WriteWatch,
  type WriteWatchBackendName,
  type WriteWatchOptions,
} from "../watch/mod.ts";
