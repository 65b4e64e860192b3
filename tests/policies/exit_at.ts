/**
 * A test policy: unprotects like the built-in `unprotect`, and ends its Worker
 * with `process.exit(7)` on fault number `at` — a Worker that dies while the
 * main isolate is blocked in a fault.
 *
 * @module
 */

import process from "node:process";
import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";
import { unprotectPolicy } from "../../mod.ts";

/** The factory the handler's Worker calls. */
export default function exitAt(options: { at: number }, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({}, context);
  let faults = 0;
  return {
    fault(fault: Fault) {
      if (++faults === options.at) process.exit(7);
      return inner.fault(fault, context);
    },
  };
}
