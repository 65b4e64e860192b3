/**
 * A test policy that resolves each missing fault asynchronously: it waits for a
 * timer before mapping the zero page, so the handler takes its async path, also in
 * the middle of a batch.
 *
 * @module
 */

import type { Fault, FaultPolicy, PolicyContext } from "../../mod.ts";

/** The factory the handler's Worker calls. */
export default function asyncZerofill(_options: unknown, context: PolicyContext): FaultPolicy {
  return {
    async fault(fault: Fault) {
      const page = fault.page;
      await new Promise((resolve) => setTimeout(resolve, 1));
      context.zeropage(page, context.pageSize);
    },
  };
}
