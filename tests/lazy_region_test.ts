/**
 * LazyRegion on the real kernel. Scenarios in which the main isolate touches
 * missing memory run in a child process (`tests/scenarios/lazy_region.ts`) killed
 * at its deadline, so that a broken handler fails the test instead of hanging the
 * runner (and a poisoned page, which kills its toucher, kills only the child);
 * argument checks and refusals run here.
 */

import assert from "node:assert/strict";
import {
  Checkpoint,
  ERRNO,
  Feature,
  LazyRegion,
  MADV_NOHUGEPAGE,
  Region,
  UffdError,
  Userfaultfd,
  WriteWatch,
} from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { mappedExtent } from "../kernel/maps.ts";
import { needs, runScenario, scenarioResult, type ScenarioRun, within } from "./helpers.ts";

const SCENARIOS = new URL("./scenarios/lazy_region.ts", import.meta.url);
const PATTERN = new URL("./sources/pattern.ts", import.meta.url);
const PAGE = Region.pageSize;

// deno-lint-ignore no-explicit-any
type Json = any;

/** Environment of a scenario whose LazyRegions decline features (`UFFD_LAZY_DECLINE`). */
const declining = (decline: string[]) => decline.length > 0 ? { UFFD_LAZY_DECLINE: decline.join(",") } : undefined;

/** Runs one scenario in its own process with a deadline (it may fail: the caller looks at how it ended). */
const runOne = (name: string, deadlineMs: number, decline: string[] = []): Promise<ScenarioRun> =>
  runScenario(SCENARIOS, name, { deadlineMs, env: declining(decline) });

/** A scenario that must succeed: its last line of output, as JSON. */
const scenario = (name: string, deadlineMs = 60_000, decline: string[] = []): Promise<Json> =>
  scenarioResult(SCENARIOS, name, { deadlineMs, env: declining(decline) });

/**
 * How a failed source page is poisoned: `UFFDIO_POISON` (Linux 6.6), and where that is missing or declined,
 * `PROT_NONE` on the page. The poison tests run both ways where the kernel has the ioctl (the fallback forced by
 * declining it), the one way it can where it has not.
 */
const hasPoison = Userfaultfd.supported().features.has(Feature.POISON);
const POISONINGS: { name: string; decline: string[]; signal: Deno.Signal }[] = [
  ...(hasPoison ? [{ name: "UFFDIO_POISON", decline: [], signal: "SIGBUS" as const }] : []),
  {
    name: hasPoison ? "PROT_NONE (POISON declined)" : "PROT_NONE (no UFFDIO_POISON)",
    decline: hasPoison ? ["POISON"] : [],
    signal: "SIGSEGV",
  },
];

Deno.test({
  name:
    "64 MiB checkpoint chain: random reads by the main isolate return the chain's bytes; its zero pages are zero pages",
  async fn() {
    const r = await scenario("checkpoint-random");
    assert.ok(r.touched > 2000, `${r.touched} distinct pages read`);
    assert.equal(r.mismatches, 0, "every byte read is the chain's");
    assert.deepEqual(r.wholePages, [], "every touched page equals the image, all 4096 bytes");
    assert.equal(r.faults, r.touched, "one fault served per page touched");
    assert.ok(r.zeroTouched > 100);
    assert.equal(r.zeroPages, r.zeroTouched, "the chain's zero pages were mapped as zero pages, counted");
    assert.equal(r.pfnZero, r.zeroTouched, "PAGEMAP_SCAN: exactly those map the zero page (PFNZERO)");
    assert.equal(r.present, r.touched, "no page was filled that nobody touched");
    assert.equal(r.bytesRead, (r.touched - r.zeroTouched) * PAGE, "zero pages are not read");
    assert.equal(r.afterDrop, true, "a page dropped with MADV_DONTNEED reads back as zeros");
    assert.equal(r.refaults, 1);
    assert.equal(r.bytesReadAfterDrop, r.bytesRead, "…without reading the chain again");
    assert.equal(r.state, "restoring");
    assert.equal(r.procMem, -ERRNO.EIO!, "/proc/self/mem: a missing page is EIO…");
    assert.equal(r.faultsAfterProcMem, 0, "…and no fault reached the handler");
  },
});

Deno.test({
  name: "64 MiB checkpoint chain with prefetch: the region becomes fully resident and ready resolves",
  async fn() {
    const r = await scenario("checkpoint-prefetch");
    assert.equal(r.mismatches, 0, "reads during the prefetch return the chain's bytes");
    assert.equal(r.resident, r.pages);
    assert.equal(r.faultsPlusPrefetched, r.pages, "every page filled once, by a fault or by the prefetcher");
    assert.equal(r.present, r.pages, "PAGEMAP_SCAN: every page present");
    assert.equal(r.wholeImage, 0, "the whole region equals the image");
    assert.equal(r.zeroPages, r.chainZeroPages);
    assert.equal(r.pfnZero, r.chainZeroPages, "zero pages map the zero page");
    assert.equal(r.state, "ready");
  },
});

for (const { name: how, decline } of POISONINGS) {
  Deno.test(
    `a corrupted page of the chain (${how}): read() throws EIO naming it, write(2) from it gets EFAULT, every other page is right`,
    async () => {
      const r = await scenario("checkpoint-corrupt", 60_000, decline);
      assert.equal(r.before, true, "the bytes just before the bad page read fine");
      assert.match(r.readError, /^EIO: .*page 3885 is poisoned.*checksum mismatch in .*delta-1/);
      assert.equal(r.readAgain, "EIO", "a second read is refused without touching the page");
      assert.equal(r.writeSyscall, -ERRNO.EFAULT!, "a system call reading the poisoned page fails with EFAULT");
      assert.deepEqual(r.poisonedNoPrefetch, [{ firstPage: 3885, pages: 1 }]);
      assert.deepEqual(r.poisoned, [{ firstPage: 3885, pages: 1 }], "with prefetch: the same page, and only it");
      assert.equal(r.poisonedCount, 1);
      assert.equal(r.resident, r.pages - 1, "every other page is resident: ready resolved");
      assert.equal(r.othersWrong, 0, "and every other page is right");
      assert.equal(r.wholeRead, "EIO");
    },
  );
}

for (const { name: how, decline, signal } of POISONINGS) {
  Deno.test(`JavaScript touching a poisoned page (${how}) raises ${signal}: the process dies (what read() exists for)`, async () => {
    const r = await runOne("poison-touch", 30_000, decline);
    assert.match(r.stdout, /page 2: true\ntouching the poisoned page\n$/, r.stdout + r.stderr);
    assert.equal(r.signal, signal, `exit code ${r.code}, signal ${r.signal}`);
  });
}

Deno.test({
  name:
    "every source kind: files (past their end: zeros), bytes (shared or copied), memory, module functions (sync, async)",
  async fn() {
    const r = await scenario("sources");
    assert.deepEqual(r.file, { pages: 11, wrong: 0, faults: 11, kind: "file" });
    assert.deepEqual(r.fileUrl, r.file);
    assert.deepEqual(r.filePastEnd, { pages: 16, wrong: 0, faults: 16, kind: "file" });
    assert.equal(r.plainCopied, true, "a plain Uint8Array is copied at open: later changes are not seen");
    assert.equal(r.plainWrong, 0);
    assert.equal(r.sharedSeen, true, "a shared one is used in place");
    assert.equal(r.sharedBytesRead, 0, "copied straight from the source's memory, no read");
    assert.deepEqual(r.memory, { pages: 64, wrong: 0, faults: 64, kind: "memory" });
    assert.deepEqual(r.module, { pages: 64, wrong: 0, faults: 64, kind: "module" });
    assert.deepEqual(r.moduleAsync, r.module);
    assert.deepEqual(r.modulePrefetch, { resident: 64, wrong: 0 });
    assert.deepEqual(r.sparse, { zeroPages: 63, pfnZero: 63, page5: 1 });
  },
});

Deno.test({
  name: "memfd: pages go through the page cache and UFFDIO_CONTINUE; a dropped page keeps its writes (minor fault)",
  ignore: needs(Feature.MINOR_SHMEM),
  async fn() {
    const r = await scenario("memfd");
    assert.equal(r.kind, "memfd");
    assert.equal(r.fill, "continue");
    assert.equal(r.wrong, 0);
    assert.equal(r.faults, r.touched);
    assert.equal(r.keptAfterDrop, true);
    assert.equal(r.minorAfter, r.minorBefore + 1, "the touch after MADV_DONTNEED was a minor fault");
    assert.deepEqual(r.prefetch, { resident: 4096, present: 4096, wrong: 0 });
  },
});

Deno.test({
  name: "fill: move places pages with UFFDIO_MOVE from a staging page",
  ignore: needs(Feature.MOVE),
  async fn() {
    const r = await scenario("move");
    assert.equal(r.fill, "move");
    assert.equal(r.wrong, 0);
    assert.equal(r.faults, r.touched);
    assert.equal(r.prefetch.wrong, 0);
    assert.equal(r.prefetch.resident, 4096);
    assert.equal(r.prefetch.present, 4096);
    assert.equal(r.prefetch.zeroPages, r.prefetch.chainZeroPages);
  },
});

for (const { name: how, decline } of POISONINGS) {
  Deno.test(`a module source that throws for two pages (${how}; sync, async, with and without prefetch): EIO with its message`, async () => {
    const r = await scenario("module-throws", 60_000, decline);
    for (const variant of ["sync", "syncPrefetch", "async", "asyncPrefetch"]) {
      const v = r[variant];
      assert.match(v.errors[0], /^EIO .*page 5 is poisoned.*the test source refuses page 5/, variant);
      assert.match(v.errors[1], /^EIO .*page 77 is poisoned.*the test source refuses page 77/, variant);
      assert.deepEqual(v.poisoned, [{ firstPage: 5, pages: 1 }, { firstPage: 77, pages: 1 }], variant);
      assert.equal(v.othersWrong, 0, variant);
      assert.equal(v.readBefore, true, variant);
      assert.equal(v.stats.poisoned, 2, variant);
      assert.equal(v.stats.resident, 254, variant);
    }
  });
}

Deno.test("without UFFDIO_POISON (declined) the failed page is made inaccessible: the rest is served, nothing hangs", async () => {
  const r = await scenario("no-poison", 30_000);
  assert.equal(r.page4, true);
  assert.match(r.readError, /^EIO .*page 5 is poisoned.*the test source refuses page 5/);
  assert.equal(r.writeSyscall, -ERRNO.EFAULT!, "a system call reading the failed page fails with EFAULT");
  assert.equal(r.page9, true, "the handler goes on: a page after the failed one is served from the source");
  assert.deepEqual(r.poisoned, [{ firstPage: 5, pages: 1 }]);
  assert.equal(r.stats.poisoned, 1);
  assert.equal(r.state, "restoring");
  assert.equal(r.closedState, "closed");
  assert.equal(r.perms, "---p", "the failed page alone is inaccessible (a mapping of its own)");
});

Deno.test("close() while a fault waits on a stuck source: close() returns, the waiter is woken, nothing is left", async () => {
  const r = await scenario("close-pending", 30_000);
  assert.ok(r.closeMs < 2_000, `close() took ${r.closeMs} ms`);
  assert.equal(r.readerDone, true);
  assert.equal(r.state, "closed");
  assert.equal(r.mappedAfterClose, true, "the mapping outlives the close for the woken reader…");
  assert.equal(r.mappedLater, false, "…and is gone a second later");
  assert.equal(r.stuck.fds["[userfaultfd]"], undefined, "the userfaultfd is closed at once");
  assert.equal(r.stuck.threads, r.before.threads + 1, "terminate() did not interrupt the Worker's Atomics.wait");
  assert.deepEqual(r.after, r.before, "once the source returns, no fd and no Worker thread is left");
});

Deno.test("close() after use unmaps at once and leaves no fd and no Worker thread", async () => {
  const r = await scenario("close-clean", 30_000);
  assert.equal(r.first, true);
  assert.equal(r.mapped, false);
  assert.equal(r.state, "closed");
  assert.equal(r.bytesError, "EBADF");
  assert.deepEqual(r.after, r.before);
});

Deno.test("without prefetch, ready resolves once every page has been touched", async () => {
  const r = await scenario("ready-by-touch", 30_000);
  assert.deepEqual(r, { before: false, resident: 16, faults: 16 });
});

Deno.test("target: restore into a WebAssembly.Memory an instance reads, and into a Region that stays the caller's", async () => {
  const r = await scenario("target", 30_000);
  assert.equal(r.address, true, "the lazy region is the memory itself");
  assert.equal(r.wasmWrong, 0, "wasm loads of missing pages return the chain's words");
  assert.ok(r.wasmFaults > 50 && r.wasmFaults <= 100, `${r.wasmFaults} faults for 100 loads`);
  assert.equal(r.allWrong, 0, "its old contents were replaced on every page");
  assert.equal(r.afterClose, true, "after close() the memory keeps what was restored");
  assert.equal(r.grown, 0, "pages added by grow() are ordinary memory");
  assert.equal(r.regionWrong, 0);
  assert.equal(r.regionMapped, true, "close() leaves a target mapped");
  assert.equal(r.regionKept, true);
});

Deno.test("a chain of an ArrayBuffer that starts 16 bytes into a page: the region holds the buffer's bytes", async () => {
  const r = await scenario("checkpoint-head", 30_000);
  assert.equal(r.head, 16);
  assert.equal(r.length, 2 << 20);
  assert.equal(r.wrong, 0);
});

/** Open userfaultfds of this process. */
function userfaultfds(): number {
  let n = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === "anon_inode:[userfaultfd]") n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

Deno.test("LazyRegion.open refuses bad arguments, unreadable sources and damaged chains, and leaves nothing behind", async (t) => {
  const dir = await Deno.makeTempDir();
  const open = userfaultfds();
  try {
    await t.step("wrong types", async () => {
      await assert.rejects(LazyRegion.open(42 as never), TypeError);
      await assert.rejects(LazyRegion.open({ checkpoint: "base" } as never), TypeError);
      await assert.rejects(LazyRegion.open({ file: 7 } as never), TypeError);
      await assert.rejects(LazyRegion.open({ module: "./relative.ts" }, { length: PAGE }), TypeError);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { length: "4096" as never }), TypeError);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { prefetchChunk: "8" as never }), TypeError);
    });
    await t.step("bad values", async () => {
      const refused = (e: unknown) => e instanceof UffdError && e.code === "EINVAL" && e.beforeSyscall;
      await assert.rejects(LazyRegion.open({ module: PATTERN }), refused, "a module needs a length");
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { length: 100 }), refused);
      await assert.rejects(LazyRegion.open(new Uint8Array(0)), refused, "an empty source makes an empty region");
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { memory: "shared" as never }), refused);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { fill: "mmap" as never }), refused);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { memory: "memfd", fill: "copy" }), refused);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { prefetchChunk: 0 }), refused);
      await assert.rejects(LazyRegion.open({ file: new URL("https://example.com/image") }), refused);
      await assert.rejects(LazyRegion.open({ address: 0n, length: PAGE }), refused);
      using shared = Region.map(PAGE, { shared: true });
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { target: shared }), refused, "shared memory");
      const memory = new WebAssembly.Memory({ initial: 1 });
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { target: memory, length: PAGE }), refused);
      await assert.rejects(LazyRegion.open(new Uint8Array(PAGE), { target: memory, memory: "memfd" }), refused);
      await assert.rejects(
        LazyRegion.open(new Uint8Array(65536 + PAGE), { target: memory }),
        (e) =>
          refused(e) &&
          /the target has 65536 bytes; the image has \d+: grow\(\) the memory to 2 wasm pages/.test(
            (e as Error).message,
          ),
        "a source longer than the target would lose its end",
      );
      await assert.rejects(
        LazyRegion.open(new Uint8Array(PAGE), { target: new ArrayBuffer(PAGE) as never }),
        TypeError,
      );
    });
    await t.step("a feature that is declined", async () => {
      await assert.rejects(
        LazyRegion.open(new Uint8Array(PAGE), { fill: "move", decline: ["MOVE"] }),
        (e) => e instanceof UffdError && /MOVE/.test(e.message),
      );
    });
    await t.step("a missing file", async () => {
      await assert.rejects(
        LazyRegion.open({ file: `${dir}/nope` }),
        (e) => e instanceof UffdError && e.code === "ENOENT",
      );
    });
    await t.step("a damaged or mismatched chain", async () => {
      using mem = Region.map(4 * PAGE);
      using ckpt = Checkpoint.start(mem);
      mem.bytes[0] = 1;
      ckpt.write(`${dir}/base`);
      mem.bytes[PAGE] = 1;
      ckpt.write(`${dir}/delta-1`);
      await assert.rejects(
        LazyRegion.open({ checkpoint: [`${dir}/delta-1`] }),
        (e) => e instanceof UffdError && /base/.test(e.message),
      );
      const bytes = await Deno.readFile(`${dir}/base`);
      await Deno.writeFile(`${dir}/truncated`, bytes.subarray(0, bytes.length - 1));
      await assert.rejects(
        LazyRegion.open({ checkpoint: [`${dir}/truncated`] }),
        (e) => e instanceof UffdError && e.code === "EIO",
      );
    });
    await t.step("a module that does not load", async () => {
      await assert.rejects(
        LazyRegion.open({ module: new URL("./sources/no_such_source.ts", import.meta.url) }, { length: PAGE }),
        (e) => /no_such_source/.test(String((e as Error).cause ?? (e as Error).message)),
      );
      await assert.rejects(
        LazyRegion.open({ module: PATTERN, export: "nope" }, { length: PAGE, memory: "memfd" }),
        (e) => /nope/.test(String(((e as Error).cause as Error)?.message ?? (e as Error).message)),
      );
      assert.ok(!Deno.readTextFileSync("/proc/self/maps").includes("memfd:uffd-lazy"), "the region was unmapped");
    });
    assert.equal(userfaultfds(), open, "no userfaultfd left open");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read() and write() check their ranges; a closed region refuses everything", async () => {
  const image = new Uint8Array(4 * PAGE).map((_, i) => i % 251);
  const lazy = await LazyRegion.open(image, { prefetch: true });
  await lazy.ready;
  // Resident everywhere: plain copies, no fault, nothing touched that is missing.
  assert.deepEqual(lazy.read(PAGE - 1, 3), image.subarray(PAGE - 1, PAGE + 2));
  const into = new Uint8Array(10).fill(0xee);
  assert.equal(lazy.read(5, 4, into).length, 4, "a view of the first bytes of into");
  assert.deepEqual(into.subarray(0, 5), new Uint8Array([5, 6, 7, 8, 0xee]));
  lazy.write(4 * PAGE - 2, new Uint8Array([1, 2]));
  assert.deepEqual(lazy.bytes.subarray(4 * PAGE - 3), new Uint8Array([image[4 * PAGE - 3]!, 1, 2]));
  assert.throws(() => lazy.read(4 * PAGE - 1, 2), (e) => e instanceof UffdError && e.code === "EINVAL");
  assert.throws(() => lazy.read(-1, 1), UffdError);
  assert.throws(() => lazy.read(0, 8, new Uint8Array(4)), TypeError);
  assert.throws(() => lazy.write(0, [1] as never), TypeError);
  assert.equal(lazy.state, "ready");
  await lazy.close();
  assert.equal(lazy.state, "closed");
  assert.throws(() => lazy.read(0, 1), (e) => e instanceof UffdError && e.code === "EBADF");
  assert.throws(() => lazy.bytes, (e) => e instanceof UffdError && e.code === "EBADF");
  assert.equal(lazy.region.mapped, false);
  await lazy.close(); // harmless
});

Deno.test("a region closed before it is resident rejects ready", async () => {
  const lazy = await LazyRegion.open(new Uint8Array(8 * PAGE).fill(1));
  const ready = lazy.ready;
  await lazy.close();
  await assert.rejects(ready, (e) => e instanceof UffdError && /closed before every page/.test(e.message));
});

Deno.test({
  name: "prefetch into a memory that is several kernel mappings (it grew while watched) becomes ready, byte for byte",
  async fn() {
    // A WebAssembly.Memory that grew while registered keeps its grown part as a mapping of its own on some
    // kernels; madvise of part of it splits it on every kernel. The kernel places pages one mapping per call.
    const WASM_PAGE = 65536;
    const memory = new WebAssembly.Memory({ initial: 129, maximum: 200 });
    {
      using watch = WriteWatch.start(memory);
      memory.grow(1);
      watch.collect();
    }
    const address = libc.addressOf(memory.buffer);
    for (const at of [64, 129]) {
      assert.equal(libc.madvise(address + BigInt(at * WASM_PAGE), BigInt(WASM_PAGE), MADV_NOHUGEPAGE), 0);
    }
    assert.ok(mappedExtent(address, memory.buffer.byteLength) < memory.buffer.byteLength, "several mappings");
    const image = new Uint8Array(memory.buffer.byteLength);
    for (let p = 0; p < image.length / PAGE; p++) image[p * PAGE + 7] = (p % 251) + 1;
    const lazy = await LazyRegion.open(image, { target: memory, prefetch: true });
    try {
      const stats = await within(lazy.ready, 60_000, "ready");
      assert.equal(stats.resident, image.length / PAGE, "every page of every mapping restored");
    } finally {
      await lazy.close();
    }
    assert.deepEqual(new Uint8Array(memory.buffer), image);
  },
});

Deno.test("prefetch that loses its memory (unmapped under it) rejects ready with the pages left, never pends", async () => {
  using target = Region.map(4096 * PAGE);
  const lazy = await LazyRegion.open(new Uint8Array(target.length).fill(5), {
    target,
    prefetch: true,
    prefetchChunk: 1,
  });
  try {
    // The second half goes away while the prefetcher works through the first.
    assert.equal(libc.munmap(target.address + BigInt(2048 * PAGE), BigInt(2048 * PAGE)), 0);
    const error = await within(lazy.ready.then(() => undefined, (e) => e), 60_000, "ready to settle");
    if (error === undefined) return; // the prefetcher was through before the unmap: nothing was lost
    assert.ok(error instanceof UffdError, String(error));
    assert.match(
      error.message,
      /the prefetcher stopped with \d+ of 4096 pages not restored: page \d+ is no longer mapped/,
    );
  } finally {
    await lazy.close();
  }
});
