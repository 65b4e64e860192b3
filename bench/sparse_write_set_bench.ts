/**
 * `deno task bench`: which pages of 1 GiB were written, when 1% were (every 100th
 * page) — the question an incremental dump or `GetWriteWatch` asks. The baseline
 * is what a kernel without `PAGEMAP_SCAN` allows: read the range's 262,144 entries
 * of `/proc/self/pagemap` (`readPagemapRaw`) and keep the present pages whose
 * uffd-wp bit (57) the write cleared. Against it, `WriteWatch.written()` on the
 * `async` backend: one `PAGEMAP_SCAN` walk for `PAGE_IS_WRITTEN`. Both read the
 * same watch's state and reset nothing, so every iteration sees the same 1%.
 * (`collect()`, which also protects the pages again, is compared with C in
 * `bench/compare.ts`.) Issue 4's goal: the async backend at least 20× faster than
 * reading pagemap for a sparse write set.
 *
 * @module
 */

import { PM_PRESENT, PM_UFFD_WP, readPagemapRaw, WriteWatch } from "../mod.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";
import { mapWithoutThp } from "./lib/fixtures.ts";

const GiB = 2 ** 30;
const available = hasPagemapScan();
if (!available) console.log(`skip: kernel ${Deno.osRelease()} has no PAGEMAP_SCAN (6.7+)`);

// Mapped and watched once, kept until the bench process exits.
const mem = available ? mapWithoutThp(GiB) : undefined;
const watch = mem ? WriteWatch.start(mem, { backend: "async" }) : undefined;
const STRIDE = 100;
let expected = 0;
if (mem) {
  const bytes = mem.bytes;
  for (let page = 0; page < mem.pageCount; page += STRIDE, expected++) bytes[page * mem.pageSize] = 1;
}
const entries = mem ? new BigUint64Array(mem.pageCount) : new BigUint64Array(0);

function check(found: number): void {
  if (found !== expected) throw new Error(`found ${found} written pages, expected ${expected}`);
}

Deno.bench({
  name: "read /proc/self/pagemap, keep present pages without uffd-wp",
  group: "written pages of 1 GiB, 1% written",
  baseline: true,
  ignore: !available,
  fn() {
    const raw = readPagemapRaw(mem!, { into: entries });
    let found = 0;
    for (let i = 0; i < raw.length; i++) {
      const entry = raw[i]!;
      if ((entry & PM_PRESENT) !== 0n && (entry & PM_UFFD_WP) === 0n) found++;
    }
    check(found);
  },
});

Deno.bench({
  name: "WriteWatch.written() (async backend: one PAGEMAP_SCAN walk)",
  group: "written pages of 1 GiB, 1% written",
  ignore: !available,
  fn() {
    check(watch!.written().count);
  },
});
