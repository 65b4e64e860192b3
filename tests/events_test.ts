/**
 * `Userfaultfd.events()` on the real kernel: faults raised by other threads
 * (blocking-pool `memset`s, a Worker) served from the main isolate's event loop;
 * THREAD_ID and EXACT_ADDRESS as negotiated; the stream ends on abort and on
 * close. Every test closes its userfaultfd at the end (`using`), which releases
 * any writer a broken implementation would leave blocked.
 */

import assert from "node:assert/strict";
import { Feature, Region, UffdError, type UffdEvent, Userfaultfd } from "../mod.ts";
import { memsetOffThread } from "../ffi/_libc.ts";
import { needs, scenarioResult, within } from "./helpers.ts";

const PAGE = Region.pageSize;

Deno.test("events() serves 8 concurrent nonblocking memsets over distinct pages; every fault once", async () => {
  const WRITERS = 8;
  const PAGES_EACH = 4;
  using mem = Region.map(WRITERS * PAGES_EACH * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const writes = Array.from(
    { length: WRITERS },
    (_, w) => memsetOffThread(mem.address + BigInt(w * PAGES_EACH * PAGE), 0x10 + w, BigInt(PAGES_EACH * PAGE)),
  );
  const stop = new AbortController();
  const seen: bigint[] = [];
  let batches = 0;
  const serving = (async () => {
    for await (const batch of uffd.events({ signal: stop.signal })) {
      batches++;
      for (const event of batch) {
        assert.equal(event.type, "pagefault");
        if (event.type !== "pagefault") continue;
        assert.equal(event.write, true);
        assert.equal(event.wp, false);
        seen.push(event.address);
        uffd.zeropage({ address: event.address, length: PAGE });
      }
      if (seen.length >= WRITERS * PAGES_EACH) stop.abort();
    }
  })();
  try {
    await within(Promise.all(writes), 10_000, "the 8 memsets");
    await within(serving, 30_000, "the events() loop after abort");
  } finally {
    stop.abort();
  }
  const expected = Array.from({ length: WRITERS * PAGES_EACH }, (_, i) => mem.address + BigInt(i * PAGE));
  assert.deepEqual([...seen].sort((a, b) => a < b ? -1 : a > b ? 1 : 0), expected, "each page faulted exactly once");
  assert.ok(batches <= seen.length);
  for (let w = 0; w < WRITERS; w++) {
    const bytes = mem.bytes.subarray(w * PAGES_EACH * PAGE, (w + 1) * PAGES_EACH * PAGE);
    assert.ok(bytes.every((b) => b === 0x10 + w), `writer ${w}'s bytes landed`);
  }
});

/** A Worker writing `offsets` of `mem`; resolves with its thread id once it has started (before writing). */
async function writerWorker(): Promise<{ worker: Worker; tid: number }> {
  const worker = new Worker(new URL("./workers/tid_writer.ts", import.meta.url), { type: "module" });
  const tid = await within(
    new Promise<number>((resolve) => {
      worker.onmessage = (e) => resolve(e.data.tid);
      worker.postMessage({ type: "tid" });
    }),
    10_000,
    "the writer Worker's thread id",
  );
  return { worker, tid };
}

async function firstFault(uffd: Userfaultfd): Promise<UffdEvent & { type: "pagefault" }> {
  const stop = new AbortController();
  try {
    for await (const batch of uffd.events({ signal: stop.signal })) {
      const fault = batch.find((e) => e.type === "pagefault");
      if (fault) return fault as UffdEvent & { type: "pagefault" };
    }
  } finally {
    stop.abort();
  }
  throw new Error("the stream ended without a fault");
}

Deno.test({
  name: "THREAD_ID and EXACT_ADDRESS: the writer's thread id and the unaligned address, only when negotiated",
  ignore: needs(Feature.THREAD_ID, Feature.EXACT_ADDRESS),
  async fn(t) {
    for (const negotiated of [true, false]) {
      await t.step(negotiated ? "negotiated" : "not negotiated", async () => {
        using mem = Region.map(4 * PAGE);
        using uffd = Userfaultfd.open({
          features: negotiated ? [Feature.THREAD_ID, Feature.EXACT_ADDRESS] : [],
        });
        assert.equal(uffd.features.has(Feature.THREAD_ID), negotiated);
        uffd.register(mem, { missing: true });
        const { worker, tid } = await writerWorker();
        try {
          const offset = 2 * PAGE + 123;
          const done = new Promise((resolve) => worker.onmessage = (e) => resolve(e.data));
          worker.postMessage({ type: "write", address: mem.address, length: mem.length, offsets: [offset], value: 5 });
          const fault = await within(firstFault(uffd), 10_000, "the Worker's fault");
          if (negotiated) {
            assert.equal(fault.threadId, tid, "the thread id is the writing Worker's");
            assert.equal(fault.address, mem.address + BigInt(offset), "the exact address");
          } else {
            assert.equal(fault.threadId, undefined);
            assert.equal(fault.address, mem.address + BigInt(2 * PAGE), "page-aligned");
          }
          uffd.zeropage({ address: mem.address + BigInt(2 * PAGE), length: PAGE });
          await within(done, 30_000, "the Worker's write");
          assert.equal(mem.bytes[offset], 5);
        } finally {
          worker.terminate();
        }
      });
    }
  },
});

Deno.test("events() ends promptly when its signal aborts while it waits, and when the userfaultfd is closed", async (t) => {
  await t.step("abort", async () => {
    using uffd = Userfaultfd.open();
    const stop = new AbortController();
    let batches = 0;
    const loop = (async () => {
      for await (const _ of uffd.events({ signal: stop.signal })) batches++;
    })();
    await new Promise((r) => setTimeout(r, 50));
    stop.abort();
    await within(loop, 2_000, "events() after abort");
    assert.equal(batches, 0);
    assert.equal(uffd.closed, false);
  });
  await t.step("close", async () => {
    const uffd = Userfaultfd.open();
    const loop = (async () => {
      for await (const _ of uffd.events()) { /* nothing arrives */ }
    })();
    await new Promise((r) => setTimeout(r, 50));
    uffd.close();
    await within(loop, 2_000, "events() after close");
  });
  await t.step("already aborted: no wait at all", async () => {
    using uffd = Userfaultfd.open();
    const iterator = uffd.events({ signal: AbortSignal.abort() });
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });
  });
});

Deno.test("events() refuses a blocking or closed userfaultfd and a signal that is not an AbortSignal", () => {
  using blocking = Userfaultfd.open({ nonblocking: false });
  assert.throws(
    () => blocking.events(),
    (e) => e instanceof UffdError && e.code === "EINVAL" && /POLLERR/.test(e.message),
  );
  const closed = Userfaultfd.open();
  closed.close();
  assert.throws(() => closed.events(), (e) => e instanceof UffdError && e.code === "EBADF");
  using uffd = Userfaultfd.open();
  assert.throws(() => uffd.events({ signal: {} as AbortSignal }), TypeError);
});

Deno.test({
  name: "zap, move and unmap of registered memory whose events this thread reads are refused (EDEADLK), never hang",
  ignore: needs(Feature.EVENT_REMOVE, Feature.EVENT_REMAP, Feature.EVENT_UNMAP),
  async fn() {
    // Before the refusal, the first call blocked the process for good: only a kill ended it.
    const r = await scenarioResult(new URL("./scenarios/event_deadlock.ts", import.meta.url), "main-reads-events", {
      deadlineMs: 30_000,
    });
    assert.match(r.zap, /^EDEADLK: madvise .*EVENT_REMOVE.*read on this thread/);
    assert.match(r.move, /^EDEADLK: mremap .*EVENT_REMAP/);
    assert.match(r.unmap, /^EDEADLK: munmap .*EVENT_UNMAP/);
    assert.equal(r.outside, "returned", "memory not registered is not held back");
    assert.equal(r.afterShare, "returned", "with a handler's Worker reading the events, the zap returns");
    assert.equal(r.afterClose, "returned", "closed: nothing waits");
  },
});
