/**
 * A test policy: `unprotect` with `removedAsWritten`, except that it holds its
 * first fault until another message is queued on the userfaultfd (up to 5 s).
 * Used to resolve a fault while a remove event is pending, which must fail with
 * `EAGAIN` and be retried by the handler after the event is read.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";
import { unprotectPolicy } from "../../mod.ts";
import { PollSet } from "../../ffi/_pollset.ts";

/** The factory the handler's Worker calls. */
export default function gated(_options: unknown, context: PolicyContext): FaultPolicy {
  const inner = unprotectPolicy({ removedAsWritten: true }, context);
  const queue = new PollSet([context.uffd.fd]);
  let held = false;
  return {
    fault(fault: Fault) {
      if (!held) {
        held = true;
        queue.poll(5000); // returns once the next message (the remove event) is queued
      }
      return inner.fault(fault, context);
    },
    event(event, ctx) {
      return inner.event?.(event, ctx);
    },
  };
}
