/**
 * The fault policy of the `sync` write-watch backend, run in its
 * `FaultHandler`'s Worker: the built-in `unprotect` policy plus what a write watch
 * needs from the address-space events (lost pages, removed ranges refilled before
 * re-protection, a barrier). Internal: `docs/write-watch.md`, "Its policy".
 *
 * @module
 */

import type { UffdEvent } from "../kernel/userfaultfd.ts";
import type { UntouchedFill } from "../kernel/profile.ts";
import { fillUntouched } from "../kernel/_page_contents.ts";
import { unprotectPolicy } from "../handler/builtin_policies.ts";
import type { FaultPolicy, PolicyContext } from "../handler/fault_policy.ts";

/** Slots of the policy's shared state (`Int32Array`). */
export const SYNC_STATE = {
  /** Bumped whenever pages were added to the lost bitmap. */
  LOST_GENERATION: 0,
  /** Slots. */
  SIZE: 1,
} as const;

/** Options of {@linkcode syncWatchPolicy} (structured-cloned into the Worker). */
export interface SyncWatchPolicyOptions {
  /** Address of page 0 of the watched span. */
  base: number;
  /** Count pages removed by `MADV_DONTNEED`/`MADV_REMOVE` as written (private memory: they read back as zeros). */
  removedAsWritten: boolean;
  /**
   * How removed ranges are filled again before re-protection (`control("populate")`),
   * as the main side's kernel profile decided; `null`: markers cover them, nothing to do.
   */
  fill: UntouchedFill | null;
  /** Bitmap of lost pages (a growable `SharedArrayBuffer`, grown by the main side with the span). */
  lost: SharedArrayBuffer;
  /** `Int32Array` slots {@linkcode SYNC_STATE}. */
  state: SharedArrayBuffer;
}

/**
 * The `sync` backend's policy factory: see the module documentation.
 *
 * @example
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * import { SYNC_STATE } from "./_sync_policy.ts";
 * using mem = Region.map(4 * Region.pageSize, { populate: true });
 * using uffd = Userfaultfd.open({ require: ["EVENT_UNMAP"] });
 * uffd.register(mem, { wp: true });
 * const lost = new SharedArrayBuffer(1);
 * const state = new SharedArrayBuffer(4 * SYNC_STATE.SIZE);
 * const options = { base: Number(mem.address), removedAsWritten: true, fill: null, lost, state };
 * const policy = policies.module(new URL("./_sync_policy.ts", import.meta.url), options, "syncWatchPolicy");
 * await using handler = await FaultHandler.start(uffd, policy);
 * uffd.writeProtect(mem);
 * mem.bytes[Region.pageSize] = 1;
 * console.log(handler.collect(), new Uint8Array(lost)[0]); // [{ firstPage: 1, pages: 1 }] 0
 * ```
 */
export function syncWatchPolicy(options: SyncWatchPolicyOptions, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({ chunk: 1, removedAsWritten: options.removedAsWritten }, context);
  const page = context.pageSize;
  const base = options.base;
  const lost = new Uint8Array(options.lost);
  const state = new Int32Array(options.state);
  /** Removed ranges `[start, end)` waiting to be populated again. */
  const removed: number[] = [];

  function markLost(start: number, end: number): void {
    const first = Math.max(0, Math.floor((start - base) / page));
    const last = Math.min(context.pages, Math.ceil((end - base) / page));
    if (first >= last) return;
    for (let i = first; i < last; i++) lost[i >> 3]! |= 1 << (i & 7);
    Atomics.add(state, SYNC_STATE.LOST_GENERATION, 1);
  }

  return {
    fault: inner.fault,
    event(event: UffdEvent): void {
      inner.event?.(event, context);
      if (event.type === "remove") {
        if (options.fill !== null) {
          removed.push(Number(event.start), Number(event.end));
        }
      } else if (event.type === "remap") {
        markLost(Number(event.from), Number(event.from + event.length));
        try {
          context.uffd.unregister({ address: event.to, length: event.length });
        } catch { /* gone again already: nothing to unregister */ }
      } else if (event.type === "unmap") {
        markLost(Number(event.start), Number(event.end));
      }
    },
    control(op: string): unknown {
      // A round trip that returns once the batch being handled is done (see `written()` in _sync.ts).
      if (op === "barrier") return null;
      if (op !== "populate") throw new Error(`syncWatchPolicy: unknown operation ${op}`);
      let populated = 0;
      for (let i = 0; i < removed.length; i += 2) {
        const start = removed[i]!;
        const length = removed[i + 1]! - start;
        // ENOMEM (unmapped since) and the like: those pages are lost, nothing to protect.
        if (fillUntouched(context.uffd.fd, BigInt(start), length, options.fill!) === 0) populated += length / page;
      }
      removed.length = 0;
      return populated;
    },
  };
}
