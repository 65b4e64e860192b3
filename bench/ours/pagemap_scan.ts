/**
 * PAGEMAP_SCAN over a mapping of `--bytes` with `--fraction` of its pages
 * resident (0, 0.01 = every 100th page, 1), our side: each scan asks for
 * `PRESENT` with a 1024-entry output vector and keeps every region. Pairs with
 * `bench/reference/pagemap_scan.c`.
 *
 * `--impl`:
 * - `method`: `pagemapScan(mem, { require: ["PRESENT"] })`, the public API's
 *   object form (regions as `PageRange` objects with category names);
 * - `packed`: `pagemapScanPacked(mem, { require: ["PRESENT"] }, result)`, the same
 *   scan into the typed arrays of a reused `PackedScan` — like for like with C,
 *   which keeps its regions in an array of structs;
 * - `buffers`: the `ScanBuffers` loop of `ffi/_pagemap_scan.ts` with the C
 *   reference's loop, regions kept as numbers in a reused array — the floor of
 *   what JS can do with the same ioctl.
 *
 * Each variant also reports the bytes it allocates per scan (`alloc_bytes_per_op`,
 * untimed).
 *
 * After timing, the present pages found are checked against the pages made
 * resident; a mismatch is reported as `"correct": false` (see the kernel's stale
 * `walk_end` in the C reference's notes), not hidden.
 *
 * ```sh
 * deno run -A bench/ours/pagemap_scan.ts --impl=method --bytes=1073741824 --fraction=0.01 --iterations=10 --warmup=2
 * ```
 *
 * @module
 */

import { PackedScan, PAGE_IS_PRESENT, pagemapScan, pagemapScanPacked, type PageRange } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { ScanBuffers } from "../../ffi/_pagemap_scan.ts";
import { O_CLOEXEC, O_RDONLY } from "../../ffi/linux.ts";
import { mapWithoutThp, populateFraction } from "../lib/fixtures.ts";
import { allocationPerOp, Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["method", "packed", "buffers"] as const);
const bytes = args.number("bytes", 2 ** 30);
const fraction = args.number("fraction", 1);
const iterations = args.number("iterations", 10);
const warmup = args.number("warmup", 2);

using mem = mapWithoutThp(bytes);
const expected = populateFraction(mem, fraction);
const PAGE = libc.PAGE_SIZE;

let regions: PageRange[] = [];
/** The public API, objects. */
function method(): void {
  regions = pagemapScan(mem, { require: ["PRESENT"] });
}
let packed = new PackedScan();
/** The public API, packed into a reused result. */
function packedScan(): void {
  packed = pagemapScanPacked(mem, { require: ["PRESENT"] }, packed);
}

const scanFd = libc.open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
check(scanFd >= 0, "cannot open /proc/self/pagemap");
const buffers = new ScanBuffers(1024);
let kept = new Float64Array(3 * 1024);
let keptRegions = 0;
/** The ffi layer with the C reference's loop: resume from walk_end, skip what is already covered. */
function rawLoop(): void {
  const start = Number(mem.address);
  const end = start + mem.length;
  buffers.setQuery(0n, 0n, PAGE_IS_PRESENT, 0n, PAGE_IS_PRESENT);
  let at = start;
  let covered = start;
  let n = 0;
  while (at < end) {
    const got = buffers.scanFrom(scanFd, at, end, 0);
    check(got >= 0, `PAGEMAP_SCAN failed: ${got}`);
    if ((n + got) * 3 > kept.length) {
      const grown = new Float64Array(kept.length * 2 + got * 3);
      grown.set(kept);
      kept = grown;
    }
    for (let i = 0; i < got; i++) {
      const regionEnd = buffers.endOf(i);
      if (regionEnd <= covered) continue;
      const regionStart = buffers.startOf(i);
      kept[n * 3] = regionStart < covered ? covered : regionStart;
      kept[n * 3 + 1] = regionEnd;
      kept[n * 3 + 2] = buffers.categoriesOf(i);
      covered = regionEnd;
      n++;
    }
    const walkEnd = buffers.walkEndNumber;
    if (walkEnd <= at) break;
    at = walkEnd;
  }
  keptRegions = n;
}

/** Present pages in the last scan's result (counted after timing, as the C reference does). */
function presentPages(): number {
  let pages = 0;
  if (impl === "method") { for (const r of regions) pages += r.pages; }
  else if (impl === "packed") pages = packed.pages;
  else for (let i = 0; i < keptRegions; i++) pages += (kept[i * 3 + 1]! - kept[i * 3]!) / PAGE;
  return pages;
}

const run = impl === "method" ? method : impl === "packed" ? packedScan : rawLoop;
for (let i = 0; i < warmup; i++) run();
const stopwatch = new Stopwatch();
stopwatch.start();
for (let i = 0; i < iterations; i++) run();
stopwatch.stop();
// Bytes allocated per scan, in untimed windows of a few scans (an object per region makes MiBs per scan at 1%).
const allocated = allocationPerOp((n) => {
  for (let i = 0; i < n; i++) run();
}, fraction === 0 ? 1000 : Math.max(1, Math.min(50, Math.round(2 ** 22 / (bytes * fraction)))));
libc.close(scanFd);
const found = presentPages();
if (found !== expected) {
  console.error(`warning: ${impl} found ${found} present pages, ${expected} were made resident`);
}
emit({
  bench: "pagemap_scan",
  impl: `ours:${impl}`,
  case: `fraction=${fraction}`,
  bytes,
  ops: iterations,
  extra: {
    regions: impl === "method" ? regions.length : impl === "packed" ? packed.length : keptRegions,
    present_pages: found,
    expected_pages: expected,
    correct: found === expected,
    alloc_bytes_per_op: allocated,
  },
}, stopwatch);
