/// <reference lib="deno.worker" />
/**
 * A writer for pagemap_ioctl.c's transact test: waits for each round on a shared
 * counter, adds 1 to the first word of each of its `access` pages, reports the
 * round done. `{ address, access, sync }` in; `sync[0]` is the round (negative:
 * stop), `sync[1]` counts writers done with the round.
 */

import { bufferAt, PAGE_SIZE } from "../../../ffi/_libc.ts";

self.onmessage = (e: MessageEvent<{ address: bigint; access: number; sync: SharedArrayBuffer }>) => {
  const { address, access, sync } = e.data;
  const s = new Int32Array(sync);
  const words = new Int32Array(bufferAt(address, access * PAGE_SIZE));
  let round = 0;
  self.postMessage("ready");
  for (;;) {
    Atomics.wait(s, 0, round, 10_000);
    const next = Atomics.load(s, 0);
    if (next < 0) return;
    if (next === round) continue;
    round = next;
    for (let i = 0; i < access; i++) Atomics.add(words, i * (PAGE_SIZE / 4), 1);
    Atomics.add(s, 1, 1);
  }
};
