/**
 * A test policy: unprotects like the built-in `unprotect`, and records every
 * fault it saw (address, page, thread id, flags) for `handler.control("faults")`.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";
import { unprotectPolicy } from "../../mod.ts";

/** What the policy records per fault. */
export interface SeenFault {
  address: number;
  page: number;
  pageIndex: number;
  threadId: number;
  write: boolean;
  wp: boolean;
}

/** The factory the handler's Worker calls. */
export default function recording(_options: unknown, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({}, context);
  const seen: SeenFault[] = [];
  return {
    fault(fault: Fault) {
      const { address, page, pageIndex, threadId, write, wp } = fault;
      seen.push({ address, page, pageIndex, threadId, write, wp });
      return inner.fault(fault, context);
    },
    control(op: string) {
      if (op === "faults") return seen;
      throw new RangeError(`recording: unknown operation ${op}`);
    },
  };
}
