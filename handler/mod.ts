/**
 * Fault handlers: a {@linkcode FaultHandler} serves a userfaultfd's faults from a
 * Worker with a policy — `policies.unprotect()`, `zerofill()`, `copyFrom()`,
 * `continue()` or a module of your own — so that any thread, the main isolate
 * included, can touch protected or missing memory. How it works and what it
 * guarantees: `docs/fault-handler.md`.
 *
 * @example
 * ```ts
 * import { FaultHandler, policies } from "@uffd/uffd/handler";
 * import { Region, Userfaultfd } from "@uffd/uffd/kernel";
 * using mem = Region.map(4 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { missing: true });
 * await using handler = await FaultHandler.start(uffd, policies.zerofill());
 * mem.bytes[0] = 1; // a missing fault, served by the Worker
 * console.log(handler.stats.missing); // 1
 * ```
 *
 * @module
 */

export { FaultHandler, FaultHandlerError, type FaultHandlerOptions, type HandlerState } from "./fault_handler.ts";
export {
  type CopySourceSpec,
  type Fault,
  type FaultPolicy,
  type MapPagesOptions,
  type PolicyContext,
  type PolicyFactory,
  type PolicySpec,
  type UnprotectOptions,
} from "./fault_policy.ts";
export { type CopySource, type Policies, policies } from "./policies.ts";
export { continuePolicy, copyPolicy, unprotectPolicy, zerofillPolicy } from "./builtin_policies.ts";
export { emptyStats, type HandlerStats } from "./stats.ts";
export { type PageRun, type TrackedRange } from "./tracked_pages.ts";

// Names from the layers below that this entry's API uses, re-exported so that it reads whole
// (each is documented in its own entry).
export {
  type EventsOptions,
  type Feature,
  type ForkEvent,
  type Ioctl,
  type Origin,
  type PagefaultEvent,
  type Range,
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
