/// <reference lib="deno.worker" />
/**
 * A test Worker that keeps writing a counter into random pages of raw memory from
 * its own OS thread, logging every write as `(page, round before, round after)`
 * where the rounds are read from a shared control word just before and just after
 * the write. It stops when the control's stop word is set or the log is full, and
 * answers `{ done: true, writes }`.
 *
 * Shared layout: `control` Int32Array `[round, stop]`; `log` Int32Array
 * `[count, page0, before0, after0, page1, …]`.
 */

import { bufferAt, PAGE_SIZE } from "../../ffi/_libc.ts";

interface Start {
  address: bigint;
  pages: number;
  control: SharedArrayBuffer;
  log: SharedArrayBuffer;
  seed: number;
}

self.onmessage = (e: MessageEvent<Start>) => {
  const { address, pages, seed } = e.data;
  const words = new Uint32Array(bufferAt(address, pages * PAGE_SIZE));
  const control = new Int32Array(e.data.control);
  const log = new Int32Array(e.data.log);
  const capacity = Math.floor((log.length - 1) / 3);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  let state = seed >>> 0 || 1;
  let n = 0;
  while (Atomics.load(control, 1) === 0 && n < capacity) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const page = (state >>> 0) % pages;
    const before = Atomics.load(control, 0);
    words[page * (PAGE_SIZE / 4) + (n & 1023)] = n + 1;
    const after = Atomics.load(control, 0);
    log[1 + 3 * n] = page;
    log[2 + 3 * n] = before;
    log[3 + 3 * n] = after;
    n++;
    Atomics.store(log, 0, n);
    if ((n & 63) === 0) Atomics.wait(pause, 0, 0, 0.05); // leave the other core some air
  }
  self.postMessage({ done: true, writes: n });
};
