/**
 * Sync write-watch scenarios in which the main isolate could be left blocked for
 * good if the backend got an order wrong: it `madvise`s, `munmap`s and `mremap`s
 * memory registered for those events (each call waits until the handler has read
 * its event), unmaps the memory while the watch runs, stops the watch while
 * another thread writes, or ends without stopping it. Run one per process by
 * `tests/write_watch_sync_test.ts`, which kills the process at its deadline.
 * `deno run --allow-all tests/scenarios/write_watch_sync.ts <name>` prints one JSON
 * line of observations and ends by itself (never `Deno.exit`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { MADV_DONTNEED, Region, WriteWatch } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";

const PAGE = Region.pageSize;
const SYNC = { backend: "sync" } as const;
type Observations = Record<string, unknown>;

/** Milliseconds `fn` took. */
function timed(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return Math.round(performance.now() - t0);
}

const scenarios: Record<string, () => Promise<Observations>> = {
  /** The main isolate zaps, unmaps and moves watched memory: every call returns, and the answer says what happened. */
  "events-from-main": () => {
    using mem = Region.map(32 * PAGE);
    using elsewhere = Region.map(2 * PAGE);
    using watch = WriteWatch.start(mem, SYNC);
    mem.bytes[0] = 1;
    const ms: number[] = [];
    ms.push(timed(() => mem.zap(mem.pages(4, 2))));
    ms.push(timed(() => mem.advise(MADV_DONTNEED, mem.pages(10, 1))));
    ms.push(timed(() => assert.equal(libc.munmap(mem.address + BigInt(28 * PAGE), BigInt(4 * PAGE)), 0)));
    ms.push(timed(() => mem.movePages(mem.pages(20, 2), elsewhere.address)));
    mem.bytes[12 * PAGE] = 1;
    const set = watch.collect();
    const later = watch.collect();
    return Promise.resolve({
      written: [...set],
      lost: set.lost,
      lostAgain: later.lost,
      slowestMs: Math.max(...ms),
      stopMs: timed(() => watch.stop()),
    });
  },
  /** The watched memory is unmapped while the watch runs (the wrong disposal order), then the watch stops. */
  "unmap-while-watched": () => {
    const mem = Region.map(16 * PAGE);
    const watch = WriteWatch.start(mem, SYNC);
    mem.bytes[3 * PAGE] = 1;
    const unmapMs = timed(() => mem.unmap());
    const set = watch.collect();
    const stopMs = timed(() => watch.stop());
    return Promise.resolve({ written: [...set], lost: set.lost, unmapMs, stopMs });
  },
  /** After stop(), the memory is plain memory again: zapping, moving and unmapping it never wait. */
  "after-stop": () => {
    using mem = Region.map(16 * PAGE);
    using elsewhere = Region.map(PAGE);
    const watch = WriteWatch.start(mem, SYNC);
    mem.bytes[0] = 1;
    watch.stop();
    const ms = [
      timed(() => mem.zap()),
      timed(() => mem.movePages(mem.pages(2, 1), elsewhere.address)),
      timed(() => (mem.bytes[5 * PAGE] = 7)),
    ];
    return Promise.resolve({ slowestMs: Math.max(...ms), landed: mem.bytes[5 * PAGE] });
  },
  /** stop() while a blocking-pool thread writes page after page: the writer completes, nothing is left blocked. */
  "stop-while-writing": async () => {
    using mem = Region.map(4096 * PAGE);
    const watch = WriteWatch.start(mem, SYNC);
    const writer = libc.memsetOffThread(mem.address, 0x5a, BigInt(mem.length));
    while (watch.written().count < 64) await new Promise((r) => setTimeout(r, 1));
    const stopMs = timed(() => watch.stop());
    await writer; // never unmap memory another thread may still be writing
    return { stopMs, landed: mem.bytes[mem.length - 1] === 0x5a && mem.bytes[0] === 0x5a };
  },
  /** Never stopped: `using` unmaps the memory at the end while the handler still runs; the process must exit. */
  "never-stopped": () => {
    using mem = Region.map(8 * PAGE);
    const watch = WriteWatch.start(mem, SYNC);
    mem.bytes[PAGE] = 1;
    return Promise.resolve({ written: [...watch.written()] });
  },
};

const name = Deno.args[0] ?? "";
const scenario = scenarios[name];
if (!scenario) throw new Error(`unknown scenario ${JSON.stringify(name)}: ${Object.keys(scenarios).join(", ")}`);
const observations = await scenario();
console.log(JSON.stringify(observations));
