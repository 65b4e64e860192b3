/**
 * A live snapshot, our side: a `LiveSnapshot` of `--bytes` of private anonymous
 * memory (4 KiB pages, `MADV_NOHUGEPAGE`, every page filled with its own pattern)
 * into a populated `Uint8Array` sink of the same size, with the default chunk of
 * 64 pages (`--chunk`). With `--writer=1` a Worker (`bench/lib/stall_writer.ts`)
 * writes one word into a random page in a loop while the snapshot runs and times
 * every write: a write slower than 2 µs counts as a stall (it waited in a
 * write-protect fault). The same process first times one plain copy of the whole
 * buffer (`TypedArray.set`, which is `memmove`). Afterwards every page of the sink
 * is checked against the content it had when the snapshot began. Pairs with
 * `bench/reference/live_snapshot.c` (a handler thread and a copier).
 *
 * The result line's time is the snapshot's, from protection to the last page saved
 * (`SnapshotResult.elapsedMs`), per page; `extra` holds the `memcpy` time per page
 * (`memcpy_ns_per_page`) and the writer's stall per fault (`stall_p50_ns`, mean,
 * 99th percentile), which `bench/pairs.ts` compares too. No thread CPU time: the
 * copier and the handler are Workers, not the timed thread.
 *
 * ```sh
 * deno run -A bench/ours/live_snapshot.ts --bytes=268435456 --writer=1
 * ```
 *
 * @module
 */

import { LiveSnapshot } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";
import { monotonicNs } from "../lib/raw_libc.ts";

const args = new Args();
args.choice("impl", ["default"] as const);
const size = args.number("bytes", 2 ** 30);
const chunk = args.number("chunk", 64);
const withWriter = args.number("writer", 0) === 1;
const PAGE = 4096;
const pages = size / PAGE;

using mem = mapWithoutThp(size);
using sink = mapWithoutThp(size);
const words = new Uint32Array(mem.bytes.buffer);
for (let p = 0; p < pages; p++) words.fill((0xa0000000 + p) >>> 0, p * 1024, (p + 1) * 1024);
sink.bytes.fill(1);

let t0 = monotonicNs();
sink.bytes.set(mem.bytes);
const memcpyNs = monotonicNs() - t0;
sink.bytes.fill(1);

const control = new Int32Array(new SharedArrayBuffer(8));
let writer: Worker | undefined;
let finished: Promise<{ writes: number; stalls: Float64Array }> | undefined;
if (withWriter) {
  writer = new Worker(new URL("../lib/stall_writer.ts", import.meta.url), { type: "module" });
  const ready = Promise.withResolvers<void>();
  const end = Promise.withResolvers<{ writes: number; stalls: Float64Array }>();
  writer.onmessage = (e) => e.data.ready ? ready.resolve() : end.resolve(e.data);
  writer.postMessage({ address: mem.address, pages, control: control.buffer });
  await ready.promise;
  finished = end.promise;
}

t0 = monotonicNs();
const snap = await LiveSnapshot.take(mem, { sink: sink.bytes, chunkPages: chunk });
const takeNs = monotonicNs() - t0;
Atomics.store(control, 0, 1);
Atomics.notify(control, 0);
const result = await snap.done;
Atomics.store(control, 1, 1);
const written = finished ? await finished : { writes: 0, stalls: new Float64Array(0) };
writer?.terminate();

let wrong = 0;
const saved = new Uint32Array(sink.bytes.buffer);
for (let p = 0; p < pages; p++) {
  const want = (0xa0000000 + p) >>> 0;
  for (let w = p * 1024; w < (p + 1) * 1024; w++) {
    if (saved[w] !== want) {
      wrong++;
      break;
    }
  }
}
check(wrong === 0, `${wrong} pages of the snapshot differ from the memory as it was`);
const stalls = written.stalls.sort();
const mean = stalls.length ? stalls.reduce((a, b) => a + b, 0) / stalls.length : 0;
const snapshotNs = result.elapsedMs * 1e6;
// The snapshot's own clock: a stopwatch holding its elapsed time (no CPU time of this thread).
const stopwatch = new Stopwatch();
stopwatch.wall = snapshotNs;
const round = (x: number) => Math.round(x * 10) / 10;
emit({
  bench: "live_snapshot",
  impl: "ours:default",
  case: withWriter ? "writer" : "idle",
  bytes: size,
  ops: pages,
  extra: {
    memcpy_ns_per_page: round(memcpyNs / pages),
    of_memcpy: Number((memcpyNs / snapshotNs).toFixed(3)),
    take_ns: Math.round(takeNs),
    faults: result.faults,
    by_fault: result.byFault,
    writes: written.writes,
    stalls: stalls.length,
    stall_p50_ns: round((stalls[stalls.length >> 1] ?? 0) * 1000),
    stall_mean_ns: round(mean * 1000),
    stall_p99_ns: round((stalls[Math.floor(stalls.length * 0.99)] ?? 0) * 1000),
    handler_stall_histogram_us: result.stallMicros.join(","),
  },
}, stopwatch);
