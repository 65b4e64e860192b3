/**
 * `deno task bench`: `WriteWatch.collect()` on the `async` backend over 1 GiB of
 * resident memory (no transparent huge pages), with none, 1% (every 100th page)
 * or all of the pages written since the last call. Each iteration writes its
 * fraction (untimed: the kernel resolves those faults itself), then times one
 * get-and-reset. The baseline is `PagemapScanner.visit()` with the backend's own
 * query (`WRITTEN`, `writeProtect: true`): the walk alone, without the check for
 * pages that can no longer be watched and without the `WriteSet`. The C side
 * (the raw `PAGEMAP_SCAN` ioctl) is in `bench/compare.ts`.
 *
 * @module
 */

import { hasPagemapScan, MADV_POPULATE_WRITE, PagemapScanner, prepareQuery, Region, WriteWatch } from "../mod.ts";
import { mapWithoutThp } from "./lib/fixtures.ts";

const GiB = 2 ** 30;
const pageSize = Region.pageSize;
const available = hasPagemapScan() && WriteWatch.backends().some((b) => b.name === "async" && b.available);
if (!available) console.log(`skip: no async write watch on kernel ${Deno.osRelease()} (6.7+)`);

// Mapped and watched once, kept until the bench process exits (the benches run after this module has loaded).
const mem = available ? mapWithoutThp(GiB) : undefined;
mem?.advise(MADV_POPULATE_WRITE);
const watch = mem ? WriteWatch.start(mem, { backend: "async" }) : undefined;
const scanner = new PagemapScanner({ vectorLength: 4096 });
const query = prepareQuery({ require: ["WRITTEN"], report: ["WRITTEN"], writeProtect: true });
let round = 0;

function writeFraction(stride: number): number {
  if (stride === 0) return 0;
  const bytes = mem!.bytes;
  const value = ++round & 0xff;
  let count = 0;
  for (let offset = 0; offset < GiB; offset += stride * pageSize, count++) bytes[offset] = value;
  return count;
}

for (const [stride, label, runs] of [[0, "nothing", {}], [100, "1%", {}], [1, "all", { n: 10, warmup: 1 }]] as const) {
  const group = `collect 1 GiB, ${label} written`;
  Deno.bench("PagemapScanner.visit(), the walk alone", { group, baseline: true, ignore: !mem, ...runs }, (b) => {
    const expected = writeFraction(stride);
    let found = 0;
    b.start();
    scanner.visit(mem!, query, (_first, pages) => found += pages);
    b.end();
    if (found !== expected) throw new Error(`found ${found} written pages, expected ${expected}`);
  });
  Deno.bench("WriteWatch.collect()", { group, ignore: !mem, ...runs }, (b) => {
    const expected = writeFraction(stride);
    b.start();
    const found = watch!.collect().count;
    b.end();
    if (found !== expected) throw new Error(`found ${found} written pages, expected ${expected}`);
  });
}
