/**
 * A test policy: `unprotect`, and `control("tid")` answers the OS thread id of the
 * handler's Worker (to send it signals).
 *
 * @module
 */

import { type FaultPolicy, type PolicyContext, unprotectPolicy } from "../../mod.ts";
import { gettid } from "../../ffi/_libc.ts";

/** The factory the handler's Worker calls. */
export default function tid(_options: unknown, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({}, context);
  return {
    fault: (fault) => inner.fault(fault, context),
    control(op: string) {
      if (op === "tid") return gettid();
      throw new Error(`tid: unknown operation ${op}`);
    },
  };
}
