/**
 * The main isolate reads a userfaultfd's events itself (`uffd.events()`) and then
 * zaps, moves or unmaps registered memory: with `EVENT_REMOVE`/`EVENT_REMAP`/
 * `EVENT_UNMAP` the kernel would make each call wait until this very thread reads
 * the event — for good. Each call must be refused at once (`EDEADLK`), and work once
 * the userfaultfd is shared with a thread that reads its events, or closed. Run by
 * `tests/events_test.ts` in its own process, killed at a deadline (a hang fails).
 *
 * @module
 */

import assert from "node:assert/strict";
import { FaultHandler, policies, Region, UffdError, Userfaultfd } from "../../mod.ts";

const PAGE = Region.pageSize;

function refused(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UffdError, String(e));
    return `${e.code}: ${e.message}`;
  }
  return "returned";
}

const scenarios: Record<string, () => Promise<Record<string, unknown>>> = {
  "main-reads-events": async () => {
    using elsewhere = Region.map(2 * PAGE);
    using mem = Region.map(16 * PAGE, { populate: true });
    const uffd = Userfaultfd.open({ require: ["EVENT_REMOVE", "EVENT_REMAP", "EVENT_UNMAP"] });
    uffd.register(mem, { missing: true });
    const events = uffd.events({}); // this isolate reads them
    const zap = refused(() => mem.zap(mem.pages(2, 1)));
    const move = refused(() => mem.movePages(mem.pages(4, 2), elsewhere.address));
    const unmap = refused(() => mem.unmap());
    const outside = refused(() => elsewhere.zap()); // not registered: goes through
    await events.return?.();
    // Read on another thread: a handler's Worker reads the events, so the same calls return.
    const handler = await FaultHandler.start(uffd, policies.zerofill());
    const afterShare = refused(() => mem.zap(mem.pages(2, 1)));
    await handler.stop();
    uffd.close();
    const afterClose = refused(() => mem.movePages(mem.pages(4, 2), elsewhere.address));
    return { zap, move, unmap, outside, afterShare, afterClose };
  },
};

const name = Deno.args[0] ?? "";
const run = scenarios[name];
if (!run) throw new Error(`unknown scenario ${name}: ${Object.keys(scenarios).join(", ")}`);
console.log(JSON.stringify(await run()));
