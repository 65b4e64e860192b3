/**
 * Several consumers of one memory: two `WriteWatch`es, or a `Checkpoint` beside a
 * watch, share one tracker (`watch/_tracker.ts`) — before, the second got `EBUSY`
 * from the kernel. Each must see every write exactly as a sole watch would, with its
 * own rhythm of `collect()`s, on every backend that runs here; the tracker is
 * released when the last one stops.
 */

import assert from "node:assert/strict";
import { Checkpoint, CheckpointReader, LiveSnapshot, readPagemap, Region, type WriteSet, WriteWatch } from "../mod.ts";
import type { WriteWatchOptions } from "../mod.ts";
import { Tracker } from "../watch/_tracker.ts";
import { assertUffdError, skipUnless, waitFor, within } from "./helpers.ts";

const PAGE = Region.pageSize;
const available = new Map(WriteWatch.backends().map((b) => [b.name, b]));

const VARIANTS: { label: string; options: WriteWatchOptions }[] = [
  { label: "async", options: { backend: "async" } },
  { label: "sync", options: { backend: "sync" } },
  { label: "sync, pre-populated", options: { backend: "sync", decline: ["WP_UNPOPULATED"] } },
];

function each(name: string, fn: (options: WriteWatchOptions) => void | Promise<void>): void {
  for (const v of VARIANTS) {
    const b = available.get(v.options.backend as "async" | "sync")!;
    Deno.test({
      name: `${v.label}: ${name}`,
      ignore: skipUnless(b.available, `${v.label} backend: ${b.reason}`),
      fn: () => fn(v.options),
    });
  }
}

const pages = (set: WriteSet) => [...set];

each(
  "two watches of one memory: each collects on its own, a page collected by one is still pending for the other",
  (o) => {
    using mem = Region.map(16 * PAGE);
    using a = WriteWatch.start(mem, o);
    using b = WriteWatch.start(mem, o); // before: EBUSY (another userfaultfd registered the range)
    assert.equal(Tracker.at(mem.address)!.consumers, 2, "one tracker, two consumers");
    mem.bytes[1 * PAGE] = 1;
    assert.deepEqual(pages(a.collect()), [1]);
    mem.bytes[2 * PAGE] = 1;
    assert.deepEqual(pages(b.written()), [1, 2], "b: everything since its start, written() does not reset");
    assert.deepEqual(pages(a.collect()), [2]);
    assert.deepEqual(pages(b.collect()), [1, 2]);
    assert.deepEqual(pages(b.collect()), []);
    mem.bytes[3 * PAGE] = 1;
    a.reset();
    assert.deepEqual(pages(a.collect()), [], "a's reset is a's alone");
    assert.deepEqual(pages(b.collect()), [3]);
    // One stops: the other goes on, alone again, and misses nothing.
    a.stop();
    mem.bytes[4 * PAGE] = 1;
    assert.deepEqual(pages(b.collect()), [4]);
    b.stop();
    assert.equal(Tracker.at(mem.address), undefined, "the last one released the tracker");
    assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), Array(16).fill(false), "nothing left protected");
    using again = WriteWatch.start(mem, o);
    mem.bytes[0] = 1;
    assert.deepEqual(pages(again.collect()), [0]);
  },
);

each("two watches with different collect() rhythms under a concurrent writer: each sees every write", async (o) => {
  const PAGES = 2048;
  using mem = Region.map(PAGES * PAGE);
  using fast = WriteWatch.start(mem, o);
  using slow = WriteWatch.start(mem, o);
  const control = new SharedArrayBuffer(8);
  const ctl = new Int32Array(control);
  const log = new Int32Array(new SharedArrayBuffer(4 * (1 + 3 * 1_000_000)));
  Atomics.store(ctl, 0, 1);
  const worker = new Worker(new URL("./workers/random_writer.ts", import.meta.url), { type: "module" });
  const done = new Promise<{ writes: number }>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => reject(e);
  });
  // fast collects every round, slow every third: slow's answer N covers fast's rounds 3N-2 … 3N.
  const fastRounds: WriteSet[] = [];
  const slowRounds: WriteSet[] = [];
  try {
    worker.postMessage({ address: mem.address, pages: PAGES, control, log: log.buffer, seed: 7 });
    await waitFor(() => Atomics.load(log, 0) > 0, 30_000, "the writer's first write");
    let round = 1;
    for (; round <= 30 || Atomics.load(log, 0) < 2000; round++) {
      Atomics.store(ctl, 0, round);
      fastRounds[round] = fast.collect();
      if (round % 3 === 0) slowRounds[round / 3] = slow.collect();
      await new Promise((r) => setTimeout(r, 2));
      if (round > 3000) break;
    }
    while (round % 3 !== 1) {
      Atomics.store(ctl, 0, round);
      fastRounds[round] = fast.collect();
      if (round % 3 === 0) slowRounds[round / 3] = slow.collect();
      round++;
    }
    Atomics.store(ctl, 1, 1);
    const { writes } = await within(done, 30_000, "the writer");
    Atomics.store(ctl, 0, round);
    fastRounds[round] = fast.collect();
    slowRounds[Math.ceil(round / 3)] = slow.collect();
    const ever = new Set<number>();
    let missedFast = 0;
    let missedSlow = 0;
    for (let i = 0; i < writes; i++) {
      const page = log[1 + 3 * i]!;
      const before = log[2 + 3 * i]!;
      const after = log[3 + 3 * i]!;
      ever.add(page);
      let seen = false;
      for (let r = before; r <= Math.min(after + 1, round) && !seen; r++) seen = fastRounds[r]?.has(page) === true;
      if (!seen) missedFast++;
      seen = false;
      for (let r = Math.ceil(before / 3); r <= Math.ceil((after + 1) / 3) && !seen; r++) {
        seen = slowRounds[r]?.has(page) === true;
      }
      if (!seen) missedSlow++;
    }
    assert.equal(missedFast, 0, `the fast watch missed ${missedFast} of ${writes} writes`);
    assert.equal(missedSlow, 0, `the slow watch missed ${missedSlow} of ${writes} writes`);
    for (const set of [...fastRounds, ...slowRounds]) {
      for (const p of set ?? []) assert.ok(ever.has(p), `page ${p} reported, never written`);
    }
  } finally {
    Atomics.store(ctl, 1, 1);
    await done.catch(() => {});
    worker.terminate();
  }
});

each("a checkpoint chain and a watch of the same memory: deltas exact, the watch's answers its own", (o) => {
  const dir = Deno.makeTempDirSync({ prefix: "uffd-shared-" });
  try {
    using mem = Region.map(64 * PAGE);
    using ckpt = Checkpoint.start(mem, o);
    using watch = WriteWatch.start(mem, o);
    mem.bytes.fill(1, 0, 8 * PAGE);
    ckpt.write(`${dir}/base`);
    assert.deepEqual(pages(watch.collect()), [0, 1, 2, 3, 4, 5, 6, 7], "the base's collect leaves the watch's set");
    mem.bytes[10 * PAGE] = 2;
    mem.bytes[20 * PAGE] = 2;
    assert.deepEqual(pages(watch.collect()), [10, 20]);
    mem.bytes[30 * PAGE] = 3;
    const delta = ckpt.write(`${dir}/delta-1`);
    assert.equal(delta.entries, 3, "the delta holds every page written since the base, and only those");
    assert.deepEqual(pages(watch.collect()), [30]);
    using reader = CheckpointReader.open(ckpt.files);
    const inDelta = [...Array(64).keys()].filter((p) => reader.source(p)?.file === 1);
    assert.deepEqual(inDelta, [10, 20, 30]);
    const copy = new Uint8Array(mem.length);
    reader.restore(copy);
    assert.deepEqual(copy, mem.bytes);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test({
  name: "two watches of a WebAssembly.Memory that grows: both follow the growth and report the grown pages written",
  ignore: skipUnless(available.get("async")!.available || available.get("sync")!.available, "no uffd backend"),
  fn: () => {
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 4 });
    using a = WriteWatch.start(memory);
    using b = WriteWatch.start(memory);
    memory.grow(1);
    new Uint8Array(memory.buffer)[65536 + 5 * PAGE] = 1;
    const sa = a.collect();
    assert.equal(sa.grewFrom, 16);
    assert.deepEqual(pages(sa), [16 + 5]);
    const sb = b.collect();
    assert.equal(sb.grewFrom, 16);
    assert.deepEqual(pages(sb), [16 + 5]);
    new Uint8Array(memory.buffer)[65536 + 6 * PAGE] = 1;
    assert.deepEqual(pages(b.collect()), [16 + 6]);
    assert.deepEqual(pages(a.collect()), [16 + 6]);
  },
});

Deno.test("a watch of part of a watched memory, or one asking for another backend, is refused with EBUSY", () => {
  using mem = Region.map(8 * PAGE);
  using whole = WriteWatch.start(mem);
  const part = new Uint8Array(mem.bytes.buffer, 2 * PAGE, 2 * PAGE);
  assertUffdError(() => WriteWatch.start(part), "EBUSY", /another watch covers .* which overlaps/);
  const other = whole.backend === "async" ? "sync" : "async";
  if (available.get(other)!.available) {
    assertUffdError(
      () => WriteWatch.start(mem, { backend: other }),
      "EBUSY",
      new RegExp(`watched with the ${whole.backend} backend already`),
    );
  }
});

const syncAvailable = available.get("sync")!;

Deno.test({
  name:
    "a live snapshot in the middle of a checkpoint chain: an exact image, and the next delta holds every page since",
  ignore: skipUnless(syncAvailable.available, `sync backend: ${syncAvailable.reason}`),
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "uffd-shared-" });
    try {
      const PAGES = 1024;
      using mem = Region.map(PAGES * PAGE);
      using ckpt = Checkpoint.start(mem, { backend: "sync" });
      for (let p = 0; p < PAGES; p += 2) mem.bytes[p * PAGE] = 1;
      ckpt.write(`${dir}/base`);
      for (const p of [3, 5, 7]) mem.bytes[p * PAGE + 1] = 2;
      ckpt.write(`${dir}/delta-1`);
      for (const p of [100, 101]) mem.bytes[p * PAGE + 2] = 3; // before the snapshot
      const expected = mem.bytes.slice(); // the snapshot's moment: nobody else writes
      const image = new Uint8Array(mem.length);
      const snap = await LiveSnapshot.take(mem, { sink: image }); // borrows the checkpoint's userfaultfd
      // The main isolate writes on: each first write faults and is served by the snapshot (old page saved).
      const during = [0, 200, 201, 500, 1023];
      for (const p of during) mem.bytes[p * PAGE + 3] = 4;
      assertUffdError(() => ckpt.watch.written(), "EBUSY", /a live snapshot of this memory is running/);
      const result = await within(snap.done, 60_000, "the snapshot");
      assert.deepEqual(image, expected, "the image is the memory at take()");
      assert.equal(result.savedPages, PAGES);
      for (const p of [300, 0]) mem.bytes[p * PAGE + 4] = 5; // after: the watch has its userfaultfd back
      ckpt.write(`${dir}/delta-2`);
      using reader = CheckpointReader.open(ckpt.files);
      const inDelta = [...Array(PAGES).keys()].filter((p) => reader.source(p)?.file === 2);
      assert.deepEqual(inDelta, [0, 100, 101, 200, 201, 300, 500, 1023], "before, during and after the snapshot");
      const copy = new Uint8Array(mem.length);
      reader.restore(copy);
      assert.deepEqual(copy, mem.bytes, "the chain restores the memory as it is");
      mem.bytes[600 * PAGE] = 6;
      assert.deepEqual([...ckpt.watch.collect()], [600], "and the watch goes on exactly");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a snapshot of watched memory that is aborted: the watch counts every page written, then goes on exactly",
  ignore: skipUnless(syncAvailable.available, `sync backend: ${syncAvailable.reason}`),
  async fn() {
    using mem = Region.map(256 * PAGE, { populate: true });
    using watch = WriteWatch.start(mem, { backend: "sync" });
    const snap = await LiveSnapshot.take(mem, { sink: () => new Promise((r) => setTimeout(r, 5)) });
    snap.abort();
    await within(snap.done.then(() => undefined, () => undefined), 30_000, "done after abort()");
    const set = watch.collect();
    assert.ok(set.count === 256 || set.count === 0, `all pages or none counted written (${set.count})`);
    mem.bytes[7 * PAGE] = 1;
    assert.deepEqual([...watch.collect()], [7]);
  },
});

Deno.test({
  name: "a snapshot of memory watched by the async backend is refused: its writes never fault to user space",
  ignore: skipUnless(available.get("async")!.available, `async backend: ${available.get("async")!.reason}`),
  async fn() {
    using mem = Region.map(16 * PAGE);
    using watch = WriteWatch.start(mem, { backend: "async" });
    await assert.rejects(
      LiveSnapshot.take(mem, { sink: new Uint8Array(mem.length) }),
      (e) => e instanceof Error && /watched with the async backend.*a snapshot needs the write faults/.test(e.message),
    );
    mem.bytes[3 * PAGE] = 1;
    assert.deepEqual([...watch.collect()], [3], "the watch was not disturbed");
  },
});
