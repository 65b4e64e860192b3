/**
 * A test policy that misbehaves on its first fault, as `options.how` says:
 * `"spin"` loops forever in JavaScript, `"hang"` returns a promise that never
 * settles (the fault is never resolved), `"close"` ends its Worker with
 * `self.close()`. Until then it zero-fills.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";

/** The factory the handler's Worker calls. */
export default function misbehave(options: { how: string }, context: PolicyContext): FaultPolicy {
  let faults = 0;
  return {
    fault(fault: Fault): void | Promise<void> {
      if (++faults === 1) {
        switch (options.how) {
          case "spin":
            for (;;) { /* forever */ }
          case "hang":
            return new Promise<void>(() => {});
          case "close":
            (globalThis as unknown as { close(): void }).close();
            return;
        }
      }
      context.zeropage(fault.page, fault.pageSize);
    },
  };
}
