/**
 * The synchronous write-protect fault round trip, our side: `--pages` populated
 * pages registered for write-protect and protected; a `FaultHandler` with the
 * `unprotect({ chunk })` policy serves them from its Worker; the main isolate is
 * the writer — it stores one byte into each page in address order, and every
 * first store to a protected chunk blocks in the kernel until the Worker has read
 * the fault, recorded the chunk as written and unprotected it. The writer's loop
 * is timed; `ops` is pages written, so with `--chunk=1` the time per op is the
 * time per fault, and with `--chunk=16` one fault serves 16 pages. Between rounds
 * (untimed) the whole range is protected again. Pairs with
 * `bench/reference/fault_roundtrip.c` (a pthread handler: poll, read,
 * `UFFDIO_WRITEPROTECT`; with `--spin-us=30` it spins after a batch as our default
 * does, and `bench/pairs.ts` judges the goal against that like-for-like row).
 *
 * `--impl`:
 * - `default`: `FaultHandler.start(uffd, policies.unprotect({ chunk }))`, default
 *   options (on more than one CPU the Worker keeps reading for 30 µs after each
 *   batch before it sleeps in `poll()`);
 * - `spin`: the same with `spinMicros: --spin-micros` (default 0: the Worker
 *   sleeps in `poll()` right after each batch, as the C handler does).
 *
 * ```sh
 * deno run -A bench/ours/fault_roundtrip.ts --impl=default --pages=4096 --chunk=1 --rounds=5 --warmup=1
 * ```
 *
 * @module
 */

import { FaultHandler, MADV_POPULATE_WRITE, policies, Region, Userfaultfd } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["default", "spin"] as const);
const pages = args.number("pages", 4096);
const chunk = args.number("chunk", 1);
const rounds = args.number("rounds", 5);
const warmup = args.number("warmup", 1);
const spinMicros = impl === "spin" ? args.number("spin-micros", 0) : undefined;
check(pages % chunk === 0, "--pages must be a multiple of --chunk");
const pageSize = Region.pageSize;

using mem = mapWithoutThp(pages * pageSize);
mem.advise(MADV_POPULATE_WRITE);
using uffd = Userfaultfd.open();
uffd.register(mem, { wp: true });
const handler = await FaultHandler.start(
  uffd,
  policies.unprotect({ chunk }),
  impl === "spin" ? { spinMicros } : {},
);
const bytes = mem.bytes;

function writeEveryPage(value: number): void {
  for (let p = 0, offset = 0; p < pages; p++, offset += pageSize) bytes[offset] = value;
}

const stopwatch = new Stopwatch();
const unused = new Stopwatch();
for (let round = 0; round < warmup + rounds; round++) {
  uffd.writeProtect(mem);
  const timer = round < warmup ? unused : stopwatch;
  timer.start();
  writeEveryPage(round + 1);
  timer.stop();
}
const stats = await handler.stop();
const faultsPerRound = pages / chunk;
check(
  stats.wp === faultsPerRound * (warmup + rounds),
  `the handler served ${stats.wp} write-protect faults, expected ${faultsPerRound * (warmup + rounds)}`,
);
check(bytes[(pages - 1) * pageSize] === warmup + rounds, "the last store did not land");
emit({
  bench: "fault_roundtrip",
  impl: `ours:${impl}`,
  case: `chunk=${chunk}`,
  bytes: mem.length,
  ops: pages * rounds,
  extra: {
    chunk,
    faults: faultsPerRound * rounds,
    spin_micros: spinMicros ?? "default",
    wakeups: stats.wakeups,
    batches: stats.batches,
    largest_batch: stats.largestBatch,
  },
}, stopwatch);
