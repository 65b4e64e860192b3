/**
 * `deno task bench`: PAGEMAP_SCAN over 1 GiB (`MAP_NORESERVE`, no transparent huge
 * pages), asking for `PRESENT`, with 1% of the pages resident (every 100th: one
 * region each, the most regions 1% can make) and with every page resident. The
 * baseline is the `ScanBuffers` loop of `ffi/_pagemap_scan.ts` keeping regions as
 * bigints; against it, `pagemapScan()`, the public API. The C side is in
 * `bench/compare.ts`.
 *
 * @module
 */

import { PAGE_IS_PRESENT, pagemapScan } from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { ScanBuffers } from "../ffi/_pagemap_scan.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";
import { mapWithoutThp, populateFraction } from "./lib/fixtures.ts";
import type { Region } from "../kernel/region.ts";

const GiB = 2 ** 30;
const available = hasPagemapScan();
if (!available) console.log(`skip: kernel ${Deno.osRelease()} has no PAGEMAP_SCAN (6.7+)`);

// Mapped once and kept until the bench process exits (the benches run after this module has loaded).
const sparse = available ? mapWithoutThp(GiB) : undefined;
const full = available ? mapWithoutThp(GiB) : undefined;
if (sparse && full) {
  populateFraction(sparse, 0.01);
  populateFraction(full, 1);
}

const fd = libc.open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
const buffers = new ScanBuffers(1024);
const kept = new BigUint64Array(3 * 4096);

/** The ffi/ loop: resume from walk_end, skip regions already covered (the kernel can report some twice). */
function scanLoop(mem: Region): number {
  const end = mem.address + BigInt(mem.length);
  let at = mem.address;
  let covered = at;
  let n = 0;
  while (at < end) {
    const got = buffers.scan(fd, at, end, 0n, 0n, 0n, PAGE_IS_PRESENT, 0n, PAGE_IS_PRESENT);
    if (got < 0) throw new Error(`PAGEMAP_SCAN failed: ${got}`);
    for (let i = 0; i < got; i++) {
      const regionEnd = buffers.regionEnd(i);
      if (regionEnd <= covered) continue;
      const regionStart = buffers.regionStart(i);
      kept[n * 3] = regionStart < covered ? covered : regionStart;
      kept[n * 3 + 1] = regionEnd;
      kept[n * 3 + 2] = buffers.regionCategories(i);
      covered = regionEnd;
      n++;
    }
    if (buffers.walkEnd <= at) break;
    at = buffers.walkEnd;
  }
  return n;
}

for (const [label, mem] of [["1% resident", sparse], ["all resident", full]] as const) {
  const group = `PAGEMAP_SCAN 1 GiB, ${label}`;
  Deno.bench("ffi/ ScanBuffers loop", { group, baseline: true, ignore: !mem }, () => {
    scanLoop(mem!);
  });
  Deno.bench("pagemapScan()", { group, ignore: !mem }, () => {
    pagemapScan(mem!, { require: ["PRESENT"] });
  });
}
