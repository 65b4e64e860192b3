/**
 * `deno task bench`: the synchronous write-protect fault round trip through a
 * `FaultHandler` with the `unprotect` policy. Each variant has its own 1024
 * populated pages, registered for write-protect, and its own handler (started at
 * its first iteration, kept until the process exits). Each iteration protects the
 * pages (untimed), then the main isolate writes one byte into every page in
 * address order (timed): with chunk 1 that is 1024 round trips to the handler's
 * Worker, with chunk 16 it is 64. Divide by 1024 for the cost per page written.
 * The baseline is the default handler with one page per fault; the C side (a
 * pthread handler) is in `bench/compare.ts`.
 *
 * @module
 */

import { FaultHandler, type FaultHandlerOptions, MADV_POPULATE_WRITE, policies, Region, Userfaultfd } from "../mod.ts";
import { mapWithoutThp } from "./lib/fixtures.ts";

const PAGES = 1024;
const pageSize = Region.pageSize;

interface Setup {
  mem: Region;
  uffd: Userfaultfd;
  handler: FaultHandler;
}

/** A bench over its own memory and handler, started once (the handler never stops: the process exit ends it). */
function roundTrip(chunk: number, options: FaultHandlerOptions): (b: Deno.BenchContext) => Promise<void> {
  let setup: Promise<Setup> | undefined;
  let round = 0;
  return async (b) => {
    const { mem, uffd, handler } = await (setup ??= (async () => {
      const mem = mapWithoutThp(PAGES * pageSize);
      mem.advise(MADV_POPULATE_WRITE);
      const uffd = Userfaultfd.open();
      uffd.register(mem, { wp: true });
      const handler = await FaultHandler.start(uffd, policies.unprotect({ chunk }), options);
      return { mem, uffd, handler };
    })());
    const bytes = mem.bytes;
    const value = ++round & 0xff;
    const before = handler.stats.wp;
    uffd.writeProtect(mem);
    b.start();
    for (let offset = 0; offset < bytes.length; offset += pageSize) bytes[offset] = value;
    b.end();
    if (handler.stats.wp - before !== PAGES / chunk) {
      throw new Error(`${handler.stats.wp - before} faults served for ${PAGES / chunk} chunks`);
    }
  };
}

const group = `WP fault round trip, ${PAGES} pages written in order`;
const runs = { n: 30, warmup: 3 };
Deno.bench("unprotect(), chunk 1, spinMicros: 0", { group, baseline: true, ...runs }, roundTrip(1, { spinMicros: 0 }));
Deno.bench("unprotect(), chunk 1, default (spins 30 µs)", { group, ...runs }, roundTrip(1, {}));
Deno.bench("unprotect({ chunk: 16 }), spinMicros: 0", { group, ...runs }, roundTrip(16, { spinMicros: 0 }));
Deno.bench("unprotect({ chunk: 16 }), default (spins 30 µs)", { group, ...runs }, roundTrip(16, {}));
