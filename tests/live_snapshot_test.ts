/**
 * LiveSnapshot on the real kernel: consistent copies while a Worker (or, in a
 * child process with a deadline, the main isolate) keeps writing; never-touched
 * pages with and without `WP_UNPOPULATED`; `MADV_DONTNEED` and `munmap` under a
 * snapshot; every sink kind; abort, failure and argument checks; and the kernel
 * ordering of REMOVE/UNMAP events that the design relies on.
 */

import assert from "node:assert/strict";
import {
  Checkpoint,
  CheckpointReader,
  Feature,
  isZeroFrame,
  kernelProfile,
  LiveSnapshot,
  LiveSnapshotError,
  MADV_DONTNEED,
  MADV_NOHUGEPAGE,
  MS_ASYNC,
  readPagemap,
  Region,
  UffdError,
  type UntouchedFill,
  Userfaultfd,
} from "../mod.ts";
import { overrideKernelProfile } from "../kernel/profile.ts";
import * as libc from "../ffi/_libc.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import { SyscallThread } from "./conformance/helpers.ts";
import { needs, scenarioResult, waitFor, within } from "./helpers.ts";
import { fillPattern, PATTERN, startGenerationWriter, until, wrongPages } from "./snapshot_patterns.ts";

const PAGE = Region.pageSize;
const WORDS = PAGE / 4;
const MiB = 1 << 20;
const SCENARIOS = new URL("./scenarios/live_snapshot.ts", import.meta.url);
const FEATURES = [Feature.PAGEFAULT_FLAG_WP, Feature.EVENT_REMOVE, Feature.EVENT_UNMAP, Feature.EVENT_REMAP];

// deno-lint-ignore no-explicit-any
type Json = any;

/** Runs one scenario in its own process with a deadline: its last line of output, as JSON. */
const scenario = (name: string, deadlineMs = 60_000): Promise<Json> => scenarioResult(SCENARIOS, name, { deadlineMs });

/** Open fds of this process whose target matches `pattern`. */
function openFds(pattern: RegExp): number {
  let n = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (pattern.test(Deno.readLinkSync(`/proc/self/fd/${entry.name}`))) n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

/** Open userfaultfds of this process. */
function userfaultfds(): number {
  return openFds(/^anon_inode:\[userfaultfd\]$/);
}

/**
 * Pages of `range` that still carry a write-protect bit (none once a snapshot has released the memory), from the
 * pagemap's uffd-wp bit (Linux 5.17+; every kernel with PAGEMAP_SCAN has it).
 */
function protectedPages(range: { address: bigint; length: number }): number {
  return readPagemap(range).filter((e) => e.uffdWp).length;
}

/**
 * The pages of `range` that are present, and those that hold memory of their own (present and not the shared zero
 * page), from `/proc/self/pagemap`: a PFN other than the zero page's where PFNs are visible, else mapped exclusively
 * (the zero page never is).
 */
function residency(range: { address: bigint; length: number }): { present: Set<number>; data: Set<number> } {
  const zeroPfn = kernelProfile().pagemap.pfnVisible ? kernelProfile().zeroPage.zeroPfn : null;
  const present = new Set<number>();
  const data = new Set<number>();
  readPagemap(range).forEach((e, p) => {
    if (!e.present) return;
    present.add(p);
    const zero = kernelProfile().zeroPage;
    if (
      zeroPfn === null
        ? e.exclusive
        : !isZeroFrame(e.pfn ?? -1n, zero, (kernelProfile().thp?.pmdSize ?? 2 << 20) / PAGE)
    ) {
      data.add(p);
    }
  });
  return { present, data };
}

/** A `SyscallThread` whose Worker has started (its first call loads and type-checks the module). */
async function warmSyscallThread(): Promise<SyscallThread> {
  const thread = new SyscallThread();
  using scratch = Region.map(PAGE);
  assert.equal(
    await within(
      thread.call({ op: "madvise", address: scratch.address, length: BigInt(PAGE), advice: 0 }),
      30_000,
      "the syscall Worker",
    ),
    0,
  );
  return thread;
}

/** The words the writer left that the memory no longer holds. */
function lostWrites(words: Uint32Array, expected: Map<number, number>): number {
  let lost = 0;
  for (const [word, value] of expected) if (words[word] !== value) lost++;
  return lost;
}

Deno.test({
  name:
    "256 MiB while a Worker overwrites random pages: the snapshot is the pre-snapshot image, the region the writer's",
  ignore: needs(...FEATURES),
  async fn() {
    const PAGES = 256 * MiB / PAGE;
    using mem = Region.map(PAGES * PAGE);
    const words = new Uint32Array(mem.bytes.buffer);
    fillPattern(words);
    const sink = new Uint8Array(mem.length); // a plain Uint8Array, written by the snapshot's Worker
    const writer = await startGenerationWriter(mem.address, PAGES);
    const before = userfaultfds();
    const snap = await LiveSnapshot.take(mem, { sink });
    writer.go();
    const result = await within(snap.done, 60_000, "the snapshot");
    const writes = await writer.stop();
    assert.deepEqual(wrongPages(new Uint32Array(sink.buffer)), [], "every page as it was when take() returned");
    assert.equal(lostWrites(words, writer.expected()), 0, "every write of the Worker landed");
    assert.ok(writes > 0 && result.byFault > 0, `the writer wrote during the snapshot (${writes} writes)`);
    assert.equal(result.savedPages, PAGES);
    assert.equal(result.byFault + result.byCopier, PAGES, "each page saved exactly once");
    assert.equal(result.faults, result.stallMicros.reduce((a, b) => a + b, 0), "every fault's stall is counted");
    assert.equal(userfaultfds(), before, "the userfaultfd is closed");
    assert.equal(protectedPages(mem), 0, "nothing left write-protected");
  },
});

Deno.test({
  name: "256 MiB while the main isolate itself writes (child process): same image, every write landed",
  ignore: needs(...FEATURES),
  async fn() {
    const r = await scenario("main-writer");
    assert.deepEqual(r.wrong, []);
    assert.equal(r.lost, 0);
    assert.equal(r.saved, r.pages);
    assert.ok(r.byFault > 0, "the main isolate's writes were served by faults");
  },
});

/** How never-touched pages get a PTE without WP_UNPOPULATED: every way this kernel does what its name says. */
function fills(): UntouchedFill[] {
  const z = kernelProfile().zeroPage;
  const all: UntouchedFill[] = [kernelProfile().untouchedFill];
  if (z.populateRead === "zero-page") all.push("populate-read");
  if (z.populateRead === "allocates") all.push("populate-allocates");
  if (z.uffdZeropage === "zero-page") all.push("uffd-zeropage");
  return [...new Set(all)].filter((f) => f !== "none");
}

/**
 * Each way of filling never-touched pages, with the page bits read the way the profile decides; and where that is
 * PAGEMAP_SCAN, once more (smaller) with them forced to come from `/proc/self/pagemap`, as on Linux before 6.7.
 */
const untouchedCases = [undefined, ...fills()].flatMap((fill) => [
  { fill, bits: kernelProfile().pageBits, mib: 256 },
  ...(kernelProfile().pageBits === "pagemap-scan" ? [{ fill, bits: "pagemap" as const, mib: 32 }] : []),
]);

for (const { fill, bits, mib } of untouchedCases) {
  const wpUnpopulated = fill === undefined;
  const forcedBits = bits !== kernelProfile().pageBits;
  Deno.test({
    name: `never-touched pages ${
      wpUnpopulated
        ? "with WP_UNPOPULATED"
        : `without it (${fill}${fill === kernelProfile().untouchedFill ? "" : ", forced"})`
    }${forcedBits ? ", page bits from /proc/self/pagemap (forced)" : ""}: zeros in the snapshot, ${
      fill === "populate-allocates" ? "the untouched pages read like data" : "still unpopulated where nobody wrote"
    }`,
    ignore: needs(...FEATURES, ...(wpUnpopulated ? [Feature.WP_UNPOPULATED] : [])),
    async fn() {
      const PAGES = mib * MiB / PAGE;
      using mem = Region.map(PAGES * PAGE);
      mem.advise(MADV_NOHUGEPAGE); // a huge page would populate the untouched half of its 2 MiB
      const words = new Uint32Array(mem.bytes.buffer);
      const touched = (page: number) => ((page >> 8) & 1) === 0; // every other MiB
      const filled = fillPattern(words, touched);
      using sink = Region.map(mem.length);
      sink.bytes.fill(0xee); // zeros must be written, not assumed
      const writer = await startGenerationWriter(mem.address, PAGES, 11);
      overrideKernelProfile({ ...(fill === undefined ? {} : { untouchedFill: fill }), pageBits: bits });
      let snap: LiveSnapshot;
      try {
        snap = await LiveSnapshot.take(mem, {
          sink: sink.bytes,
          decline: wpUnpopulated ? [] : [Feature.WP_UNPOPULATED],
        });
      } finally {
        overrideKernelProfile(undefined);
      }
      writer.go();
      const result = await within(snap.done, 60_000, "the snapshot");
      await writer.stop();
      assert.equal(result.wpUnpopulated, wpUnpopulated);
      const allocated = fill === "populate-allocates";
      assert.equal(result.untouched, wpUnpopulated ? "unpopulated" : allocated ? "allocated" : "zero-page");
      assert.deepEqual(wrongPages(new Uint32Array(sink.bytes.buffer), (p) => !touched(p)), []);
      assert.equal(lostWrites(words, writer.expected()), 0);
      if (allocated) {
        // Where nothing maps the zero page, each untouched page got one of its own: read like data.
        assert.equal(result.zeroPages, 0, "allocated pages cannot be told from data without a read");
        assert.equal(result.bytesRead, PAGES * PAGE);
        return;
      }
      assert.equal(result.zeroPages, PAGES - filled, "the untouched pages were saved as zeros, without a read");
      assert.equal(result.bytesRead, filled * PAGE, "only the pages holding data were read");
      // Pages nobody wrote: never populated (WP_UNPOPULATED), or only mapped to the shared zero page.
      const wrote = writer.touched();
      const { present, data: holdingData } = residency(mem);
      let populatedUntouched = 0;
      let dataUntouched = 0;
      for (let p = 0; p < PAGES; p++) {
        if (touched(p) || wrote.has(p)) continue;
        if (present.has(p)) populatedUntouched++;
        if (holdingData.has(p)) dataUntouched++;
      }
      assert.equal(dataUntouched, 0, "no page nobody wrote holds memory");
      if (wpUnpopulated) assert.equal(populatedUntouched, 0, "no page nobody wrote is even mapped");
      else assert.ok(populatedUntouched > 0, "the workaround maps the zero page (PFNZERO) there");
    },
  });
}

for (const holdChanges of [true, false]) {
  Deno.test({
    name:
      `MADV_DONTNEED on part of the target during the snapshot (holdChanges: ${holdChanges}): right, or a clear failure`,
    ignore: needs(...FEATURES),
    async fn() {
      const PAGES = 64 * MiB / PAGE;
      using thread = await warmSyscallThread();
      using mem = Region.map(PAGES * PAGE);
      const words = new Uint32Array(mem.bytes.buffer);
      fillPattern(words);
      const image = new Uint32Array(PAGES * WORDS);
      const dropped = { first: PAGES / 2, pages: PAGES / 4 };
      const madvise = Promise.withResolvers<number>();
      // The consumer stops at page 100 until the madvise has returned: the copier, which waits
      // for the consumer after 512 staged pages, has not reached the dropped pages by then.
      const snap = await LiveSnapshot.take(mem, {
        sink: async (page, bytes) => {
          image.set(new Uint32Array(bytes.buffer, bytes.byteOffset, WORDS), page * WORDS);
          if (page === 100) await madvise.promise;
        },
        stagingPages: 512,
        holdChanges,
      });
      thread.call({
        op: "madvise",
        address: mem.pageAddress(dropped.first),
        length: BigInt(dropped.pages * PAGE),
        advice: MADV_DONTNEED,
      }).then(madvise.resolve);
      assert.equal(await within(madvise.promise, 30_000, "the madvise"), 0);
      const outcome = await within(snap.done.then(() => "right", (e) => e), 60_000, "the snapshot");
      const progress = snap.progress;
      if (outcome === "right") {
        assert.deepEqual(wrongPages(image), [], "the old content of the dropped pages was saved first");
        assert.ok(
          progress.heldChanges >= 1 || progress.rescuedPages > 0,
          "saved before the zap: held, or rescued and checked intact",
        );
      } else {
        assert.ok(outcome instanceof LiveSnapshotError, String(outcome));
        assert.match(outcome.message, /dropped \(MADV_DONTNEED or similar\) before the snapshot saved them/);
      }
      assert.equal(progress.removes, 1);
      assert.equal(words[dropped.first * WORDS], 0, "the madvise took effect");
      assert.equal(words[0], PATTERN, "the rest of the memory is untouched");
      console.log(
        `  outcome: ${outcome === "right" ? "right" : "failed clearly"}; held ${progress.heldChanges}, ` +
          `rescued ${progress.rescuedPages} pages`,
      );
    },
  });
}

Deno.test({
  name: "the main isolate drops part of the target itself (child process): its madvise waits, the snapshot is right",
  ignore: needs(...FEATURES),
  async fn() {
    const r = await scenario("main-dontneed");
    assert.ok(r.outcome === "right" || r.outcome === "failed clearly", r.message);
    if (r.outcome === "right") assert.deepEqual(r.wrong, []);
    assert.equal(r.droppedReadsZero, true);
    assert.equal(r.keptIntact, true);
    assert.equal(r.removes, 1);
  },
});

Deno.test({
  name: "munmap of part of the target during the snapshot: a clear failure naming the pages, never a crash",
  ignore: needs(...FEATURES),
  async fn() {
    const PAGES = 64 * MiB / PAGE;
    using thread = await warmSyscallThread();
    using mem = Region.map(PAGES * PAGE);
    fillPattern(new Uint32Array(mem.bytes.buffer));
    const munmap = Promise.withResolvers<number>();
    const snap = await LiveSnapshot.take(mem, {
      sink: async (page) => {
        if (page === 100) await munmap.promise;
      },
      stagingPages: 512,
    });
    thread.call({ op: "munmap", address: mem.pageAddress(PAGES - 1024), length: BigInt(1024 * PAGE) })
      .then(munmap.resolve);
    assert.equal(await within(munmap.promise, 30_000, "the munmap"), 0);
    const error = await within(snap.done.then(() => undefined, (e) => e), 60_000, "the snapshot");
    assert.ok(error instanceof LiveSnapshotError, `the snapshot must fail, not succeed: ${error}`);
    assert.match(error.message, /unmapped/);
    assert.equal(libc.msync(mem.pageAddress(PAGES - 1024), BigInt(PAGE), MS_ASYNC), -12, "the pages are gone");
    assert.equal(mem.bytes[0], PATTERN & 0xff, "the rest is still there");
  },
});

Deno.test({
  name: "a sink freed under the snapshot: a clear failure (EFAULT, not SIGSEGV), the memory released",
  ignore: needs(...FEATURES),
  async fn() {
    using mem = Region.map(256 * MiB, { populate: true });
    const sink = Region.map(mem.length); // unmapped below, while the copier writes into it
    const before = userfaultfds();
    const snap = await LiveSnapshot.take(mem, { sink: sink.bytes });
    sink.unmap();
    const outcome = await within(snap.done.then(() => "complete", (e) => e), 60_000, "the snapshot");
    if (outcome !== "complete") {
      assert.ok(outcome instanceof LiveSnapshotError, String(outcome));
      assert.match(outcome.message, /could not be copied/);
    }
    assert.equal(protectedPages(mem), 0);
    assert.equal(userfaultfds(), before);
    console.log(`  outcome: ${outcome === "complete" ? "complete before the unmap" : "failed clearly"}`);
  },
});

Deno.test({
  name: "checkpoint-file sink of an ArrayBuffer under a writer: Checkpoint.restore and CheckpointReader give the image",
  ignore: needs(...FEATURES),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "uffd-snapshot-" });
    try {
      const buffer = new ArrayBuffer(64 * MiB); // starts 16 bytes into a page
      const words = new Uint32Array(buffer);
      const pages = buffer.byteLength / PAGE;
      fillPattern(words, (p) => p % 3 !== 1);
      const writer = await startGenerationWriter(libc.addressOf(buffer), pages - 1, 3);
      const path = `${dir}/base.ckpt`;
      const snap = await LiveSnapshot.take(buffer, { sink: path });
      assert.equal(snap.head, 16);
      writer.go();
      const result = await within(snap.done, 60_000, "the snapshot");
      await writer.stop();
      assert.equal(lostWrites(words, writer.expected()), 0);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["base.ckpt"], "no temporary file left");
      assert.equal(result.file?.path, path);
      using reader = CheckpointReader.open([path]);
      assert.equal(reader.imageLength, buffer.byteLength);
      assert.equal(reader.head, 16);
      reader.verify();
      const copy = new ArrayBuffer(buffer.byteLength);
      Checkpoint.restore(copy, [path]);
      assert.deepEqual(wrongPages(new Uint32Array(copy), (p) => p % 3 === 1), []);
      // readPage(i) is the span's page i: its first 16 bytes are outside the image (stored as zeros).
      const page3 = new Uint32Array(reader.readPage(3).slice().buffer);
      assert.equal(page3[0], (PATTERN + 2) >>> 0, "the first 16 bytes of span page 3 are the end of image page 2");
      assert.equal(page3[4], (PATTERN + 3) >>> 0);
      assert.equal(new Uint32Array(reader.readPage(0).slice().buffer)[0], 0, "bytes before the image are zeros");
      assert.equal(result.file!.dataPages, reader.files[0]!.dataPages);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "callback sink of a WebAssembly.Memory under a writer: each page once, on the main thread, equal to the image",
  ignore: needs(...FEATURES),
  async fn() {
    const memory = new WebAssembly.Memory({ initial: 256 }); // 16 MiB
    const pages = memory.buffer.byteLength / PAGE;
    const words = new Uint32Array(memory.buffer);
    fillPattern(words, (p) => p < pages - 512); // the last 2 MiB never touched
    const writer = await startGenerationWriter(libc.addressOf(memory.buffer), pages, 5);
    const readyZero = pages - residency({ address: libc.addressOf(memory.buffer), length: pages * PAGE }).data.size;
    assert.ok(readyZero > 0 && readyZero <= 512, `${readyZero} pages hold no data before the snapshot`);
    const calls = new Uint8Array(pages);
    const image = new Uint32Array(pages * WORDS);
    let maxQueued = 0;
    const taken: { snap?: LiveSnapshot } = {};
    const snap = taken.snap = await LiveSnapshot.take(memory, {
      sink: async (page, bytes) => {
        calls[page]++;
        assert.equal(bytes.byteLength, PAGE);
        image.set(new Uint32Array(bytes.buffer, bytes.byteOffset, WORDS), page * WORDS);
        const saved = taken.snap?.progress.savedPages ?? 0;
        maxQueued = Math.max(maxQueued, saved - calls.reduce((a, b) => a + b, 0));
        if (page % 256 === 0) await new Promise((r) => setTimeout(r, 0)); // an async consumer now and then
      },
      stagingPages: 64,
    });
    writer.go();
    const result = await within(snap.done, 60_000, "the snapshot");
    await writer.stop();
    assert.ok(calls.every((c) => c === 1), "every page delivered exactly once");
    assert.deepEqual(wrongPages(image, (p) => p >= pages - 512), []);
    assert.equal(lostWrites(words, writer.expected()), 0);
    // The pages holding no data just before the snapshot (read from the pagemap) are its zero pages: the 512 never
    // written, unless the kernel filled some of them first (a huge page under THP `always`, Debian's default).
    assert.equal(result.zeroPages, readyZero, `zero pages of ${JSON.stringify(result)}`);
    assert.ok(maxQueued <= 64 + 64 + result.byFault, `the copier waited for the consumer (${maxQueued} queued)`);
  },
});

Deno.test({
  name: "progress is observable while it runs: pages saved grow, by fault + by copier add up, bytes per second",
  ignore: needs(...FEATURES),
  async fn() {
    using mem = Region.map(32 * MiB);
    fillPattern(new Uint32Array(mem.bytes.buffer));
    let release: (() => void) | undefined;
    const gate = new Promise<void>((r) => release = r);
    const snap = await LiveSnapshot.take(mem, {
      sink: async (page) => {
        if (page === 100) await gate; // the consumer stalls: the copier fills its staging, then waits
      },
      stagingPages: 256,
    });
    await until(() => snap.progress.savedPages >= 256, 10_000, "the copier to fill the staging");
    const mid = snap.progress;
    assert.ok(mid.savedPages < mid.pages, `stalled part way (${mid.savedPages} of ${mid.pages})`);
    assert.equal(mid.byFault + mid.byCopier, mid.savedPages);
    assert.ok(mid.elapsedMs > 0 && mid.bytesPerSecond > 0);
    release!();
    const result = await within(snap.done, 30_000, "the snapshot");
    assert.equal(result.savedPages, result.pages);
    assert.ok(result.bytesPerSecond > 0 && result.elapsedMs >= mid.elapsedMs);
  },
});

Deno.test({
  name: "abort() and await using: done rejects with the reason, the memory is released, no fd or file left",
  ignore: needs(...FEATURES),
  async fn(t) {
    await t.step("abort()", async () => {
      using mem = Region.map(32 * MiB, { populate: true });
      const before = userfaultfds();
      const snap = await LiveSnapshot.take(mem, { sink: () => new Promise((r) => setTimeout(r, 1)) });
      const reason = new Error("changed my mind");
      snap.abort(reason);
      const error = await within(snap.done.then(() => undefined, (e) => e), 10_000, "done after abort()");
      assert.ok(error instanceof LiveSnapshotError);
      assert.equal(error.cause, reason);
      assert.equal(userfaultfds(), before);
      assert.equal(protectedPages(mem), 0);
      snap.abort(); // harmless afterwards
    });
    await t.step("an AbortSignal", async () => {
      using mem = Region.map(32 * MiB, { populate: true });
      const controller = new AbortController();
      const snap = await LiveSnapshot.take(mem, {
        sink: () => new Promise((r) => setTimeout(r, 1)),
        signal: controller.signal,
      });
      controller.abort();
      const error = await within(snap.done.then(() => undefined, (e) => e), 10_000, "done after the signal");
      assert.ok(error instanceof LiveSnapshotError);
      assert.equal((error.cause as DOMException).name, "AbortError");
    });
    await t.step("await using, and a file sink's temporary file", async () => {
      const dir = await Deno.makeTempDir({ prefix: "uffd-snapshot-" });
      using mem = Region.map(32 * MiB, { populate: true });
      const before = userfaultfds();
      let snap: LiveSnapshot;
      {
        await using s = await LiveSnapshot.take(mem, { sink: `${dir}/never.ckpt`, chunkPages: 1 });
        snap = s;
      }
      const settled = await snap.done.then(() => "complete", (e) => e);
      if (settled !== "complete") assert.ok(settled instanceof LiveSnapshotError);
      const left = [...Deno.readDirSync(dir)].map((e) => e.name);
      assert.deepEqual(left, settled === "complete" ? ["never.ckpt"] : [], "no partial file");
      assert.equal(userfaultfds(), before);
      await Deno.remove(dir, { recursive: true });
    });
  },
});

Deno.test({
  name: "twelve snapshots of every kind, ending every way, leave no userfaultfd, eventfd or pagemap fd open",
  ignore: needs(...FEATURES),
  async fn() {
    using mem = Region.map(2 * MiB, { populate: true });
    const dir = await Deno.makeTempDir({ prefix: "uffd-snapshot-" });
    // Each Deno Worker's event loop holds an eventfd and an epoll fd, which it may still be closing
    // just after the Worker ended: an eventfd without its epoll is one of ours (a handler's stop fd).
    const ours = () =>
      openFds(/^anon_inode:\[userfaultfd\]$|^\/proc\/\d+\/pagemap$/) +
      openFds(/^anon_inode:\[eventfd\]$/) - openFds(/^anon_inode:\[eventpoll\]$/);
    const round = async (i: number) => {
      await (await LiveSnapshot.take(mem, { sink: new Uint8Array(mem.length) })).done;
      await (await LiveSnapshot.take(mem, { sink: `${dir}/${i}.ckpt` })).done;
      await (await LiveSnapshot.take(mem, { sink: () => {} })).done;
      const aborted = await LiveSnapshot.take(mem, { sink: () => new Promise((r) => setTimeout(r, 1)) });
      aborted.abort();
      await aborted.done.catch(() => {});
    };
    await round(0); // the first one loads what stays loaded
    const before = ours();
    for (let i = 1; i <= 3; i++) await round(i);
    // A leak of one fd per snapshot would leave nine more; a Worker still closing is given a moment.
    await waitFor(() => ours() === before, 30_000, `our fds back to ${before}`).catch((e) => {
      const open: string[] = [];
      for (const entry of Deno.readDirSync("/proc/self/fd")) {
        try {
          open.push(Deno.readLinkSync(`/proc/self/fd/${entry.name}`));
        } catch { /* closed meanwhile */ }
      }
      throw new Error(`${e.message}; open: ${open.sort().join(", ")}`);
    });
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "a callback that throws fails the snapshot with its error as the cause; the memory is released",
  ignore: needs(...FEATURES),
  async fn() {
    using mem = Region.map(8 * MiB, { populate: true });
    const snap = await LiveSnapshot.take(mem, {
      sink: (page) => {
        if (page === 300) throw new Error("consumer broke at 300");
      },
    });
    const error = await within(snap.done.then(() => undefined, (e) => e), 10_000, "done");
    assert.ok(error instanceof LiveSnapshotError);
    assert.equal((error.cause as Error).message, "consumer broke at 300");
    assert.equal(protectedPages(mem), 0);
  },
});

Deno.test({
  name: "LiveSnapshot.take refuses what it cannot snapshot, before protecting anything",
  ignore: needs(...FEATURES),
  async fn(t) {
    using mem = Region.map(16 * PAGE);
    const before = userfaultfds();
    const refused = async (target: unknown, options: unknown, check: (e: unknown) => boolean) => {
      await assert.rejects(LiveSnapshot.take(target as never, options as never), check);
    };
    await t.step("wrong types", async () => {
      await refused({}, { sink: new Uint8Array(1) }, (e) => e instanceof TypeError);
      await refused(mem, { sink: 42 }, (e) => e instanceof TypeError);
      await refused(mem, null, (e) => e instanceof TypeError);
      await refused(mem, { sink: new Uint8Array(mem.length), chunkPages: "4" }, (e) => e instanceof TypeError);
    });
    await t.step("bad values", async () => {
      await refused(new ArrayBuffer(0), { sink: new Uint8Array(0) }, (e) => e instanceof UffdError);
      await refused(
        mem,
        { sink: new Uint8Array(mem.length - 1) },
        (e) => e instanceof UffdError && /length/.test(e.message),
      );
      await refused(mem, { sink: mem.bytes }, (e) => e instanceof UffdError && /overlaps/.test(e.message));
      await refused(mem, { sink: new URL("https://example.com/x") }, (e) => e instanceof UffdError);
      await refused(mem, { sink: new Uint8Array(mem.length), chunkPages: 0 }, (e) => e instanceof UffdError);
    });
    await t.step("a small ArrayBuffer from the malloc heap", async () => {
      const small = new ArrayBuffer(3 * PAGE);
      await refused(
        small,
        { sink: new Uint8Array(small.byteLength) },
        (e) => e instanceof UffdError && /shares its first or last page/.test(e.message),
      );
    });
    await t.step("shared memory", async () => {
      using shm = Region.map(4 * PAGE, { memfd: true });
      await refused(
        shm,
        { sink: new Uint8Array(shm.length) },
        (e) => e instanceof UffdError && e.code === "EOPNOTSUPP",
      );
    });
    await t.step("a file sink that cannot be created: rejected, nothing left protected", async () => {
      using data = Region.map(64 * PAGE, { populate: true });
      await assert.rejects(
        LiveSnapshot.take(data, { sink: "/nonexistent-dir/uffd/snap.ckpt" }),
        (e) =>
          e instanceof LiveSnapshotError &&
          /No such file|NotFound|ENOENT/i.test(String((e.cause as Error)?.message ?? e.message)),
      );
      assert.equal(protectedPages(data), 0);
    });
    assert.equal(userfaultfds(), before, "no userfaultfd left open");
  },
});

Deno.test({
  name: "kernel: EVENT_REMOVE comes before the zap and holds the madvise until read; EVENT_UNMAP comes after the unmap",
  ignore: needs(...FEATURES),
  async fn() {
    using thread = new SyscallThread();
    using mem = Region.map(8 * PAGE, { populate: true });
    using mine = Region.map(PAGE); // never registered: the probe's page
    mem.bytes.fill(9);
    using uffd = Userfaultfd.open({ require: FEATURES, writers: "other-threads" }); // the writes are a Worker's
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    const probe = () => resolve.writeprotect(uffd.fd, Number(mine.address), PAGE, 0);
    assert.equal(probe(), -ERRNO_ENOENT, "idle: the probe's page is not registered");
    // MADV_DONTNEED: queued before the zap; the madvise waits for the read.
    let returned = false;
    const removal = thread.call({
      op: "madvise",
      address: mem.pageAddress(1),
      length: 2n * BigInt(PAGE),
      advice: MADV_DONTNEED,
    })
      .then((rc) => (returned = true, rc));
    await until(() => probe() === -ERRNO_EAGAIN, 10_000, "the removal to be in flight");
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(returned, false, "the madvise waits until its event is read");
    assert.equal(mem.bytes[PAGE], 9, "the pages are intact while the event is unread");
    assert.deepEqual(readPagemap(mem.pages(1, 2)).map((e) => e.present), [true, true]);
    const events = uffd.readEvents();
    assert.deepEqual(events, [{ type: "remove", start: mem.pageAddress(1), end: mem.pageAddress(3) }]);
    assert.equal(await within(removal, 30_000, "the madvise after the read"), 0);
    assert.equal(mem.bytes[PAGE], 0, "zapped after the read");
    // munmap: the range is already gone when the event is queued.
    const unmap = thread.call({ op: "munmap", address: mem.pageAddress(6), length: BigInt(PAGE) });
    await until(() => probe() === -ERRNO_EAGAIN, 10_000, "the unmap to be in flight");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(libc.msync(mem.pageAddress(6), BigInt(PAGE), MS_ASYNC), -12, "unmapped before its event is read");
    assert.deepEqual(uffd.readEvents(), [{ type: "unmap", start: mem.pageAddress(6), end: mem.pageAddress(7) }]);
    assert.equal(await within(unmap, 30_000, "the munmap after the read"), 0);
    await until(() => probe() === -ERRNO_ENOENT, 30_000, "the probe to be clean again");
  },
});

const ERRNO_EAGAIN = 11;
const ERRNO_ENOENT = 2;

Deno.test({
  name: "main-thread callback while the main isolate writes (child process): pages wait in staging, then come once",
  ignore: needs(...FEATURES),
  async fn() {
    const r = await scenario("main-writer-callback");
    assert.deepEqual(r.wrong, []);
    assert.equal(r.once, true);
    assert.equal(r.deliveredWhileWriting, 0, "nothing is delivered while the main isolate is busy writing");
    assert.ok(r.byFault > 0);
  },
});
