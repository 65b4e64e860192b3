/**
 * A test policy that never resolves a fault: it counts them and returns, so the
 * faulting thread stays blocked until someone closes the userfaultfd.
 * `control("held")` says how many it holds.
 *
 * @module
 */

import type { FaultPolicy } from "../../mod.ts";

/** The factory the handler's Worker calls. */
export default function hold(): FaultPolicy {
  let held = 0;
  return {
    fault() {
      held++;
    },
    control(op: string) {
      if (op === "held") return held;
      throw new Error(`hold: unknown operation ${op}`);
    },
  };
}
