/**
 * {@linkcode Migration}: live migration of a running program's memory — a
 * `WebAssembly.Memory`, or any `Region` — to another Deno process, on this
 * machine or another, over TCP, while the program runs. The machinery QEMU moves
 * virtual machines with, on the library's parts: a `WriteWatch` finds what each
 * pre-copy round must send again, a `LazyRegion` serves post-copy faults from the
 * network, every batch carries CRC-32C as in the checkpoint format.
 *
 * - **Pre-copy** (`mode: "precopy"`, the default): round 0 sends the pages that
 *   hold data (never-touched and all-zero pages travel as run markers), each next
 *   round the pages written meanwhile, until what is left fits the `downtime`
 *   budget at the measured bandwidth (or the rounds stop shrinking, or reach
 *   `maxRounds`); then `pause()`, the last pages and `state()`, and the
 *   destination's confirmation. `maxRounds: 0` is stop-and-copy.
 * - **Post-copy** (`"postcopy"`): `pause()` and `state()` at once; the destination
 *   resumes as soon as the state is in, and every page it touches before the
 *   background stream brings it is fetched on its own connection, ahead of the
 *   stream. `ready` resolves when every page is in.
 * - **Hybrid** (`"hybrid"`): a few pre-copy rounds, then post-copy.
 *
 * Nothing is lost on failure: until the destination confirms, the source keeps
 * its memory, and a failed migration calls `resume()`; in post-copy a source that
 * vanishes fails every page it did not send, on the destination, with a typed
 * error (poisoned where the kernel has `UFFDIO_POISON`), never a hang. The wire
 * format: `docs/migration-format.md`; the design and the figures:
 * `docs/live-migration.md`.
 *
 * Connections are made with libc (the post-copy's Workers share them), so
 * `--allow-net` is not consulted: `--allow-ffi` and `--allow-read` of the package
 * (for the Workers) are what it takes.
 *
 * @example Move a memory between two ends (here in one process, over loopback)
 * ```ts
 * import { Migration } from "@uffd/uffd";
 * const source = new WebAssembly.Memory({ initial: 16 });
 * new Uint8Array(source.buffer).fill(7, 0, 100_000);
 * using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
 * const target = new WebAssembly.Memory({ initial: 16 });
 * const [sent, received] = await Promise.all([
 *   Migration.send(source, { connection: listener, state: () => ({ steps: 42 }) }),
 *   Migration.receive(listener, { target }),
 * ]);
 * console.log(received.state, new Uint8Array(target.buffer)[99_999], sent.rounds.length >= 1); // { steps: 42 } 7 true
 * await received.close();
 * ```
 *
 * @module
 */

import type { MemoryTarget } from "../kernel/target.ts";
import { DestinationRun } from "./_destination.ts";
import { Socket } from "./_socket.ts";
import { send } from "./_source.ts";
import type { MigrationEndpoint, MigrationResult, ReceivedMigration, ReceiveOptions, SendOptions } from "./_types.ts";

export type {
  MigrationEndpoint,
  MigrationMode,
  MigrationProgress,
  MigrationResult,
  ReceivedMigration,
  ReceiveOptions,
  ReceiveStats,
  RoundStats,
  SendOptions,
} from "./_types.ts";

/**
 * A destination's listening socket: give it to `Migration.receive` (and its
 * `hostname`/`port` to the source). Close it when done (`using`).
 *
 * @example
 * ```ts
 * import { Migration } from "@uffd/uffd";
 * using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
 * console.log(listener.port > 0); // true
 * ```
 */
export class MigrationListener implements MigrationEndpoint, Disposable {
  /** The address it listens on. */
  readonly hostname: string;
  /** The port it listens on (the one picked, when 0 was asked for). */
  readonly port: number;
  /** @internal The socket. */
  readonly socket: Socket;

  /** @internal */
  constructor(socket: Socket) {
    this.socket = socket;
    const local = socket.local;
    this.hostname = local.hostname;
    this.port = local.port;
  }

  /** Stops listening. Harmless twice. */
  close(): void {
    this.socket.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Live migration, both ends: see the module documentation.
 *
 * @example The destination: listen, receive, resume
 * ```ts ignore
 * import { Migration } from "@uffd/uffd";
 * using listener = Migration.listen({ hostname: "0.0.0.0", port: 7070 });
 * const memory = new WebAssembly.Memory({ initial: 128 });
 * const received = await Migration.receive(listener, { target: memory, mode: "postcopy" });
 * resumeProgram(memory, received.state); // at once: pages come on first touch
 * await received.ready; // every page is in
 * ```
 */
export class Migration {
  private constructor() {}

  /**
   * Listens for a migration on `endpoint` (port 0: any free port, see `listener.port`).
   *
   * @param endpoint An IPv4 or IPv6 address (`0.0.0.0`, `127.0.0.1`, `::`…) or `localhost`, and a port.
   * @returns The listener: pass it to {@linkcode Migration.receive}.
   * @throws {TypeError} For a hostname that is not an address, or a bad port.
   * @throws {UffdError} From `bind` (`EADDRINUSE`…) or `listen`.
   *
   * @example
   * ```ts
   * import { Migration } from "@uffd/uffd";
   * using listener = Migration.listen({ hostname: "::1", port: 0 });
   * console.log(listener.hostname); // ::1
   * ```
   */
  static listen(endpoint: MigrationEndpoint): MigrationListener {
    if (endpoint === null || typeof endpoint !== "object") {
      throw new TypeError("Migration.listen: expected { hostname, port }");
    }
    return new MigrationListener(Socket.listen(endpoint));
  }

  /**
   * Migrates `memory` to the destination listening at `options.connection`, while
   * the program goes on writing it (until `pause()`), and resolves once the
   * destination holds everything (post-copy: once it has every page). Rejects with
   * a {@linkcode MigrationError}; the program was resumed (`resume()`) when it
   * had been paused and the destination had not confirmed (`error.resumed`).
   *
   * @param memory The memory to move: a `WebAssembly.Memory`, a `Region`, an `ArrayBuffer` or a view.
   * @param options The connection, the program's hooks, the budget and limits.
   * @returns The rounds, the downtime, the bytes and pages, the digest.
   * @throws {TypeError} For options of the wrong type.
   * @throws {MigrationError} For every failure, by code (the destination's refusal included).
   *
   * @example
   * ```ts ignore
   * import { Migration } from "@uffd/uffd";
   * const result = await Migration.send(memory, {
   *   connection: { hostname: "10.0.0.2", port: 7070 },
   *   pause: () => worker.park(), resume: () => worker.unpark(), state: () => worker.globals(),
   *   downtime: 20, onProgress: (p) => console.log(p.round, p.dirtyPages, p.bandwidth),
   * });
   * console.log(result.rounds.length, result.downtimeMs, result.bytesSent);
   * ```
   */
  static send(memory: MemoryTarget, options: SendOptions): Promise<MigrationResult> {
    return send(memory, options);
  }

  /**
   * Receives a migration on `listener` into `options.target`, and resolves with the
   * state once the program can resume: after every page (pre-copy), or as soon as
   * the state is in (post-copy and hybrid: `ready` says when every page is). An
   * endpoint instead of a listener is listened on for this one migration.
   *
   * @param listener Where the source connects ({@linkcode Migration.listen}), or an endpoint to listen on.
   * @param options The target, the mode, limits.
   * @returns The state, `ready`, safe reads during post-copy, figures, `close()`.
   * @throws {TypeError} For a target that is not a page-aligned `WebAssembly.Memory` or private `Region`.
   * @throws {MigrationError} For every failure, by code (its reason is also sent to the source).
   *
   * @example
   * ```ts ignore
   * import { Migration } from "@uffd/uffd";
   * const received = await Migration.receive({ hostname: "0.0.0.0", port: 7070 }, { target: memory });
   * console.log(received.state);
   * ```
   */
  static async receive(
    listener: MigrationListener | MigrationEndpoint,
    options: ReceiveOptions,
  ): Promise<ReceivedMigration> {
    const own = !(listener instanceof MigrationListener);
    const socket = own ? Socket.listen(listener) : listener.socket;
    let run: DestinationRun;
    try {
      run = new DestinationRun(socket, own, options);
    } catch (e) {
      if (own) socket.close();
      throw e;
    }
    return await run.run();
  }
}

export { MigrationError, type MigrationErrorCode, type MigrationErrorInit } from "./migration_error.ts";
