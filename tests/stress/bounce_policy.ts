/**
 * The stress run's fault-handler policy: a missing fault on page `i` is resolved
 * by `UFFDIO_COPY` from page `i` of the bounce buffer — the page's content as the
 * bouncer saved it before zapping it — every `wpEvery`-th copy with
 * `UFFDIO_COPY_MODE_WP` (so the next write faults again); a write-protect fault is
 * resolved by unprotecting the page. `control("stats")` returns its counters.
 *
 * `sabotage: "zero"` serves every 50th missing fault with the zero page instead:
 * the content is lost, which the run must detect.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext, UffdEvent } from "../../mod.ts";

/** Options of the policy. */
export interface BouncePolicyOptions {
  /** Address of the bounce buffer (same layout as the stressed region). */
  bounce: number;
  /** Copy with MODE_WP every this many copies (0: never). */
  wpEvery: number;
  /** `"zero"` to lose content on purpose (to prove the checks catch it). */
  sabotage?: string;
}

/** What the policy counted (`control("stats")`). */
export interface BouncePolicyStats {
  copies: number;
  copiesWp: number;
  unprotects: number;
  notResolved: number;
  zeroed: number;
  removeEvents: number;
}

/** The factory the handler's Worker calls. */
export default function bounce(options: BouncePolicyOptions, context: PolicyContext): FaultPolicy {
  const stats: BouncePolicyStats = {
    copies: 0,
    copiesWp: 0,
    unprotects: 0,
    notResolved: 0,
    zeroed: 0,
    removeEvents: 0,
  };
  const base = options.bounce;
  const page = context.pageSize;
  const wpEvery = options.wpEvery;
  const zero = options.sabotage === "zero";
  let missing = 0;
  return {
    fault(fault: Fault): void {
      if (fault.wp) {
        stats.unprotects++;
        if (!context.unprotect(fault.page, fault.pageSize)) stats.notResolved++;
        return;
      }
      if (fault.minor || fault.pageIndex < 0) {
        throw new Error(`bounce: unexpected fault at 0x${fault.address.toString(16)} (flags ${fault.flags})`);
      }
      missing++;
      if (zero && missing % 50 === 0) {
        stats.zeroed++;
        if (!context.zeropage(fault.page, fault.pageSize)) stats.notResolved++;
        return;
      }
      const wp = wpEvery > 0 && missing % wpEvery === 0;
      if (wp) stats.copiesWp++;
      stats.copies++;
      if (!context.copy(fault.page, base + fault.pageIndex * page, fault.pageSize, wp)) stats.notResolved++;
    },
    event(event: UffdEvent): void {
      if (event.type === "remove") stats.removeEvents++;
    },
    control(op: string): unknown {
      if (op === "stats") return stats;
      throw new Error(`bounce: unknown operation ${op}`);
    },
  };
}
