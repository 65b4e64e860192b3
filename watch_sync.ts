/**
 * The `sync` write-watch backend — a placeholder until the fault queue's
 * `FaultHandler` exists (issue 3). It will register the span for write-protect
 * without `WP_ASYNC`; a handler Worker running the `unprotect` policy records each
 * written page in a shared bitmap and unprotects it. Its `scan(reset)` must
 * re-protect the recorded pages first and only then take (swap) the bitmap, so that
 * a write racing with it faults again and lands in the set being taken or the next
 * one. It must negotiate `EVENT_REMOVE` (a page zapped by `MADV_DONTNEED` raises no
 * write fault afterwards: count the removed range as written) and `EVENT_REMAP`
 * (follow a move, or report the range lost), and make never-touched pages count
 * with `WP_UNPOPULATED` where present, otherwise by populating them first
 * (`MADV_POPULATE_READ`). See `watch_backend.ts` for the contract.
 *
 * Until then the provider says it is not available, automatic selection skips it,
 * and forcing it fails with that reason.
 *
 * @example
 * ```ts
 * import { syncBackend } from "@uffd/uffd";
 * console.log(syncBackend.unavailable({ address: 0n, pages: 1, shared: false })); // "not available yet: ..."
 * ```
 *
 * @module
 */

import { ERRNO, UffdError } from "./errors.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend } from "./watch_backend.ts";

const WHY = "not available yet: it needs the FaultHandler of the fault-queue issue (#3), which this build lacks";

/**
 * The `sync` backend's provider: not available in this build (see the module
 * documentation for what it will do).
 *
 * @example
 * ```ts
 * import { syncBackend } from "@uffd/uffd";
 * console.log(syncBackend.name); // "sync"
 * ```
 */
export const syncBackend: BackendProvider = Object.freeze({
  name: "sync" as const,
  unavailable(_span: WatchedSpan): string | undefined {
    return WHY;
  },
  create(_span: WatchedSpan): WriteWatchBackend {
    throw new UffdError({ errno: ERRNO.ENOSYS, operation: "WriteWatch", detail: `sync backend: ${WHY}` });
  },
});
