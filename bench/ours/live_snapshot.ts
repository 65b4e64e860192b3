/**
 * Our side of the live-snapshot comparison (`bench/live_snapshot_compare.ts`;
 * the C side is `bench/reference/live_snapshot.c`): a `LiveSnapshot` of `--mib`
 * MiB of private anonymous memory (4 KiB pages, `MADV_NOHUGEPAGE`) into a
 * populated `Region` of the same size, optionally under a Worker that writes one
 * word into a random page in a loop and times every write (`--writer=1`; a write
 * slower than 2 µs counts as a stall). The same run times one plain copy of the
 * whole buffer first (`TypedArray.set`, which is `memmove`). Prints one JSON line.
 *
 * ```sh
 * deno run -A bench/ours/live_snapshot.ts --mib=1024 --writer=1
 * ```
 *
 * @module
 */

import { LiveSnapshot } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args } from "../lib/measure.ts";
import { monotonicNs } from "../lib/raw_libc.ts";

const args = new Args();
const size = args.number("mib", 1024) * 2 ** 20;
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
const doneNs = monotonicNs() - t0;
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
const stalls = written.stalls.sort();
const mean = stalls.length ? stalls.reduce((a, b) => a + b, 0) / stalls.length : 0;
const snapshotMs = result.elapsedMs;
console.log(JSON.stringify({
  side: "ours",
  mib: size / 2 ** 20,
  writer: withWriter ? 1 : 0,
  memcpy_ms: +(memcpyNs / 1e6).toFixed(2),
  snapshot_ms: +snapshotMs.toFixed(2),
  snapshot_gbps: +(size / snapshotMs / 1e6).toFixed(3),
  memcpy_gbps: +(size / memcpyNs).toFixed(3),
  take_ms: +(takeNs / 1e6).toFixed(2),
  done_ms: +(doneNs / 1e6).toFixed(2),
  faults: result.faults,
  by_fault: result.byFault,
  writes: written.writes,
  stalls: stalls.length,
  stall_mean_us: +mean.toFixed(2),
  stall_p50_us: +(stalls[stalls.length >> 1] ?? 0).toFixed(1),
  stall_p99_us: +(stalls[Math.floor(stalls.length * 0.99)] ?? 0).toFixed(1),
  handler_stall_histogram_us: result.stallMicros.join(","),
  wrong_pages: wrong,
}));
