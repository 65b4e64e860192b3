/// <reference lib="deno.worker" />
/**
 * A test Worker that, once told to go, keeps overwriting random pages of raw
 * memory with a new generation number (one 32-bit word per write, the
 * generation being the write's number + 1) from its own OS thread, logging every
 * write as `(word index, generation)`, until told to stop or its log is full.
 * Used to write during a live snapshot: every logged write happened after the
 * snapshot's moment. Answers `{ writes }`.
 *
 * Shared layout: `control` Int32Array `[go, stop]`; `log` Int32Array
 * `[count, word0, generation0, word1, …]`.
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
  const capacity = Math.floor((log.length - 1) / 2);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  self.postMessage({ ready: true });
  Atomics.wait(control, 0, 0);
  let state = seed >>> 0 || 1;
  let n = 0;
  while (Atomics.load(control, 1) === 0 && n < capacity) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const page = (state >>> 0) % pages;
    const word = page * (PAGE_SIZE / 4) + ((state >>> 7) & 1023);
    words[word] = n + 1;
    log[1 + 2 * n] = word;
    log[2 + 2 * n] = n + 1;
    n++;
    Atomics.store(log, 0, n);
    if ((n & 31) === 0) Atomics.wait(pause, 0, 0, 0.02); // leave the other core some air
  }
  self.postMessage({ writes: n });
};
