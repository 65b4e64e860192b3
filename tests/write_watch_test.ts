/**
 * WriteWatch on the real kernel: exact answers for random write sets on every
 * backend that can run here, no write lost under a concurrent writer, writes by
 * JS, WebAssembly and native code, WebAssembly.Memory growth, unaligned
 * ArrayBuffers, zapped and moved pages, backend selection and its errors.
 *
 * Most tests run once per backend variant: `async`, `sync`, and `sync` with
 * `WP_UNPOPULATED` declined (it pre-populates the memory instead). With `sync`, the
 * main isolate's own writes are served by the handler's Worker — that is the point
 * of that backend; scenarios that could leave the main isolate blocked for good run
 * in child processes (`tests/write_watch_sync_test.ts`).
 */

import assert from "node:assert/strict";
import {
  MADV_NOHUGEPAGE,
  type MemoryTarget,
  readPagemap,
  Region,
  WriteSet,
  WriteWatch,
  type WriteWatchBackendName,
  type WriteWatchOptions,
} from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { asyncBackend } from "../watch/_async.ts";
import type { BackendProvider } from "../watch/_backend.ts";
import { softDirtyBackend } from "../watch/_soft_dirty.ts";
import { syncBackend } from "../watch/_sync.ts";
import { assertUffdError, fdCount, skipUnless, threadCount, waitFor, within } from "./helpers.ts";
import { wasmWriter } from "./fixtures/wasm_writer.ts";

const PAGE = Region.pageSize;
const available = new Map(WriteWatch.backends().map((b) => [b.name, b]));

/** One way to run a test: a backend, forced, with the features it must do without. */
interface Variant {
  readonly label: string;
  readonly backend: WriteWatchBackendName;
  readonly options: WriteWatchOptions;
}

const PROVIDERS: Record<WriteWatchBackendName, BackendProvider> = {
  "async": asyncBackend,
  "sync": syncBackend,
  "soft-dirty": softDirtyBackend,
};

/** Every backend that tracks exactly, and the sync backend's fallback for kernels without WP_UNPOPULATED. */
const VARIANTS: readonly Variant[] = [
  { label: "async", backend: "async", options: { backend: "async" } },
  { label: "sync", backend: "sync", options: { backend: "sync" } },
  { label: "sync, pre-populated", backend: "sync", options: { backend: "sync", decline: ["WP_UNPOPULATED"] } },
];

/** `ignore:` value for a test of one variant, printing why it is skipped. */
function needsVariant(v: Variant): boolean {
  const decline = [...(v.options.decline ?? [])].filter((f) => !available.has(f as WriteWatchBackendName));
  const why = PROVIDERS[v.backend].unavailable({ address: 0n, pages: 1, shared: false, decline } as never);
  return skipUnless(why === undefined, `${v.label} backend: ${why}`);
}

/** Defines the test once per variant. */
function eachVariant(
  name: string,
  fn: (v: Variant, t: Deno.TestContext) => void | Promise<void>,
  variants: readonly Variant[] = VARIANTS,
): void {
  for (const v of variants) Deno.test({ name: `${v.label}: ${name}`, ignore: needsVariant(v), fn: (t) => fn(v, t) });
}

/** A small deterministic PRNG (xorshift32), so a failure can be replayed. */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

function sorted(pages: Iterable<number>): number[] {
  return [...new Set(pages)].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------
// Exact answers

eachVariant(
  "random write sets over 1, 64, 4096 and 65,536 pages, three rounds each, are exact",
  async (v, t) => {
    {
      const backend = v.backend;
      for (const pages of [1, 64, 4096, 65536]) {
        await t.step(`${pages} pages`, () => {
          using mem = Region.map(pages * PAGE);
          const next = random(pages);
          // Some pages hold data before the watch starts: they are not written until written again.
          for (let i = 0; i < Math.ceil(pages / 8); i++) mem.bytes[Math.floor(next() * pages) * PAGE] = 0xee;
          using watch = WriteWatch.start(mem, v.options);
          assert.equal(watch.backend, backend);
          assert.equal(watch.collect().count, 0, "nothing written yet");
          const u32 = new Uint32Array(mem.bytes.buffer, mem.bytes.byteOffset, mem.length / 4);
          for (let round = 1; round <= 3; round++) {
            // Densities from one page to about half of them; reads must never count.
            const count = round === 1 ? 1 : round === 2 ? Math.ceil(pages / 50) : Math.ceil(pages / 2);
            const wrote: number[] = [];
            for (let i = 0; i < count; i++) {
              const page = Math.floor(next() * pages);
              u32[(page * PAGE + Math.floor(next() * PAGE)) >> 2] = round;
              wrote.push(page);
            }
            let reads = 0; // summed and used: an unused load may be optimised away
            for (let i = 0; i < 16; i++) reads += u32[(Math.floor(next() * pages) * PAGE) >> 2]!;
            assert.ok(reads >= 0);
            const expected = sorted(wrote);
            assert.deepEqual([...watch.written()], expected, `round ${round}: written()`);
            const set = watch.collect();
            assert.deepEqual([...set], expected, `round ${round}: collect()`);
            assert.equal(set.count, expected.length);
            assert.deepEqual(set.lost, []);
            assert.deepEqual([...watch.written()], [], `round ${round}: nothing after collect()`);
          }
        });
      }
    }
  },
  [...VARIANTS, { label: "soft-dirty", backend: "soft-dirty", options: { backend: "soft-dirty" } }],
);

eachVariant(
  "never-touched, read-only and zapped pages: only the zapped one counts (documented conservative case)",
  (v) => {
    using mem = Region.map(8 * PAGE);
    mem.bytes[2 * PAGE] = 1; // written before the watch
    mem.bytes[3 * PAGE] = 1;
    using watch = WriteWatch.start(mem, v.options);
    void mem.bytes[4 * PAGE]; // read after protection (maps the zero page)
    mem.zap(mem.pages(3, 1)); // MADV_DONTNEED after protection: reads back zeros
    assert.equal(mem.bytes[3 * PAGE], 0);
    const set = watch.collect();
    assert.deepEqual([...set], [3], "the zapped page counts as written; untouched, read and old pages do not");
    assert.deepEqual([...watch.collect()], [], "and it is clean again after collect()");
    mem.bytes[3 * PAGE] = 2;
    assert.deepEqual([...watch.collect()], [3], "a write to the zapped page after collect() is seen");
    mem.zap(mem.pages(3, 2)); // zapped again, without collect() in between, and a never-touched page with it
    mem.bytes[4 * PAGE] = 5;
    assert.deepEqual([...watch.written()], [3, 4]);
    watch.reset();
    void mem.bytes[3 * PAGE];
    assert.deepEqual([...watch.collect()], [], "reset() protects the zapped pages again");
    mem.bytes[3 * PAGE] = 1;
    mem.bytes[4 * PAGE] = 1;
    assert.deepEqual([...watch.collect()], [3, 4], "writes after reset() are seen");
  },
);

eachVariant("written() does not reset, reset() does, and collect() equals written() then reset()", (v) => {
  {
    using mem = Region.map(16 * PAGE);
    using watch = WriteWatch.start(mem, v.options);
    mem.bytes[PAGE] = 1;
    mem.bytes[9 * PAGE] = 1;
    assert.deepEqual([...watch.written()], [1, 9]);
    assert.deepEqual([...watch.written()], [1, 9]);
    watch.reset();
    assert.deepEqual([...watch.written()], []);
    mem.bytes[9 * PAGE] = 2;
    mem.bytes[10 * PAGE] = 2;
    const set = watch.collect();
    assert.deepEqual(set.ranges(), [{ firstPage: 9, pages: 2 }]);
    assert.equal(set.rangeCount, 1);
    assert.deepEqual([...set.pages], [9, 10]);
    assert.equal(set.has(10), true);
    assert.equal(set.has(11), false);
    assert.deepEqual(set.byteRanges(), [{ offset: 9 * PAGE, length: 2 * PAGE }]);
  }
});

// ---------------------------------------------------------------------------
// A concurrent writer

eachVariant(
  "collect() under a concurrent writer Worker never loses a write (reported in round N or N+1)",
  async (v) => {
    {
      const pages = 4096;
      using mem = Region.map(pages * PAGE);
      using watch = WriteWatch.start(mem, v.options);
      const control = new SharedArrayBuffer(8);
      const ctl = new Int32Array(control);
      const log = new SharedArrayBuffer(4 * (1 + 3 * 1_000_000));
      const entries = new Int32Array(log);
      Atomics.store(ctl, 0, 1); // round 1 starts now
      const worker = new Worker(new URL("./workers/random_writer.ts", import.meta.url), { type: "module" });
      const done = new Promise<{ writes: number }>((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(e);
      });
      try {
        worker.postMessage({ address: mem.address, pages, control, log, seed: 42 });
        const rounds: WriteSet[] = [
          new WriteSet({ runs: new Uint32Array(), pageCount: 0, pageSize: PAGE, head: 0, byteLength: 0 }),
        ];
        // At least 40 rounds and 2,000 writes, however slow the machine (a loaded 2-core box, TCG):
        // rounds go on until both hold, within a generous deadline.
        const MIN_ROUNDS = 40;
        const MIN_WRITES = 2000;
        const deadline = Date.now() + 60_000;
        await waitFor(() => Atomics.load(entries, 0) > 0, 30_000, "the writer's first write");
        let last = 0;
        for (let round = 1;; round++) {
          if (round > 1) Atomics.store(ctl, 0, round);
          rounds[round] = watch.collect(); // round N's collect
          last = round;
          if (round >= MIN_ROUNDS && (Atomics.load(entries, 0) >= MIN_WRITES || Date.now() > deadline)) break;
          await new Promise((r) => setTimeout(r, 2));
        }
        Atomics.store(ctl, 1, 1);
        const { writes } = await within(done, 30_000, "the writer");
        Atomics.store(ctl, 0, last + 1);
        rounds[last + 1] = watch.collect();
        assert.ok(writes >= MIN_WRITES, `the writer wrote only ${writes} times in ${last} rounds (60 s)`);
        const everWritten = new Set<number>();
        let missed = 0;
        let checked = 0;
        for (let i = 0; i < writes; i++) {
          const page = entries[1 + 3 * i]!;
          const before = entries[2 + 3 * i]!;
          const after = entries[3 + 3 * i]!;
          everWritten.add(page);
          // The write happened after collect(before - 1) returned and before collect(after + 1) began.
          let seen = false;
          for (let r = before; r <= Math.min(after + 1, last + 1) && !seen; r++) seen = rounds[r]!.has(page);
          if (!seen) missed++;
          if (before === after) checked++;
        }
        assert.equal(missed, 0, `${missed} of ${writes} writes were never reported`);
        assert.ok(checked > writes / 2, "most writes fell inside one round (the N or N+1 case)");
        for (let r = 1; r <= last + 1; r++) {
          for (const page of rounds[r]!) {
            assert.ok(everWritten.has(page), `round ${r} reports page ${page}, never written`);
          }
        }
      } finally {
        Atomics.store(ctl, 1, 1);
        await done.catch(() => {});
        worker.terminate();
      }
    }
  },
);

eachVariant("memory that is several kernel mappings: every collect() re-protects all of them", (v) => {
  // madvise of part of a range (or growth while registered) splits it; before Linux 6.4 the kernel
  // write-protects one mapping per call.
  using mem = Region.map(24 * PAGE);
  mem.advise(MADV_NOHUGEPAGE, mem.pages(8, 8));
  using watch = WriteWatch.start(mem, v.options);
  for (let round = 0; round < 3; round++) {
    for (const p of [3, 7, 8, 15, 16, 23]) mem.bytes[p * PAGE + round] = round + 1;
    assert.deepEqual([...watch.collect()], [3, 7, 8, 15, 16, 23], `round ${round}`);
  }
});

// ---------------------------------------------------------------------------
// WebAssembly, JS and native writers

eachVariant("WebAssembly.Memory written by a wasm module, grown mid-test, tracked across the growth", (v) => {
  {
    const WASM_PAGE = 65536;
    const perWasmPage = WASM_PAGE / PAGE;
    const memory = new WebAssembly.Memory({ initial: 2, maximum: 8 });
    const wasm = wasmWriter(memory);
    const before = libc.addressOf(memory.buffer);
    using watch = WriteWatch.start(memory, v.options);
    assert.equal(watch.head, 0, "wasm memory is page-aligned");
    assert.equal(watch.pageCount, 2 * perWasmPage);
    wasm.store(5 * PAGE + 8, 0x12345678);
    wasm.fill(20 * PAGE - 2, 0xab, 4); // straddles pages 19 and 20
    assert.deepEqual([...watch.collect()], [5, 19, 20]);

    // The program grows its memory and writes into the new part before the watch looks.
    assert.equal(wasm.grow(2), 2);
    assert.equal(libc.addressOf(memory.buffer), before, "V8 grew the memory in place");
    wasm.store(2 * WASM_PAGE + 3 * PAGE, 1); // new page 35
    wasm.store(7 * PAGE, 1); // old page 7
    const pending = watch.written();
    assert.equal(pending.grewFrom, 2 * perWasmPage);
    assert.equal(pending.pageCount, 4 * perWasmPage);
    assert.deepEqual([...pending], [7, 2 * perWasmPage + 3]);
    assert.deepEqual([...watch.written()], [7, 2 * perWasmPage + 3], "written() keeps reporting the new pages");
    const grown = watch.collect();
    assert.deepEqual([...grown], [7, 2 * perWasmPage + 3]);
    assert.equal(grown.grewFrom, 2 * perWasmPage);
    assert.equal(watch.pageCount, 4 * perWasmPage);

    // From now on the new pages are watched like the old ones.
    wasm.store(3 * WASM_PAGE + 5 * PAGE, 2);
    new Uint8Array(memory.buffer)[4 * WASM_PAGE - 1] = 3; // JS writes to the last byte
    const after = watch.collect();
    assert.deepEqual([...after], [3 * perWasmPage + 5, 4 * perWasmPage - 1]);
    assert.equal(after.grewFrom, undefined);
    assert.equal(after.relocated, false);
  }
});

eachVariant(
  "a 16 MiB ArrayBuffer (16 bytes into a page) tracked through JS writes; partial pages conservatively",
  (v) => {
    {
      const size = 16 << 20;
      const buffer = new ArrayBuffer(size);
      const bytes = new Uint8Array(buffer);
      using watch = WriteWatch.start(buffer, v.options);
      const head = Number(libc.addressOf(buffer) % BigInt(PAGE));
      assert.equal(watch.head, head);
      assert.equal(watch.byteLength, size);
      assert.equal(watch.pageCount, Math.ceil((head + size) / PAGE));
      const next = random(7);
      const offsets: number[] = [0, size - 1];
      for (let i = 0; i < 500; i++) offsets.push(Math.floor(next() * size));
      for (const o of offsets) bytes[o] = 1;
      const set = watch.collect();
      assert.deepEqual([...set], sorted(offsets.map((o) => Math.floor((o + head) / PAGE))));
      // Page i covers buffer bytes [i * PAGE - head, (i + 1) * PAGE - head), clipped to the buffer.
      assert.deepEqual(set.pageBytes(0), { offset: 0, length: PAGE - head });
      const last = watch.pageCount - 1;
      assert.deepEqual(set.pageBytes(last), { offset: last * PAGE - head, length: size - (last * PAGE - head) });
      for (const r of set.byteRanges()) {
        assert.ok(r.offset >= 0 && r.offset + r.length <= size, "byte ranges stay inside the buffer");
      }
      const covered = (o: number) => set.byteRanges().some((r) => r.offset <= o && o < r.offset + r.length);
      for (const o of offsets) assert.ok(covered(o), `byte ${o} is inside a reported range`);
    }
  },
);

eachVariant("a typed array view is watched over the pages it spans", (v) => {
  {
    using mem = Region.map(16 * PAGE);
    const view = new Uint8Array(mem.bytes.buffer, 3 * PAGE + 100, 4 * PAGE);
    using watch = WriteWatch.start(view, v.options);
    assert.equal(watch.head, 100);
    assert.equal(watch.pageCount, 5);
    view[0] = 1; // page 0 of the span (memory page 3)
    mem.bytes[PAGE] = 1; // outside the view's pages: not reported
    mem.bytes[7 * PAGE + 50] = 1; // memory page 7 = span page 4, shared with the view's last bytes
    assert.deepEqual([...watch.collect()], [0, 4]);
  }
});

eachVariant("writes by native code through FFI (memset on another thread) are tracked", async (v) => {
  {
    using mem = Region.map(64 * PAGE);
    using watch = WriteWatch.start(mem, v.options);
    await libc.memsetOffThread(mem.address + BigInt(10 * PAGE) + 7n, 0x5a, BigInt(3 * PAGE));
    assert.deepEqual([...watch.collect()], [10, 11, 12, 13]);
    await libc.memsetOffThread(mem.address + BigInt(63 * PAGE), 1, 1n);
    assert.deepEqual([...watch.collect()], [63]);
  }
});

eachVariant("a resizable ArrayBuffer: growth is followed, shrinking is re-watched and reported as relocated", (v) => {
  {
    const buffer = new ArrayBuffer(8 * PAGE, { maxByteLength: 64 * PAGE });
    const start = libc.addressOf(buffer);
    using watch = WriteWatch.start(buffer, v.options);
    const headPages = watch.head === 0 ? 0 : 1;
    buffer.resize(16 * PAGE);
    if (libc.addressOf(buffer) !== start) return; // V8 moved it: nothing to compare
    new Uint8Array(buffer)[12 * PAGE - watch.head] = 1;
    const grown = watch.collect();
    assert.equal(grown.grewFrom, 8 + headPages);
    assert.deepEqual([...grown], [12]);
    buffer.resize(4 * PAGE);
    const shrunk = watch.collect();
    assert.equal(shrunk.relocated, true);
    assert.equal(shrunk.count, watch.pageCount, "every page counts as written once");
    new Uint8Array(buffer)[PAGE] = 1;
    assert.deepEqual([...watch.collect()], [Math.floor((PAGE + watch.head) / PAGE)]);
  }
});

eachVariant(
  "shared memory: writes through the watched mapping are seen, writes through another mapping are not",
  (v) => {
    {
      using shm = Region.map(8 * PAGE, { memfd: true });
      using alias = shm.alias();
      using watch = WriteWatch.start(shm, v.options);
      shm.bytes[PAGE] = 1;
      assert.deepEqual([...watch.collect()], [1]);
      alias.bytes[3 * PAGE] = 1; // same memory, other mapping: the watched page table never sees it
      assert.equal(shm.bytes[3 * PAGE], 1);
      assert.deepEqual([...watch.collect()], [], "documented: only this mapping is watched");
      shm.zap(shm.pages(1, 1)); // shared memory keeps its contents
      assert.equal(shm.bytes[PAGE], 1);
      assert.deepEqual([...watch.collect()], []);
      shm.bytes[PAGE] = 2;
      shm.bytes[7 * PAGE] = 2; // never touched before
      assert.deepEqual([...watch.collect()], [1, 7], "the zapped page is still watched");
    }
  },
);

// ---------------------------------------------------------------------------
// Pages that cannot be watched any more

eachVariant(
  "a range moved away by mremap is reported lost, never silently; later writes reported written or lost",
  async (v, t) => {
    {
      // Without EVENT_REMAP the kernel drops the registration of the moved pages, and
      // (observed on 6.18, depending on the mapping's state) sometimes of the rest of
      // the mapping they came from: whatever it dropped must show up as lost.
      for (const writeFirst of [false, true]) {
        await t.step(writeFirst ? "after a write" : "untouched mapping", () => {
          using mem = Region.map(8 * PAGE);
          using watch = WriteWatch.start(mem, v.options);
          if (writeFirst) mem.bytes[0] = 1;
          assert.deepEqual(watch.collect().lost, []);
          using elsewhere = Region.map(2 * PAGE);
          mem.movePages(mem.pages(2, 2), elsewhere.address);
          const wrote = [0, 1, 4, 5, 7];
          for (const p of wrote) mem.bytes[p * PAGE] = 9;
          const set = watch.collect();
          const lost = new Set(set.lost.flatMap((r) => Array.from({ length: r.pages }, (_, i) => r.firstPage + i)));
          assert.ok(lost.has(2) && lost.has(3), `the moved pages are lost: ${JSON.stringify(set.lost)}`);
          for (const p of lost) assert.ok(!set.has(p), `lost page ${p} is not reported written`);
          for (const p of wrote) {
            assert.ok(set.has(p) || lost.has(p), `page ${p} was written: reported written or lost`);
          }
          assert.deepEqual(
            [...set],
            wrote.filter((p) => !lost.has(p)),
            "pages still watched are exact",
          );
          assert.deepEqual(watch.collect().lost, set.lost, "lost pages stay lost");
          elsewhere.bytes[0] = 1; // the moved page at its new place: not ours any more
          assert.ok(!watch.collect().has(2));
        });
      }
    }
  },
);

eachVariant("an unmapped hole inside the watched range is reported lost; the rest is still watched", (v) => {
  {
    using mem = Region.map(8 * PAGE);
    using watch = WriteWatch.start(mem, v.options);
    assert.equal(libc.munmap(mem.address + BigInt(6 * PAGE), BigInt(2 * PAGE)), 0);
    mem.bytes[PAGE] = 1;
    const set = watch.collect();
    assert.deepEqual(set.lost, [{ firstPage: 6, pages: 2 }]);
    assert.deepEqual([...set], [1]);
  }
});

// ---------------------------------------------------------------------------
// Backends, lifecycle, bad input

Deno.test("backend selection: forced backends that cannot run fail saying why; auto falls back in order", () => {
  using mem = Region.map(PAGE);
  const soft = available.get("soft-dirty")!;
  if (!soft.available) {
    assertUffdError(
      () => WriteWatch.start(mem, { backend: "soft-dirty" }),
      "EOPNOTSUPP",
      /soft-dirty backend cannot be used: .*CONFIG_MEM_SOFT_DIRTY.*softDirtySupported\(\) is false/,
    );
  }
  assertUffdError(
    () => WriteWatch.start(mem, { backend: "async", decline: ["async"] }),
    "EINVAL",
    /async backend cannot be used: declined/,
  );
  assertUffdError(
    () => WriteWatch.start(mem, { backend: "async", decline: ["WP_ASYNC"] }),
    "EOPNOTSUPP",
    /async backend cannot be used: WP_ASYNC declined by the caller's options/,
  );
  assertUffdError(
    () => WriteWatch.start(mem, { backend: "sync", decline: ["EVENT_REMOVE"] }),
    "EOPNOTSUPP",
    /sync backend cannot be used: EVENT_REMOVE declined by the caller's options/,
  );
  if (!soft.available) {
    const e = assertUffdError(
      () => WriteWatch.start(mem, { decline: ["async", "sync"] }),
      "EOPNOTSUPP",
      /no write-watch backend can run here \(async: declined; sync: declined; soft-dirty: .*CONFIG_MEM_SOFT_DIRTY/,
    );
    assert.equal(e.operation, "WriteWatch");
    assertUffdError(
      () => WriteWatch.start(mem, { decline: ["WP_ASYNC", "PAGEFAULT_FLAG_WP"] }),
      "EOPNOTSUPP",
      /\(async: WP_ASYNC declined by the caller's options; sync: PAGEFAULT_FLAG_WP declined by the caller's options; /,
    );
  }
  if (available.get("async")!.available) {
    using watch = WriteWatch.start(mem);
    assert.equal(watch.backend, "async", "auto picks async first");
  }
  if (available.get("sync")!.available) {
    // Without WP_ASYNC (as on kernels before 6.7), automatic selection falls back to sync.
    using watch = WriteWatch.start(mem, { decline: ["WP_ASYNC"] });
    assert.equal(watch.backend, "sync");
    mem.bytes[0] = 1;
    assert.deepEqual([...watch.collect()], [0]);
  }
  if (available.get("sync")!.available) {
    using watch = WriteWatch.start(mem, { decline: ["async"] });
    assert.equal(watch.backend, "sync", "declining the async backend itself falls back to sync too");
  }
  assert.deepEqual(WriteWatch.backends().map((b) => b.name), ["async", "sync", "soft-dirty"]);
});

eachVariant(
  "stop() unprotects the memory, releases the userfaultfd and the handler, later calls fail clearly",
  async (v) => {
    {
      using mem = Region.map(4 * PAGE);
      mem.bytes.fill(1);
      // The first Worker of a process leaves runtime fds and a thread that later ones reuse.
      WriteWatch.start(mem, v.options).stop();
      await new Promise((r) => setTimeout(r, 200));
      const fds = fdCount();
      const threads = threadCount();
      const watch = WriteWatch.start(mem, v.options);
      if (v.backend === "async") assert.equal(fdCount(), fds + 1, "one userfaultfd per watch");
      assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [true, true, true, true]);
      watch.stop();
      watch[Symbol.dispose]();
      assert.equal(watch.stopped, true);
      assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [false, false, false, false], "unprotected at once");
      mem.bytes[0] = 3; // nothing waits for a handler that is gone
      await waitFor(
        () => fdCount() === fds && threadCount() === threads,
        5_000,
        `the watch's fds and threads to go (fds ${fdCount()} vs ${fds}, threads ${threadCount()} vs ${threads})`,
      );
      assertUffdError(() => watch.collect(), "EBADF", /the watch is stopped/);
      assertUffdError(() => watch.reset(), "EBADF", /the watch is stopped/);
      using again = WriteWatch.start(mem, v.options); // the range can be watched again
      mem.bytes[0] = 2;
      assert.deepEqual([...again.collect()], [0]);
    }
  },
);

Deno.test("bad input: wrong target types are TypeErrors; empty, detached or unknown things are refused", () => {
  assert.throws(() => WriteWatch.start({} as unknown as MemoryTarget), TypeError);
  assert.throws(() => WriteWatch.start(null as unknown as MemoryTarget), TypeError);
  assert.throws(
    () => WriteWatch.start(new ArrayBuffer(8), { backend: "magic" as WriteWatchBackendName }),
    /unknown backend/,
  );
  assert.throws(
    () => WriteWatch.start(new ArrayBuffer(8), { decline: ["magic" as WriteWatchBackendName] }),
    /unknown backend or feature "magic" in decline/,
  );
  assertUffdError(() => WriteWatch.start(new ArrayBuffer(0)), "EINVAL", /empty, detached or unmapped/);
  const gone = new ArrayBuffer(PAGE);
  gone.transfer();
  assertUffdError(() => WriteWatch.start(gone), "EINVAL", /empty, detached or unmapped/);
});

eachVariant(
  "a typed array over a WebAssembly.Memory is detached by growth: the error says to watch the Memory",
  (v) => {
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 2 });
    using watch = WriteWatch.start(new Uint8Array(memory.buffer), v.options);
    memory.grow(1);
    assertUffdError(() => watch.collect(), "EINVAL", /detached .*watch the Memory itself/);
  },
);
