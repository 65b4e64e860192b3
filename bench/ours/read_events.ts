/**
 * Reading a batch of queued page-fault messages, our side: `--faults` writers
 * (`memset` on Deno's blocking pool, one page each, at most 32: the pool's size)
 * block in missing faults; once every one of them sleeps in `handle_userfault`
 * (untimed), one call takes the whole queue and decodes it. Only that call is
 * timed. Then (untimed) one `UFFDIO_ZEROPAGE` wakes the writers, they finish, and
 * `MADV_DONTNEED` makes the pages missing again. Pairs with
 * `bench/reference/read_events.c`.
 *
 * `--impl`:
 * - `method`: `uffd.readEvents()`, the public API (typed event objects);
 * - `wrapper`: `readMessages()` + `decodeUffdMsg()` from `ffi/` into a reused
 *   buffer (decoded `uffd_msg` objects, no event objects).
 *
 * ```sh
 * deno run -A bench/ours/read_events.ts --impl=method --faults=32 --samples=40 --warmup=5
 * ```
 *
 * @module
 */

import { MADV_DONTNEED, Region, Userfaultfd } from "../../mod.ts";
import { memsetOffThread } from "../../ffi/_libc.ts";
import { decodeUffdMsg, SIZEOF_UFFD_MSG, type UffdMsg } from "../../ffi/_structs.ts";
import { readMessages } from "../../ffi/_uffd_ioctls.ts";
import { UFFD_EVENT_PAGEFAULT } from "../../ffi/uapi.ts";
import { mapWithoutThp, waitBlocked } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const MESSAGES_PER_READ = 64;
const args = new Args();
const impl = args.choice("impl", ["method", "wrapper"] as const);
const faults = args.number("faults", 32);
const samples = args.number("samples", 40);
const warmup = args.number("warmup", 5);
check(faults >= 1 && faults <= 32, "--faults must be 1..32 (Deno's blocking pool runs 32 FFI calls at once)");

using mem = mapWithoutThp(faults * Region.pageSize);
using uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const buffer = new Uint8Array(MESSAGES_PER_READ * SIZEOF_UFFD_MSG);
const page = BigInt(Region.pageSize);

/** Reads and decodes what is queued; returns the number of page-fault messages. */
function method(): number {
  const events = uffd.readEvents();
  let n = 0;
  for (const e of events) if (e.type === "pagefault" && e.write) n++;
  return n;
}
const decoded: UffdMsg[] = [];
function wrapper(): number {
  const got = readMessages(uffd.fd, buffer);
  check(got >= 0, `read failed: ${got}`);
  decoded.length = 0;
  for (let offset = 0; offset + SIZEOF_UFFD_MSG <= got; offset += SIZEOF_UFFD_MSG) {
    decoded.push(decodeUffdMsg(buffer, offset));
  }
  let n = 0;
  for (const m of decoded) if (m.event === UFFD_EVENT_PAGEFAULT) n++;
  return n;
}
const run = impl === "method" ? method : wrapper;

const stopwatch = new Stopwatch();
const unused = new Stopwatch();
let events = 0;
for (let sample = 0; sample < warmup + samples; sample++) {
  const writers: Promise<bigint>[] = [];
  for (let i = 0; i < faults; i++) writers.push(memsetOffThread(mem.address + BigInt(i) * page, 1, page));
  await waitBlocked(faults);
  const timer = sample < warmup ? unused : stopwatch;
  timer.start();
  const n = run();
  timer.stop();
  check(n === faults, `one read returned ${n} of ${faults} queued faults`);
  if (sample >= warmup) events += n;
  uffd.zeropage(mem);
  await Promise.all(writers);
  mem.advise(MADV_DONTNEED);
}
emit({
  bench: "read_events",
  impl: `ours:${impl}`,
  case: "pagefault batch",
  bytes: mem.length,
  ops: events,
  extra: { batch: faults, samples },
}, stopwatch);
