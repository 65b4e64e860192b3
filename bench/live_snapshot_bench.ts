/**
 * `deno task bench`: a live snapshot of 1 GiB of private anonymous memory (4 KiB
 * pages, every page holding data) into a `Uint8Array` sink of the same size, from
 * `LiveSnapshot.take()` to `done` — idle, and under a Worker that writes one word
 * into a random page in a loop (`lib/stall_writer.ts`, started before each
 * iteration, untimed). The baseline is one plain copy of the same bytes
 * (`TypedArray.set`, a `memcpy`): the goal is a snapshot under a writer at
 * no less than half its bandwidth. The C side (a handler thread and a copier) is in
 * `bench/compare.ts`, which also reports the writer's stalls.
 *
 * @module
 */

import { LiveSnapshot } from "../mod.ts";
import { mapWithoutThp } from "./lib/fixtures.ts";

const SIZE = 2 ** 30;
const PAGES = SIZE / 4096;
// Mapped and filled once, kept until the bench process exits (the benches run after this module has loaded).
const mem = mapWithoutThp(SIZE);
const sink = mapWithoutThp(SIZE);
{
  const words = new Uint32Array(mem.bytes.buffer);
  for (let p = 0; p < PAGES; p++) words.fill((0xa0000000 + p) >>> 0, p * 1024, (p + 1) * 1024);
  sink.bytes.fill(1);
}

/** Starts the writer Worker and resolves once it waits for the go signal; returns how to stop it. */
async function startWriter(control: Int32Array): Promise<() => Promise<void>> {
  const writer = new Worker(new URL("./lib/stall_writer.ts", import.meta.url), { type: "module" });
  const ready = Promise.withResolvers<void>();
  const end = Promise.withResolvers<void>();
  writer.onmessage = (e) => e.data.ready ? ready.resolve() : end.resolve();
  writer.postMessage({ address: mem.address, pages: PAGES, control: control.buffer });
  await ready.promise;
  return async () => {
    Atomics.store(control, 1, 1);
    await end.promise;
    writer.terminate();
  };
}

const group = "snapshot 1 GiB";
const runs = { n: 5, warmup: 1 };
Deno.bench("TypedArray.set (memcpy)", { group, baseline: true, ...runs }, () => {
  sink.bytes.set(mem.bytes);
});
Deno.bench("LiveSnapshot, idle", { group, ...runs }, async (b) => {
  b.start();
  const snap = await LiveSnapshot.take(mem, { sink: sink.bytes });
  await snap.done;
  b.end();
});
Deno.bench("LiveSnapshot, under a writer", { group, ...runs }, async (b) => {
  const control = new Int32Array(new SharedArrayBuffer(8));
  const stop = await startWriter(control);
  try {
    b.start();
    const snap = await LiveSnapshot.take(mem, { sink: sink.bytes });
    Atomics.store(control, 0, 1);
    Atomics.notify(control, 0);
    const result = await snap.done;
    b.end();
    if (result.faults === 0) throw new Error("the writer caused no fault");
  } finally {
    await stop();
  }
});
