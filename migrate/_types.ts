/**
 * The options, progress events and results of both ends of a live migration,
 * shared by `migration.ts` (the API) and the two ends' implementations
 * (`_source.ts`, `_destination.ts`). Internal: the public module re-exports them.
 *
 * @module
 */

import type { Feature } from "../ffi/uapi.ts";
import type { WriteWatchOptions } from "../watch/write_watch.ts";
import type { MigrationMode } from "./_wire.ts";

export type { MigrationMode } from "./_wire.ts";

/** Where a destination listens: an IPv4 or IPv6 address (or `localhost`) and a port. */
export interface MigrationEndpoint {
  /** `127.0.0.1`, `10.0.0.2`, `::1`, `localhost` (other names are not resolved). */
  readonly hostname: string;
  /** The TCP port. */
  readonly port: number;
}

/** Options of `Migration.send`. */
export interface SendOptions {
  /** The destination's listener (`Migration.listen` there). */
  connection: MigrationEndpoint;
  /**
   * Stops the program: once the promise resolves, nothing may write the memory
   * (a Worker parked at a safe point). Called once, when the last pages are to be
   * sent (at once for post-copy and stop-and-copy). Default: nothing to stop.
   */
  pause?: () => void | Promise<void>;
  /**
   * Undoes `pause`: called when the migration fails after `pause` and before the
   * destination confirmed — the program goes on here, on its intact memory.
   */
  resume?: () => void | Promise<void>;
  /**
   * What lives outside the memory (exported mutable globals, the app's own blob),
   * taken after `pause`: a `Uint8Array` travels as bytes, anything else as JSON.
   * The destination's `receive()` returns it.
   */
  state?: () => unknown;
  /** Bytes per second the page stream may use (default: no limit). Requests of post-copy faults are not limited. */
  maxBandwidth?: number;
  /**
   * The pause the program may take, in ms (default 300): pre-copy stops when the
   * pages left can be sent in this time at the bandwidth measured so far.
   */
  downtime?: number;
  /**
   * Pre-copy rounds at most, round 0 included (default 30). `0` is stop-and-copy:
   * pause first, then send everything.
   */
  maxRounds?: number;
  /**
   * Auto-converge: called with a level (0.2, 0.3, … 0.99) when rounds stop
   * shrinking — the share of its time the program should sleep — and with 0 when
   * the migration ends. Default: none (a migration that does not converge pauses
   * after the last round and sends what is left, `converged: false`).
   */
  throttle?: (level: number) => void | Promise<void>;
  /** Called after each round and at each phase change. */
  onProgress?: (progress: MigrationProgress) => void;
  /** Aborts the migration (the program is resumed if it was paused). */
  signal?: AbortSignal;
  /** How long the destination may stay silent (ms, default 10 000). */
  timeoutMs?: number;
  /** How long to try to connect (ms, default 10 000). */
  connectTimeoutMs?: number;
  /** The write watch's options (its backend; features to do without). */
  watch?: WriteWatchOptions;
  /** Bytes of pages per `PAGE` frame (default 1 MiB). */
  batchBytes?: number;
}

/** Options of `Migration.receive`. */
export interface ReceiveOptions {
  /**
   * The memory to fill: a fresh `WebAssembly.Memory` at least as long as the
   * source's (grow it first; its current contents are dropped), or a private
   * anonymous `Region`.
   */
  target: WebAssembly.Memory | import("../kernel/region.ts").Region;
  /**
   * `"precopy"` (default): every page arrives before `receive()` resolves;
   * `"postcopy"`: `receive()` resolves as soon as the state is in and the
   * pages follow — on first touch, or pushed in the background (`ready`);
   * `"hybrid"`: a few pre-copy rounds, then post-copy.
   */
  mode?: MigrationMode;
  /**
   * Pre-copy: allocate every page of the target (`MADV_POPULATE_WRITE`, then a
   * write to each) before the source connects, so that no page is allocated while
   * pages arrive (default `false`). It costs the whole target in memory; the
   * image's zero pages are released again as their runs arrive. On a machine where
   * allocating a page is slow (a VM whose host backs its memory on the first
   * write: 11–40 µs per page here) it moves that cost out of the migration.
   */
  populate?: boolean;
  /** Hybrid: pre-copy rounds before the switch, round 0 included (default 2). */
  hybridRounds?: number;
  /** Called as frames arrive (at most once per round, and at each phase change). */
  onProgress?: (progress: MigrationProgress) => void;
  /** Aborts the migration. */
  signal?: AbortSignal;
  /** How long the source may stay silent (ms, default 10 000). */
  timeoutMs?: number;
  /** How long to wait for the source to connect (ms, default 60 000). */
  acceptTimeoutMs?: number;
  /** Post-copy: userfaultfd features to do without (`"POISON"`: exercise the fallback). */
  decline?: Iterable<Feature>;
}

/** A progress event of either end. */
export interface MigrationProgress {
  /** The end reporting. */
  readonly side: "source" | "destination";
  /** Where the migration is. */
  readonly phase: "connected" | "precopy" | "paused" | "postcopy" | "complete";
  /** The pre-copy round (0 for the first). */
  readonly round: number;
  /** Pages sent (received) with their bytes so far. */
  readonly dataPages: number;
  /** Pages sent (received) as zero so far. */
  readonly zeroPages: number;
  /** Bytes sent (received) so far, every frame and connection. */
  readonly bytes: number;
  /** Source: pages written since the last round (what the next one sends). */
  readonly dirtyPages: number;
  /** Source: pages written per second during the last round. */
  readonly dirtyRate: number;
  /** Source: the bandwidth measured in the last round, bytes per second. */
  readonly bandwidth: number;
  /** Source: the pause the pages left would take at that bandwidth, in ms. */
  readonly estimatedDowntimeMs: number;
  /** Source: the auto-converge level in force (0: none). */
  readonly throttle: number;
}

/** One pre-copy round, as the source saw it. */
export interface RoundStats {
  /** 0 for the first. */
  readonly round: number;
  /** Pages sent with their bytes. */
  readonly dataPages: number;
  /** Pages sent as zero (never touched, or all zero). */
  readonly zeroPages: number;
  /** Bytes sent. */
  readonly bytes: number;
  /** How long it took, in ms. */
  readonly ms: number;
  /** Bytes per second. */
  readonly bandwidth: number;
  /** Pages written while it ran (found by the collect after it). */
  readonly dirtyPages: number;
  /** Pages written per second while it ran. */
  readonly dirtyRate: number;
  /** `true` for the last round, sent while the program was paused. */
  readonly paused: boolean;
}

/** What `Migration.send` resolves with: the migration is complete, the destination holds everything. */
export interface MigrationResult {
  /** How the destination took the memory. */
  readonly mode: MigrationMode;
  /**
   * Pre-copy: the pages left fitted the `downtime` budget before the pause
   * (`false`: the rounds were capped, or stopped shrinking, and the last one was
   * sent as it was). Post-copy: `true`.
   */
  readonly converged: boolean;
  /** The pre-copy rounds, the last (paused) one included. */
  readonly rounds: readonly RoundStats[];
  /** From `pause()` resolving to the destination's confirmation, in ms: how long the program stood still. */
  readonly downtimeMs: number;
  /** From the call to the end, in ms. */
  readonly totalMs: number;
  /** Bytes sent on every connection, frames included. */
  readonly bytesSent: number;
  /** Bytes received (the destination's answers and requests). */
  readonly bytesReceived: number;
  /** Pages sent with their bytes, a page sent twice counted twice. */
  readonly dataPages: number;
  /** Pages sent as zero (run markers: never touched, or all zero). */
  readonly zeroPages: number;
  /** Pages of the image. */
  readonly imagePages: number;
  /** Bytes of the image. */
  readonly imageLength: number;
  /** Post-copy: what the page server and the background stream did. */
  readonly postcopy: {
    /** Pages the destination asked for on first touch. */
    readonly requests: number;
    /** The page server's time per request, in ms: from the request's arrival to its answer sent (mean). */
    readonly serviceMs: number;
    /** Pages pushed by the background stream. */
    readonly streamed: number;
    /** Pages the stream skipped (a request had sent them). */
    readonly skipped: number;
    /** From the destination's confirmation to its last page, in ms. */
    readonly ms: number;
    /** The stream's bandwidth, bytes per second. */
    readonly bandwidth: number;
  } | undefined;
  /** The highest auto-converge level used (0: none). */
  readonly throttle: number;
  /** The digest of the whole image (CRC-32C of the page CRCs), which the destination matched. */
  readonly digest: number;
}

/** What a destination can read while post-copy goes on (`lazy.read()` semantics), and its figures. */
export interface ReceiveStats {
  /** Frames' bytes received, every connection. */
  readonly bytesReceived: number;
  /** Pages received with their bytes. */
  readonly dataPages: number;
  /** Pages received as zero markers. */
  readonly zeroPages: number;
  /** Pre-copy rounds received. */
  readonly rounds: number;
  /** Post-copy: pages fetched on first touch. */
  readonly requests: number;
  /** Post-copy: the mean round trip of those fetches, in ms. */
  readonly requestMs: number;
  /** Post-copy: pages taken from the background stream. */
  readonly streamed: number;
  /** Post-copy: pages poisoned because the source vanished. */
  readonly poisoned: number;
}

/** What `Migration.receive` resolves with: the state is in; resume the program now. */
export interface ReceivedMigration extends AsyncDisposable {
  /** How the memory was taken. */
  readonly mode: MigrationMode;
  /** What the source's `state()` returned: a `Uint8Array` as sent, anything else decoded from JSON. */
  readonly state: unknown;
  /** Bytes of the image (the source's memory length; the target may be longer). */
  readonly imageLength: number;
  /** Pages of the image. */
  readonly imagePages: number;
  /**
   * Resolves once every page is in and the whole image's digest matches the
   * source's (at once in pre-copy); rejects with a `MigrationError` when the source
   * vanished first (`peer-gone`, `timeout`) — every page it did not send is then
   * poisoned where the kernel can (`UFFDIO_POISON`), so touching one fails instead
   * of waiting. Waiting on it keeps the process alive.
   */
  readonly ready: Promise<void>;
  /**
   * Reads `length` bytes at `offset` of the target without touching it directly:
   * during post-copy, a missing page is fetched and a poisoned page is a
   * `UffdError` (`EIO`) instead of `SIGBUS` (`LazyRegion.read()`).
   */
  read(offset: number, length: number): Uint8Array;
  /** The figures so far. */
  stats(): ReceiveStats;
  /**
   * Releases the connections and the post-copy machinery (the target stays, with
   * the pages it has). Before `ready`, the pages not yet in read as zeros or are
   * poisoned.
   */
  close(): Promise<void>;
}
