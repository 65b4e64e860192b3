/**
 * The first write to a page under an `async` write watch, our side: the kernel
 * resolves the write-protect fault itself (`UFFD_FEATURE_WP_ASYNC`), so the cost is
 * the kernel's — this pair checks that nothing of ours stands in the way. A
 * `WriteWatch` with the `async` backend watches `--bytes` of resident memory; each
 * round writes one byte to every page (timed: one first write per page), then
 * `collect()` (untimed) checks that every page was reported and protects them
 * again. Pairs with `bench/reference/async_first_write.c`.
 *
 * ```sh
 * deno run -A bench/ours/async_first_write.ts --impl=watch --bytes=268435456 --rounds=3
 * ```
 *
 * @module
 */

import { WriteWatch } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["watch"] as const);
const bytes = args.number("bytes", 256 * 2 ** 20);
const rounds = args.number("rounds", 3);

using mem = mapWithoutThp(bytes);
const pageSize = mem.pageSize;
const pages = mem.pageCount;
mem.bytes.fill(1); // resident before the watch starts: every timed write is a first write to a protected page
using watch = WriteWatch.start(mem, { backend: "async" });
check(watch.backend === "async", `the async backend is not available: ${watch.backend}`);
const view = mem.bytes;

const stopwatch = new Stopwatch();
const unused = new Stopwatch();
for (let round = 0; round <= rounds; round++) {
  const timer = round === 0 ? unused : stopwatch; // round 0 is the warmup
  timer.start();
  for (let offset = 0; offset < bytes; offset += pageSize) view[offset] = round + 2;
  timer.stop();
  const set = watch.collect();
  check(set.count === pages, `collect() reported ${set.count} of ${pages} written pages`);
}
emit({
  bench: "async_first_write",
  impl: `ours:${impl}`,
  case: "first write, WP_ASYNC",
  bytes,
  ops: rounds * pages,
  extra: {},
}, stopwatch);
