/**
 * `WriteWatch.collect()` on the `async` backend, our side: `--bytes` of private
 * anonymous memory (no transparent huge pages), every page made resident, then
 * watched (registered for async write-protect and protected). Each iteration
 * first writes one byte into `--fraction` of the pages — none (0), every 100th
 * page (0.01: one region per page, the most regions 1% can make) or all (1) —
 * untimed (the kernel resolves those write faults itself), then times one
 * get-and-reset of the written pages. With `--scatter=N` it writes N pages
 * scattered over the range instead (the first N of a Fisher–Yates permutation
 * with a 32-bit LCG, seed 12345: the same pages as the C side). Each answer is
 * checked: exactly the pages written. Pairs with `bench/reference/write_watch_collect.c` (the raw
 * `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`, `PAGE_IS_WRITTEN`).
 *
 * `--impl`:
 * - `method`: `watch.collect()`, the public API: one `PAGEMAP_SCAN` walk that
 *   reports and re-protects the written pages, plus the check for pages that can
 *   no longer be watched (a scan for unregistered ranges and an `msync`), into a
 *   `WriteSet`;
 * - `scanner`: `PagemapScanner.visit()` with the backend's own prepared query
 *   (`WRITTEN`, `writeProtect: true`), the regions kept in a reused array: the
 *   walk alone.
 *
 * ```sh
 * deno run -A bench/ours/write_watch_collect.ts --impl=method --bytes=1073741824 --fraction=0.01 --iterations=20
 * ```
 *
 * @module
 */

import { MADV_POPULATE_WRITE, PagemapScanner, prepareQuery, Region, WriteWatch } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { allocationPerOp, Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["method", "scanner"] as const);
const bytes = args.number("bytes", 2 ** 30);
const fraction = args.number("fraction", 0.01);
const iterations = args.number("iterations", 10);
const warmup = args.number("warmup", 2);
const pageSize = Region.pageSize;
const GiB = 2 ** 30;
const pages = bytes / pageSize;
const scatter = args.number("scatter", 0);
const stride = scatter > 0 ? 0 : fraction >= 1 ? 1 : fraction > 0 ? Math.round(1 / fraction) : 0;
check(scatter <= pages, "--scatter must not exceed the pages of --bytes");
const expected = scatter > 0 ? scatter : stride === 0 ? 0 : Math.ceil(pages / stride);
/** The offsets --scatter writes: the first N pages of a permutation (as the C side computes it). */
const scattered = new Float64Array(scatter);
if (scatter > 0) {
  const order = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) order[i] = i;
  let s = 12345;
  for (let i = pages - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  for (let i = 0; i < scatter; i++) scattered[i] = order[i]! * pageSize;
}

using mem = mapWithoutThp(bytes);
mem.advise(MADV_POPULATE_WRITE);
using watch = WriteWatch.start(mem, { backend: "async" });
check(watch.backend === "async", `the async backend is not available: ${watch.backend}`);
const memory = mem.bytes;

function writeFraction(value: number): void {
  for (let i = 0; i < scattered.length; i++) memory[scattered[i]!] = value;
  if (stride === 0) return;
  for (let offset = 0; offset < bytes; offset += stride * pageSize) memory[offset] = value;
}

using scanner = new PagemapScanner({ vectorLength: 4096 });
const query = prepareQuery({ require: ["WRITTEN"], report: ["WRITTEN"], writeProtect: true });
const kept = new Float64Array(2 * Math.max(expected, 1));
let keptRegions = 0;
let keptPages = 0;
const keep = (first: number, count: number) => {
  kept[keptRegions * 2] = first;
  kept[keptRegions * 2 + 1] = count;
  keptRegions++;
  keptPages += count;
};

function collect(): number {
  if (impl === "method") return watch.collect().count;
  keptRegions = 0;
  keptPages = 0;
  scanner.visit(mem, query, keep);
  return keptPages;
}

const stopwatch = new Stopwatch();
const unused = new Stopwatch();
for (let i = 0; i < warmup + iterations; i++) {
  writeFraction(i + 1);
  const timer = i < warmup ? unused : stopwatch;
  timer.start();
  const found = collect();
  timer.stop();
  check(found === expected, `collect() found ${found} written pages, expected ${expected}`);
}
// Allocations per call (untimed windows of write-then-collect; the writes allocate nothing).
const allocated = allocationPerOp((n) => {
  for (let i = 0; i < n; i++) {
    writeFraction(i + 2);
    collect();
  }
}, Math.max(1, Math.min(1000, Math.round(GiB / 8 / bytes))));
emit({
  bench: "write_watch_collect",
  impl: `ours:${impl}`,
  case: scatter > 0 ? `scatter=${scatter}` : `fraction=${fraction}`,
  bytes,
  ops: iterations,
  extra: { written_pages: expected, alloc_bytes_per_op: allocated },
}, stopwatch);
