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
 * - `batch`: `uffd.readEventsInto(batch)` into a reused `EventBatch`, which
 *   decodes the messages into its typed arrays (no object per message), read
 *   from there — the like-for-like one: C decodes into a reused array of structs;
 * - `method`: `uffd.readEvents()`, the public API's object form (a typed event
 *   object per message);
 * - `wrapper`: `MessageBatch` from `ffi/` (one `read(2)`, allocation-free
 *   accessors), what the fault handlers' loops use;
 * - `raw-symbol`: the bare dlopen'd `read` symbol (`bench/lib/raw_libc.ts`) into
 *   a buffer, nothing decoded: the floor of any variant, what `read(2)` costs
 *   from this process.
 *
 * Every variant reads each message's fields (type, address, flags, thread) inside
 * the timed section, as C decodes each into a record.
 *
 * ```sh
 * deno run -A bench/ours/read_events.ts --impl=method --faults=32 --samples=40 --warmup=5
 * ```
 *
 * @module
 */

import { EventBatch, MADV_DONTNEED, Region, Userfaultfd } from "../../mod.ts";
import { memsetOffThread } from "../../ffi/_libc.ts";
import { MessageBatch } from "../../ffi/_message_batch.ts";
import { UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WRITE } from "../../ffi/uapi.ts";
import { mapWithoutThp, waitBlocked } from "../lib/fixtures.ts";
import { rawRead } from "../lib/raw_libc.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const MESSAGES_PER_READ = 64;
const args = new Args();
const impl = args.choice("impl", ["batch", "method", "wrapper", "raw-symbol"] as const);
const faults = args.number("faults", 32);
const samples = args.number("samples", 40);
const warmup = args.number("warmup", 5);
check(faults >= 1 && faults <= 32, "--faults must be 1..32 (Deno's blocking pool runs 32 FFI calls at once)");

using mem = mapWithoutThp(faults * Region.pageSize);
using uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const page = BigInt(Region.pageSize);
const WRITE = Number(UFFD_PAGEFAULT_FLAG_WRITE);
/** What the fields read add up to (so that no read is optimised away). */
let checksum = 0;

const batch = new EventBatch(MESSAGES_PER_READ);
/** Reads what is queued into the reused batch (decoded there into its arrays); returns the faults that were writes. */
function batched(): number {
  const got = uffd.readEventsInto(batch);
  const { codes, addresses, flags, threadIds } = batch;
  let n = 0;
  for (let i = 0; i < got; i++) {
    if (codes[i] !== UFFD_EVENT_PAGEFAULT) continue;
    checksum += addresses[i]! + flags[i]! + threadIds[i]!;
    if (flags[i]! & WRITE) n++;
  }
  return n;
}
function method(): number {
  const events = uffd.readEvents();
  let n = 0;
  for (const e of events) {
    if (e.type !== "pagefault") continue;
    checksum += Number(e.address) + Number(e.flags) + (e.threadId ?? 0);
    if (e.write) n++;
  }
  return n;
}
const messages = new MessageBatch(MESSAGES_PER_READ);
function wrapper(): number {
  const got = messages.read(uffd.fd);
  check(got >= 0, `read failed: ${got}`);
  let n = 0;
  for (let i = 0; i < got; i++) {
    if (messages.event(i) !== UFFD_EVENT_PAGEFAULT) continue;
    const flags = messages.flags(i);
    checksum += messages.address(i) + flags + messages.ptid(i);
    if (flags & WRITE) n++;
  }
  return n;
}
const rawBuffer = new Uint8Array(MESSAGES_PER_READ * 32);
const RAW_LENGTH = BigInt(rawBuffer.byteLength);
/** The bare read: the messages' count, from the bytes read (every message is assumed to be a write fault). */
function rawSymbol(): number {
  const got = Number(rawRead(uffd.fd, rawBuffer, RAW_LENGTH));
  checksum += got;
  return got / 32;
}
const run = impl === "batch" ? batched : impl === "method" ? method : impl === "wrapper" ? wrapper : rawSymbol;

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
  extra: { batch: faults, samples, checksum_ok: checksum > 0 },
}, stopwatch);
