/**
 * A test policy: unprotects like the built-in `unprotect`, and throws on fault
 * number `at` (an error with a cause), to check that a failing policy leaves
 * no thread blocked and reports the error.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";
import { unprotectPolicy } from "../../mod.ts";

/** The factory the handler's Worker calls. */
export default function throwAt(options: { at: number }, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({}, context);
  let faults = 0;
  return {
    fault(fault: Fault) {
      if (++faults === options.at) {
        throw new Error(`policy failed at fault ${faults}`, { cause: new RangeError("the inner cause") });
      }
      return inner.fault(fault, context);
    },
  };
}
