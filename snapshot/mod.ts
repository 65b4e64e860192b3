/**
 * Live snapshots: {@linkcode LiveSnapshot} takes a point-in-time copy of memory
 * while the program keeps writing to it — into a checkpoint file, a `Uint8Array`
 * or a callback. How and with what guarantees: `docs/live-snapshot.md`.
 *
 * @example
 * ```ts
 * import { LiveSnapshot } from "@uffd/uffd/snapshot";
 * import { Region } from "@uffd/uffd/kernel";
 * using mem = Region.map(16 * Region.pageSize);
 * mem.bytes.fill(1);
 * const copy = new Uint8Array(mem.length);
 * await using snap = await LiveSnapshot.take(mem, { sink: copy });
 * mem.bytes.fill(2); // saved first, then written
 * await snap.done;
 * console.log(copy[0], mem.bytes[0]); // 1 2
 * ```
 *
 * @module
 */

export {
  type FileWritten,
  LiveSnapshot,
  LiveSnapshotError,
  type LiveSnapshotOptions,
  type SnapshotPageCallback,
  type SnapshotProgress,
  type SnapshotResult,
  type SnapshotSink,
} from "./live_snapshot.ts";

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
