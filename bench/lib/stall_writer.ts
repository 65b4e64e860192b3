/// <reference lib="deno.worker" />
/**
 * The writer of the live-snapshot benchmark (`bench/ours/live_snapshot.ts`), the
 * same loop as the C reference's writer thread: once told to go, write one word
 * into a random page, timing every write with `CLOCK_MONOTONIC`; a write that
 * takes more than 2 µs counts as a stall (it waited in a write-protect fault).
 * Answers `{ writes, stalls: Float64Array of stall durations in µs }` once
 * stopped.
 *
 * Shared control: Int32Array `[go, stop]`.
 *
 * @module
 */

import { bufferAt, PAGE_SIZE } from "../../ffi/_libc.ts";
import { monotonicNs } from "./raw_libc.ts";

const STALL_NS = 2000;

self.onmessage = (e: MessageEvent<{ address: bigint; pages: number; control: SharedArrayBuffer }>) => {
  const { address, pages } = e.data;
  const words = new Uint32Array(bufferAt(address, pages * PAGE_SIZE));
  const control = new Int32Array(e.data.control);
  const stalls: number[] = [];
  self.postMessage({ ready: true });
  Atomics.wait(control, 0, 0);
  let s = 7;
  let writes = 0;
  while (Atomics.load(control, 1) === 0) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const page = (s >>> 0) % pages;
    const t0 = monotonicNs();
    words[page * (PAGE_SIZE / 4) + ((s >>> 7) & 1023)] = writes + 1;
    const d = monotonicNs() - t0;
    writes++;
    if (d > STALL_NS) stalls.push(d / 1000);
  }
  self.postMessage({ writes, stalls: new Float64Array(stalls) });
};
