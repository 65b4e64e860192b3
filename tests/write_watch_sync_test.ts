/**
 * The sync write-watch backend beyond what `tests/write_watch_test.ts` runs for
 * every backend: the backends give the same answers on one workload, the two ways
 * of making untouched pages count (`WP_UNPOPULATED`, pre-population), disposal
 * that leaves nothing behind, and — in child processes killed at a deadline — the
 * orders of events and disposal that could leave the main isolate blocked.
 */

import assert from "node:assert/strict";
import {
  kernelProfile,
  MADV_POPULATE_WRITE,
  readPagemap,
  Region,
  type UntouchedFill,
  Userfaultfd,
  type WriteSet,
  WriteWatch,
  type WriteWatchOptions,
} from "../mod.ts";
import { overrideKernelProfile } from "../kernel/profile.ts";
import * as libc from "../ffi/_libc.ts";
import { DEADLINE_SCALE, fdCount, scenarioResult, skipUnless, threadCount, waitFor } from "./helpers.ts";
import { wasmWriter } from "./fixtures/wasm_writer.ts";

const PAGE = Region.pageSize;
const SCENARIOS = new URL("./scenarios/write_watch_sync.ts", import.meta.url);
const available = new Map(WriteWatch.backends().map((b) => [b.name, b]));
const noSync = skipUnless(available.get("sync")!.available, `sync backend: ${available.get("sync")!.reason}`);
const noAsync = skipUnless(available.get("async")!.available, `async backend: ${available.get("async")!.reason}`);

// deno-lint-ignore no-explicit-any
type Json = any;

/** Runs one scenario in its own process with a deadline: its last line of output, as JSON. */
const scenario = (name: string, deadlineMs = 30_000): Promise<Json> => scenarioResult(SCENARIOS, name, { deadlineMs });

/** A small deterministic PRNG (xorshift32). */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

function summary(set: WriteSet, partial = false): Json {
  const pages = [...set];
  const edges = [0, set.pageCount - 1];
  return {
    // The partial first and last pages of an unaligned buffer are compared apart (see the test).
    runs: partial ? pages.filter((p) => !edges.includes(p)) : [...set.runs],
    edges: partial ? edges.filter((p) => set.has(p)) : undefined,
    lost: [...set.lostRuns],
    pageCount: set.pageCount,
    grewFrom: set.grewFrom,
    relocated: set.relocated,
  };
}

/**
 * One workload, the same every time: a region with pages written and read before
 * the watch, random writes, reads of untouched pages, zaps (then writes into some
 * zapped pages), an unmapped tail; a WebAssembly.Memory grown three times, written
 * by wasm before and after each growth; a 16 MiB ArrayBuffer (not page-aligned)
 * written at random and at both ends. Returns every answer, in order.
 */
function workload(options: WriteWatchOptions, buffer: ArrayBuffer): Json[] {
  const next = random(2024);
  const pick = (n: number) => Math.floor(next() * n);
  const answers: Json[] = [];
  const PAGES = 1024;
  using mem = Region.map(PAGES * PAGE);
  for (let i = 0; i < 100; i++) mem.bytes[pick(PAGES) * PAGE + pick(PAGE)] = 0xee;
  let reads = 0; // summed and used: an unused load may be optimised away
  for (let i = 0; i < 100; i++) reads += mem.bytes[pick(PAGES) * PAGE]!;
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 8 });
  const wasm = wasmWriter(memory);
  wasm.store(8 * PAGE, 1);
  const bytes = new Uint8Array(buffer);
  bytes.fill(0);
  using watchMem = WriteWatch.start(mem, options);
  using watchWasm = WriteWatch.start(memory, options);
  using watchBuffer = WriteWatch.start(buffer, options);
  for (let round = 0; round < 6; round++) {
    for (let i = 0; i < 20 + 60 * round; i++) mem.bytes[pick(PAGES - 64) * PAGE + pick(PAGE)] = round + 1;
    for (let i = 0; i < 20; i++) reads += mem.bytes[pick(PAGES - 64) * PAGE + pick(PAGE)]!;
    for (let i = 0; i < 3; i++) {
      const first = pick(PAGES - 72);
      mem.zap(mem.pages(first, 1 + pick(8)));
      if (i === 0) mem.bytes[first * PAGE] = 9; // written again after the zap
    }
    if (round === 3) assert.equal(libc.munmap(mem.address + BigInt((PAGES - 16) * PAGE), BigInt(16 * PAGE)), 0);
    if (round % 2 === 1) answers.push(["region, written()", summary(watchMem.written())]);
    answers.push(["region", summary(watchMem.collect())]);

    const wasmPages = memory.buffer.byteLength / PAGE;
    for (let i = 0; i < 10; i++) wasm.store(pick(wasmPages) * PAGE + 4 * pick(PAGE / 4), round);
    if (round === 1 || round === 2 || round === 4) {
      assert.notEqual(wasm.grow(round === 2 ? 2 : 1), -1);
      const grown = memory.buffer.byteLength / PAGE;
      // Written before the watch sees the growth (not the last two pages: they are only read below).
      for (let i = 0; i < 5; i++) wasm.store((wasmPages + pick(grown - wasmPages - 2)) * PAGE, 7);
      void new Uint8Array(memory.buffer)[(grown - 1) * PAGE]; // read only: not written
      // What a read leaves on a kernel whose read faults allocate (no shared zero page), on any kernel:
      // a page of zeros of its own. Not written, so never reported.
      const populated = libc.addressOf(memory.buffer) + BigInt((grown - 2) * PAGE);
      assert.equal(libc.madvise(populated, BigInt(PAGE), MADV_POPULATE_WRITE), 0);
      const set = watchWasm.collect();
      assert.ok(!set.has(grown - 2) && !set.has(grown - 1), `round ${round}: a grown page only read is not written`);
      answers.push(["wasm", summary(set)]);
    } else answers.push(["wasm", summary(watchWasm.collect())]);

    // The partial first and last pages: which of them this workload wrote (other code may write them too).
    const head = Number(libc.addressOf(buffer) % BigInt(PAGE));
    const last = Math.ceil((head + bytes.length) / PAGE) - 1;
    const wroteEdges = new Set<number>();
    for (let i = 0; i < 40; i++) {
      const at = pick(bytes.length);
      bytes[at] = round + 1;
      const page = Math.floor((head + at) / PAGE);
      if (page === 0 || page === last) wroteEdges.add(page);
    }
    if (round === 2) {
      bytes[0] = bytes[bytes.length - 1] = 1;
      wroteEdges.add(0).add(last);
    }
    answers.push(["buffer", { ...summary(watchBuffer.collect(), true), wroteEdges: [...wroteEdges].sort() }]);
  }
  assert.ok(reads >= 0);
  return answers;
}

Deno.test({
  name: "async, sync and sync pre-populated give the same answers on the same workload (writes, zaps, growth, holes)",
  ignore: noSync || noAsync,
  fn: () => {
    const buffer = new ArrayBuffer(16 << 20); // one buffer, so that all runs see the same page offsets
    assert.notEqual(libc.addressOf(buffer) % BigInt(PAGE), 0n, "not page-aligned (glibc's chunk header)");
    const reference = workload({ backend: "async" }, buffer);
    for (const [what, a] of reference) {
      if (what === "buffer") {
        for (const p of a.wroteEdges) assert.ok(a.edges.includes(p), `async: partial page ${p}`);
      }
    }
    assert.ok(reference.some(([what, a]) => what === "region" && a.lost.length > 0), "the workload makes a hole");
    assert.ok(reference.some(([what, a]) => what === "wasm" && a.grewFrom !== undefined), "and grows the memory");
    // The pre-populating variant under every way of filling never-touched pages this kernel can do
    // (the profile's own choice first): each must give the same answers.
    const variants: { options: WriteWatchOptions; fill?: UntouchedFill }[] = [{ options: { backend: "sync" } }];
    for (const fill of fills()) variants.push({ options: { backend: "sync", decline: ["WP_UNPOPULATED"] }, fill });
    for (const { options, fill } of variants) {
      overrideKernelProfile(fill === undefined ? undefined : { untouchedFill: fill });
      let answers: Json[];
      try {
        answers = workload(options, buffer);
      } finally {
        overrideKernelProfile(undefined);
      }
      assert.equal(answers.length, reference.length);
      for (let i = 0; i < answers.length; i++) {
        const what = `${JSON.stringify(options)} ${fill ?? ""}: answer ${i} (${reference[i][0]})`;
        const [answer, expected] = [answers[i][1], reference[i][1]];
        if (expected.edges === undefined) {
          assert.deepEqual(answers[i], reference[i], what);
          continue;
        }
        // A partial page of the buffer is shared with other data, which other code (the
        // allocator) may write at any time: every backend reports it when anyone wrote
        // it, and sync (when the mapping around it holds other data, so it cannot be
        // protected safely) on every call. So only the workload's own writes are compared.
        assert.deepEqual({ ...answer, edges: undefined }, { ...expected, edges: undefined }, what);
        for (const p of answer.wroteEdges) assert.ok(answer.edges.includes(p), `${what}: partial page ${p}`);
      }
    }
  },
});

/** The ways of filling never-touched pages that do what their name says on this kernel (the profile's first). */
function fills(): UntouchedFill[] {
  const z = kernelProfile().zeroPage;
  const all: UntouchedFill[] = [kernelProfile().untouchedFill];
  if (z.populateRead === "zero-page") all.push("populate-read");
  if (z.populateRead === "allocates") all.push("populate-allocates");
  if (z.uffdZeropage === "zero-page") all.push("uffd-zeropage");
  return [...new Set(all)].filter((f) => f !== "none");
}

Deno.test({
  name: "untouched pages count every way: WP_UNPOPULATED leaves markers, declining it fills them as the profile says",
  ignore: noSync || skipUnless(readPagemap.length > 0 && kernelProfile().pagemap.uffdWpBit === true, "no uffd-wp bit"),
  fn: async (t) => {
    using mem = Region.map(8 * PAGE);
    // With WP_UNPOPULATED (Linux 6.4): markers on the untouched pages; without it, the profile's fill (below).
    if (Userfaultfd.supported().features.has("WP_UNPOPULATED")) {
      using watch = WriteWatch.start(mem, { backend: "sync" });
      assert.equal(watch.untouched, "unpopulated");
      const entries = readPagemap(mem);
      assert.deepEqual(entries.map((e) => [e.present, e.uffdWp]), Array(8).fill([false, true]), "markers, no pages");
      mem.bytes[6 * PAGE] = 1;
      assert.deepEqual([...watch.collect()], [6]);
    } else console.log(`  kernel ${Deno.osRelease()} has no WP_UNPOPULATED: only the fills are measured`);
    for (const fill of fills()) {
      await t.step(fill, () => {
        overrideKernelProfile({ untouchedFill: fill });
        try {
          using fresh = Region.map(8 * PAGE);
          {
            using watch = WriteWatch.start(fresh, { decline: ["WP_ASYNC", "WP_UNPOPULATED"] });
            assert.equal(watch.backend, "sync", "without WP_ASYNC, automatic selection falls back to sync");
            assert.equal(watch.untouched, fill === "populate-allocates" ? "allocated" : "zero-page");
            const entries = readPagemap(fresh);
            assert.deepEqual(
              entries.map((e) => [e.present, e.uffdWp]),
              Array(8).fill([true, true]),
              "filled, protected",
            );
            // The zero page is never mapped exclusively; a page of its own is.
            const own = entries.map((e) => e.exclusive);
            assert.deepEqual(own, Array(8).fill(fill === "populate-allocates"), "zero pages unless allocated");
            void fresh.bytes[2 * PAGE];
            fresh.bytes[6 * PAGE] = 1;
            fresh.zap(fresh.pages(4, 1)); // removed: counted written, filled again before the next protection
            assert.deepEqual([...watch.collect()], [4, 6]);
            assert.equal(readPagemap(fresh.pages(4, 1))[0]!.uffdWp, true, "the zapped page is protected again");
            fresh.bytes[4 * PAGE] = 1;
            assert.deepEqual([...watch.collect()], [4]);
          }
          assert.deepEqual(readPagemap(fresh).map((e) => e.uffdWp), Array(8).fill(false), "stop() unprotected all");
        } finally {
          overrideKernelProfile(undefined);
        }
      });
    }
  },
});

Deno.test({
  name: "ten sync watches started and stopped leave no fd and no thread behind (bounded wait)",
  ignore: noSync,
  fn: async () => {
    using mem = Region.map(64 * PAGE);
    WriteWatch.start(mem, { backend: "sync" }).stop(); // the first Worker leaves runtime fds that later ones reuse
    await new Promise((r) => setTimeout(r, 200));
    const fds = fdCount();
    const threads = threadCount();
    for (let i = 0; i < 10; i++) {
      using watch = WriteWatch.start(mem, { backend: "sync" });
      mem.bytes[i * PAGE] = 1;
      assert.deepEqual([...watch.collect()], [i]);
    }
    // At most as many as before (a thread or fd of the runtime's may also have gone meanwhile).
    let now = { fds: 0, threads: 0 };
    await waitFor(
      () => (now = { fds: fdCount(), threads: threadCount() }).fds <= fds && now.threads <= threads,
      30_000,
      `fds (were ${fds}) and threads (were ${threads}) to come back`,
    ).catch((e) => {
      throw new Error(`${e.message}: fds ${now.fds}, threads ${now.threads}`);
    });
  },
});

Deno.test({
  name:
    "the main isolate zaps, unmaps and moves watched memory: each call returns at once, the answer says what happened",
  ignore: noSync,
  fn: async () => {
    const r = await scenario("events-from-main");
    assert.deepEqual(r.written, [0, 4, 5, 10, 12], "the write, and the zapped pages (documented conservative case)");
    assert.deepEqual(r.lost, [{ firstPage: 20, pages: 2 }, { firstPage: 28, pages: 4 }], "moved and unmapped: lost");
    assert.deepEqual(r.lostAgain, r.lost, "and they stay lost");
    assert.ok(r.slowestMs < 1_000 * DEADLINE_SCALE, `a call took ${r.slowestMs} ms`);
    assert.ok(r.stopMs < 1_000 * DEADLINE_SCALE, `stop() took ${r.stopMs} ms`);
  },
});

Deno.test({
  name: "disposal orders: memory unmapped under a running watch, memory used after stop(), a watch never stopped",
  ignore: noSync,
  fn: async (t) => {
    await t.step("unmapped while watched, then stopped", async () => {
      const r = await scenario("unmap-while-watched");
      assert.deepEqual(r.lost, [{ firstPage: 0, pages: 16 }]);
      assert.deepEqual(r.written, [], "lost pages are not reported written");
      assert.ok(r.unmapMs < 1_000 * DEADLINE_SCALE && r.stopMs < 1_000 * DEADLINE_SCALE, JSON.stringify(r));
    });
    await t.step("after stop(): zap, mremap and writes never wait", async () => {
      const r = await scenario("after-stop");
      assert.equal(r.landed, 7);
      assert.ok(r.slowestMs < 1_000 * DEADLINE_SCALE, JSON.stringify(r));
    });
    await t.step("stop() while another thread writes: the writer completes", async () => {
      const r = await scenario("stop-while-writing");
      assert.equal(r.landed, true);
      assert.ok(r.stopMs < 1_000 * DEADLINE_SCALE, `stop() took ${r.stopMs} ms`);
    });
    await t.step("never stopped: the script ends and the process exits", async () => {
      const r = await scenario("never-stopped", 15_000);
      assert.deepEqual(r.written, [1]);
    });
  },
});

Deno.test({
  name: "written() right after the main isolate zapped or unmapped a page already reports it (200 times)",
  ignore: noSync,
  fn: () => {
    // madvise and munmap return once the handler has read their event, before its
    // policy has recorded it: written() must wait for the batch to be handled.
    using mem = Region.map(512 * PAGE);
    using watch = WriteWatch.start(mem, { backend: "sync" });
    for (let i = 0; i < 200; i++) {
      const page = (i * 7) % 500;
      mem.zap(mem.pages(page, 1));
      assert.ok(watch.written().has(page), `zap ${i}: page ${page} not reported yet`);
      watch.reset();
    }
    assert.equal(libc.munmap(mem.address + BigInt(510 * PAGE), BigInt(2 * PAGE)), 0);
    assert.deepEqual(watch.written().lost, [{ firstPage: 510, pages: 2 }]);
  },
});

Deno.test({
  name:
    "permissions: with --allow-ffi alone the sync backend says it needs read access to the package; with it, it runs",
  ignore: noSync,
  fn: async () => {
    const root = new URL("../", import.meta.url);
    const script = `
      import { Region, WriteWatch } from ${JSON.stringify(new URL("mod.ts", root).href)};
      using mem = Region.map(4 * Region.pageSize);
      const sync = WriteWatch.backends().find((b) => b.name === "sync");
      let backend = "none";
      let written = [];
      try {
        using watch = WriteWatch.start(mem, { decline: ["WP_ASYNC"] });
        backend = watch.backend;
        mem.bytes[Region.pageSize] = 1;
        written = [...watch.collect()];
      } catch (e) {
        backend = String(e.message);
      }
      console.log(JSON.stringify({ available: sync.available, reason: sync.reason ?? null, backend, written }));
    `;
    const run = async (flags: string[]) => {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-prompt", "--quiet", ...flags, "-"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(script));
      await writer.close();
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
    };
    const ffiOnly = await run(["--allow-ffi"]);
    assert.equal(ffiOnly.available, false);
    assert.match(ffiOnly.reason, /loads this package's modules from .*needs read permission there \(--allow-read=/);
    if (kernelProfile().softDirty.works) {
      // Where soft-dirty works (no Worker, no file to read), automatic selection goes on to it.
      assert.equal(ffiOnly.backend, "soft-dirty");
      assert.deepEqual(ffiOnly.written, [1]);
    } else {
      assert.match(
        ffiOnly.backend,
        /no write-watch backend can run here \(async: WP_ASYNC declined.*; sync: its fault/,
      );
    }
    const withRead = await run(["--allow-ffi", `--allow-read=${decodeURIComponent(root.pathname)}`]);
    assert.deepEqual(withRead, { available: true, reason: null, backend: "sync", written: [1] });
  },
});

Deno.test({
  name:
    "a small ArrayBuffer in the malloc heap: its pages, shared with other data, are never protected, always reported",
  ignore: noSync,
  fn: () => {
    const small = new ArrayBuffer(3000);
    using watch = WriteWatch.start(small, { backend: "sync" });
    const span = { address: watch.address, length: watch.pageCount * PAGE };
    assert.ok(watch.head !== 0 || (watch.head + small.byteLength) % PAGE !== 0, "not page-aligned");
    assert.deepEqual(readPagemap(span).map((e) => e.uffdWp), Array(watch.pageCount).fill(false), "never protected");
    const all = Array.from({ length: watch.pageCount }, (_, i) => i);
    assert.deepEqual([...watch.collect()], all, "reported written on every call (documented conservative case)");
    new Uint8Array(small)[0] = 1; // no fault: nothing to wait for
    assert.deepEqual([...watch.collect()], all);
  },
});
