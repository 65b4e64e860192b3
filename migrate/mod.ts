/**
 * Live migration: {@linkcode Migration} moves a running program's memory (a
 * `WebAssembly.Memory`, a `Region`) to another process over TCP — pre-copy
 * rounds from a write watch, post-copy faults served by a `LazyRegion` from the
 * network, or both — with progress events, a measured downtime, and typed
 * failures ({@linkcode MigrationError}) that lose nothing. The wire format:
 * `docs/migration-format.md`; the design: `docs/live-migration.md`.
 *
 * @example
 * ```ts
 * import { Migration } from "@uffd/uffd/migrate";
 * using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
 * const memory = new WebAssembly.Memory({ initial: 2 });
 * new Uint8Array(memory.buffer)[70_000] = 9;
 * const copy = new WebAssembly.Memory({ initial: 2 });
 * const [, received] = await Promise.all([
 *   Migration.send(memory, { connection: listener }),
 *   Migration.receive(listener, { target: copy }),
 * ]);
 * console.log(new Uint8Array(copy.buffer)[70_000]); // 9
 * await received.close();
 * ```
 *
 * @module
 */

export {
  Migration,
  type MigrationEndpoint,
  MigrationError,
  type MigrationErrorCode,
  type MigrationErrorInit,
  MigrationListener,
  type MigrationMode,
  type MigrationProgress,
  type MigrationResult,
  type ReceivedMigration,
  type ReceiveOptions,
  type ReceiveStats,
  type RoundStats,
  type SendOptions,
} from "./migration.ts";

// Names from the layers below that this entry's API uses, re-exported so that it reads whole
// (each is documented in its own entry).
export { type ExternalMemory, type Feature, type MemoryTarget, Region, type RegionKind } from "../kernel/mod.ts";
export { type WriteWatchBackendName, type WriteWatchOptions } from "../watch/mod.ts";
