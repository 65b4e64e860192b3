/**
 * What the main side of a `FaultHandler` and its Worker share: the data the Worker
 * starts with, the layout of the control block (an `Int32Array` over a
 * `SharedArrayBuffer`), and the few messages the Worker posts. Internal; the
 * protocol of a synchronous call: `docs/fault-handler.md`, "Synchronous calls".
 *
 * @module
 */

import { UffdError } from "../kernel/errors.ts";
import type { PolicySpec } from "./fault_policy.ts";
import type { SharedUserfaultfd, UffdEvent } from "../kernel/userfaultfd.ts";

/** Slots of the control block. */
export const CTRL = {
  /** One of `STATE`. */
  STATE: 0,
  /** Non-zero once the main side asked the Worker to stop. */
  STOP: 1,
  /** Number of the latest request (the main side increments it). */
  REQUEST: 2,
  /** Number of the latest request answered (the Worker stores it, then notifies). */
  RESPONSE: 3,
  /** The requested operation, one of `OP`. */
  OP: 4,
  /** 0 when the request succeeded, 1 when it failed (the payload holds the error as JSON). */
  STATUS: 5,
  /** Bytes of JSON in the payload, or the page count of a collect. */
  LENGTH: 6,
  /** Slots in the control block. */
  SIZE: 8,
} as const;

/** Values of `CTRL.STATE`. */
export const STATE = { STARTING: 0, RUNNING: 1, STOPPED: 2, FAILED: 3 } as const;

/** Values of `CTRL.OP`. */
export const OP = { COLLECT: 1, CONTROL: 2, ADD_RANGES: 3 } as const;

/** Bytes of the payload buffer (JSON arguments and results of `control()`). */
export const PAYLOAD_BYTES = 1 << 16;

/** A tracked range as the Worker sees it: numbers, and the registration's modes as flags. */
export interface WorkerRange {
  start: number;
  pages: number;
  firstPage: number;
  wp: boolean;
  /** The size of the pages backing the range (huge pages on hugetlbfs). */
  pageSize: number;
}

/** `workerData` of the handler's Worker. */
export interface HandlerWorkerData {
  /** The user's userfaultfd (the Worker closes it only when it fails). */
  uffd: SharedUserfaultfd;
  /** The handler's own reference to the same userfaultfd (an `F_DUPFD_CLOEXEC` copy), the fd it polls. */
  own: SharedUserfaultfd;
  /** The eventfd that wakes the Worker. */
  eventFd: number;
  control: SharedArrayBuffer;
  payload: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  written: SharedArrayBuffer;
  collected: SharedArrayBuffer;
  ranges: WorkerRange[];
  pages: number;
  policy: PolicySpec;
  /** Post address-space events to the main side (fork fds then belong to it). */
  forwardEvents: boolean;
  /** Messages per `read()`. */
  batch: number;
  /** Microseconds to keep reading before sleeping in `poll()` after a batch. */
  spinMicros: number;
}

/** An error made cloneable: the fields that survive `postMessage`, and a `UffdError`'s parts. */
export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
  uffd?: { errno: number; operation: string; hint?: string; beforeSyscall: boolean };
  cause?: SerializedError;
}

/** What the Worker posts. */
export type WorkerMessage =
  | { type: "ready" }
  | { type: "stopped"; reason: "stopped" | "closed" }
  | { type: "failed"; error: SerializedError }
  | { type: "event"; event: Exclude<UffdEvent, { type: "fork" }> | { type: "fork"; uffd: SharedUserfaultfd } };

/** Turns anything thrown into a `SerializedError`. */
export function serializeError(error: unknown, depth = 0): SerializedError {
  if (!(error instanceof Error)) return { name: "Error", message: String(error) };
  const out: SerializedError = { name: error.name, message: error.message, stack: error.stack };
  if (error instanceof UffdError) {
    out.uffd = {
      errno: error.errno,
      operation: error.operation,
      hint: error.hint,
      beforeSyscall: error.beforeSyscall,
    };
  }
  if (error.cause !== undefined && depth < 4) out.cause = serializeError(error.cause, depth + 1);
  return out;
}

/** Rebuilds an error posted by the Worker (a `UffdError` stays one). */
export function deserializeError(data: SerializedError): Error {
  const cause = data.cause ? deserializeError(data.cause) : undefined;
  let error: Error;
  if (data.uffd) {
    error = new UffdError({ ...data.uffd, cause });
    Object.defineProperty(error, "message", { value: data.message });
  } else {
    error = new Error(data.message, cause === undefined ? undefined : { cause });
    error.name = data.name;
  }
  if (data.stack) error.stack = data.stack;
  return error;
}
