/**
 * LazyRegion scenarios in which the main isolate touches missing memory — a
 * broken handler would block it for good, and a poisoned page kills it — run one
 * per process by `tests/lazy_region_test.ts`, which kills the process at its
 * deadline. `deno run --allow-all tests/scenarios/lazy_region.ts <name>` prints
 * one JSON line of observations and ends by itself (never `Deno.exit`).
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Checkpoint,
  CheckpointReader,
  type Feature,
  LazyRegion,
  type LazySource,
  readMaps,
  Region,
  UffdError,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { anonInodes, pagesIn, within } from "../helpers.ts";
import { fillPattern, patternWord } from "../sources/pattern.ts";

const PAGE = Region.pageSize;
const PAGES_64M = (64 << 20) / PAGE;
const PATTERN = new URL("../sources/pattern.ts", import.meta.url).href;
/** Features every LazyRegion of this run declines (`UFFD_LAZY_DECLINE=POISON`: the fallback, on any kernel). */
const DECLINE = (Deno.env.get("UFFD_LAZY_DECLINE") ?? "").split(",").filter((f) => f !== "") as Feature[];

/** `LazyRegion.open`, declining what the run declines. */
function openLazy(...[source, options]: Parameters<typeof LazyRegion.open>): ReturnType<typeof LazyRegion.open> {
  return LazyRegion.open(source, { ...options, decline: [...DECLINE, ...(options?.decline ?? [])] });
}
type Observations = Record<string, unknown>;

/** A deterministic pseudo-random sequence of `count` page numbers below `total` (with repeats). */
function randomPages(total: number, count: number, seed = 4242): number[] {
  let s = seed >>> 0;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s >>> 8) % total;
  });
}

/** Pages of `range` in the categories `require`, from the pagemap (any kernel). */
const scanned = pagesIn;

/** Worker threads of this process (Deno names them `worker-N`; its own helper threads come and go). */
function threads(): number {
  let workers = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    try {
      if (Deno.readTextFileSync(`/proc/self/task/${task.name}/comm`).startsWith("worker-")) workers++;
    } catch { /* ended meanwhile */ }
  }
  return workers;
}

/**
 * A 64 MiB checkpoint chain: a base of the pattern in which every 7th page is
 * zero (left out of the base), then a delta that rewrites every 97th page, zeroes
 * every 101st and writes into some of the zero pages. Returns the paths, the image
 * the chain restores to, and which pages are zero in it.
 */
function buildChain(dir: string, pages = PAGES_64M, corrupt?: number): {
  paths: string[];
  image: Uint8Array;
  zero: Set<number>;
} {
  using mem = Region.map(pages * PAGE);
  using ckpt = Checkpoint.start(mem);
  const bytes = mem.bytes;
  for (let p = 0; p < pages; p++) {
    if (p % 7 !== 3) fillPattern(bytes.subarray(p * PAGE, (p + 1) * PAGE), p);
  }
  ckpt.write(`${dir}/base`);
  for (let p = 0; p < pages; p++) {
    if (p % 97 === 5) fillPattern(bytes.subarray(p * PAGE, (p + 1) * PAGE), p, 0x77);
    else if (p % 101 === 10) bytes.fill(0, p * PAGE, (p + 1) * PAGE);
    else if (p % 7 === 3 && p % 5 === 0) bytes[p * PAGE + 99] = 99;
  }
  ckpt.write(`${dir}/delta-1`);
  const image = bytes.slice();
  const zero = new Set<number>();
  for (let p = 0; p < pages; p++) {
    if (image.subarray(p * PAGE, (p + 1) * PAGE).every((b) => b === 0)) zero.add(p);
  }
  if (corrupt !== undefined) {
    // Flip a byte of page `corrupt`'s newest slot, where the reader finds it.
    using reader = CheckpointReader.open(ckpt.files);
    const source = reader.source(corrupt)!;
    const path = ckpt.files[source.file]!;
    const file = Deno.openSync(path, { read: true, write: true });
    const one = new Uint8Array(1);
    file.seekSync(source.offset + 123, Deno.SeekMode.Start);
    file.readSync(one);
    one[0]! ^= 0xff;
    file.seekSync(source.offset + 123, Deno.SeekMode.Start);
    file.writeSync(one);
    file.close();
  }
  return { paths: [...ckpt.files], image, zero };
}

/** Compares pages of the lazy region (read through `bytes`) with the image; returns the pages that differ. */
function differing(lazy: LazyRegion, image: Uint8Array, pages: Iterable<number>): number[] {
  const bytes = lazy.bytes;
  const bad: number[] = [];
  const got = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  const want = new Int32Array(image.buffer, image.byteOffset, image.byteLength >>> 2);
  for (const p of pages) {
    for (let k = p * 1024, end = k + 1024; k < end; k++) {
      if (got[k] !== want[k]) {
        bad.push(p);
        break;
      }
    }
  }
  return bad;
}

function allPages(n: number, except = -1): number[] {
  return Array.from({ length: n }, (_, i) => i).filter((p) => p !== except);
}

/**
 * Makes what the first Worker and the first off-thread call create for good (the
 * runtime's own descriptors, a blocking-pool thread), so that what is counted
 * afterwards is what a lazy region leaves.
 */
async function warmUp(): Promise<void> {
  for (const prefetch of [false, true]) {
    const lazy = await openLazy({ module: PATTERN }, { length: 4 * PAGE, prefetch });
    await libc.memcpyOffThread(libc.addressOf(new Uint8Array(8)), lazy.region.address, 8n);
    await lazy.close();
  }
  await new Promise((r) => setTimeout(r, 300));
}

const scenarios: Record<string, () => Promise<Observations>> = {
  /** Random reads by the main isolate over a 64 MiB chain, no prefetch; then a page dropped and read again. */
  async "checkpoint-random"() {
    const dir = Deno.makeTempDirSync();
    try {
      const { paths, image, zero } = buildChain(dir);
      await using lazy = await openLazy({ checkpoint: paths });
      // /proc/self/mem does not wait for userfaultfd handlers: a missing page is EIO, and nothing is served.
      const mem = libc.open("/proc/self/mem", 0);
      const procMem = libc.pread(mem, new Uint8Array(8), 8, lazy.region.address + BigInt(PAGE));
      libc.close(mem);
      const faultsAfterProcMem = lazy.stats.faults;
      const touched = new Set<number>();
      const bytes = lazy.bytes;
      let mismatches = 0;
      for (const p of randomPages(PAGES_64M, 3000)) {
        const at = p * PAGE + ((p * 37) % PAGE);
        if (bytes[at] !== image[at]) mismatches++;
        touched.add(p);
      }
      const wholePages = differing(lazy, image, touched);
      const stats = lazy.stats;
      const zeroTouched = [...touched].filter((p) => zero.has(p)).length;
      const present = scanned(lazy.region, "PRESENT");
      const pfnZero = scanned(lazy.region, "PFNZERO");
      // A page dropped by the program reads back as zeros and is not read from the chain again.
      const dropped = [...touched].find((p) => !zero.has(p))!;
      lazy.region.zap(lazy.region.pages(dropped, 1));
      const afterDrop = bytes.subarray(dropped * PAGE, (dropped + 1) * PAGE).every((b) => b === 0);
      return {
        mismatches,
        wholePages,
        touched: touched.size,
        zeroTouched,
        faults: stats.faults,
        zeroPages: stats.zeroPages,
        bytesRead: stats.bytesRead,
        present,
        pfnZero,
        afterDrop,
        refaults: lazy.stats.refaults,
        bytesReadAfterDrop: lazy.stats.bytesRead,
        procMem,
        faultsAfterProcMem,
        state: lazy.state,
      };
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** The same chain with prefetch: reads while it runs, then fully resident and `ready`. */
  async "checkpoint-prefetch"() {
    const dir = Deno.makeTempDirSync();
    try {
      const { paths, image, zero } = buildChain(dir);
      const t0 = performance.now();
      await using lazy = await openLazy({ checkpoint: paths }, { prefetch: true });
      const bytes = lazy.bytes;
      let mismatches = 0;
      for (const p of randomPages(PAGES_64M, 300, 99)) {
        const at = p * PAGE + 4000;
        if (bytes[at] !== image[at]) mismatches++;
      }
      const stats = await within(lazy.ready, 60_000, "ready");
      const readyMs = performance.now() - t0;
      return {
        mismatches,
        readyMs,
        pages: lazy.pages,
        resident: stats.resident,
        faultsPlusPrefetched: stats.faults + stats.prefetched,
        zeroPages: stats.zeroPages,
        chainZeroPages: zero.size,
        present: scanned(lazy.region, "PRESENT"),
        pfnZero: scanned(lazy.region, "PFNZERO"),
        wholeImage: differing(lazy, image, allPages(lazy.pages)).length,
        state: lazy.state,
        prefetchRuns: lazy.stats.handler.faults <= PAGES_64M,
      };
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** One corrupted slot: read() throws EIO naming it, a system call gets EFAULT, every other page is right. */
  async "checkpoint-corrupt"() {
    const dir = Deno.makeTempDirSync();
    const BAD = 5 + 97 * 40; // a page the delta rewrote: its newest copy is in the delta
    try {
      const { paths, image } = buildChain(dir, PAGES_64M, BAD);
      const out: Observations = {};
      {
        // Without prefetch: the reader meets the bad page through read().
        await using lazy = await openLazy({ checkpoint: paths });
        out.before = lazy.read(BAD * PAGE - 8, 8).every((b, i) => b === image[BAD * PAGE - 8 + i]);
        try {
          lazy.read(BAD * PAGE - 8, 16);
          out.readError = "none";
        } catch (e) {
          out.readError = e instanceof UffdError ? `${e.code}: ${e.message}` : String(e);
        }
        out.readAgain = (() => {
          try {
            lazy.read(BAD * PAGE + 100, 1);
            return "none";
          } catch (e) {
            return (e as UffdError).code;
          }
        })();
        // write(2) from the poisoned page: the kernel reads it for us and fails.
        const fd = libc.memfdCreate("lazy-probe", 1);
        out.writeSyscall = libc.write(fd, new Uint8Array(libc.bufferAt(lazy.region.address + BigInt(BAD * PAGE), 64)));
        libc.close(fd);
        out.poisonedNoPrefetch = lazy.poisoned();
      }
      {
        await using lazy = await openLazy({ checkpoint: paths }, { prefetch: true });
        const stats = await within(lazy.ready, 60_000, "ready");
        out.poisoned = lazy.poisoned();
        out.poisonedCount = stats.poisoned;
        out.resident = stats.resident;
        out.pages = lazy.pages;
        out.othersWrong = differing(lazy, image, allPages(lazy.pages, BAD)).length;
        out.wholeRead = (() => {
          try {
            lazy.read(0, lazy.length);
            return "none";
          } catch (e) {
            return (e as UffdError).code;
          }
        })();
      }
      return out;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** JavaScript touching a poisoned page: the process dies of SIGBUS (the test expects it). */
  async "poison-touch"() {
    const module = { module: PATTERN, options: { failAt: [3] } };
    const lazy = await openLazy(module, { length: 8 * PAGE });
    const bytes = lazy.bytes;
    console.log(`page 2: ${bytes[2 * PAGE] === (patternWord(2, 0) & 0xff)}`);
    console.log("touching the poisoned page");
    const value = bytes[3 * PAGE];
    console.log(`survived: ${value}`);
    await lazy.close();
    return {};
  },

  /** Each kind of source, read by the main isolate; every page compared. */
  async sources() {
    const PAGES = 64;
    const expected = new Uint8Array(PAGES * PAGE);
    fillPattern(expected, 0);
    const out: Observations = {};
    const check = async (name: string, source: LazySource, length?: number, image = expected) => {
      await using lazy = await openLazy(source, length === undefined ? {} : { length });
      const wrong = differing(lazy, image, randomPages(lazy.pages, 200, 7));
      const all = differing(lazy, image, allPages(lazy.pages));
      out[name] = { pages: lazy.pages, wrong: wrong.length + all.length, faults: lazy.stats.faults, kind: lazy.source };
    };
    const dir = Deno.makeTempDirSync();
    try {
      // A file of 10 pages and 100 bytes: the last page is the 100 bytes, then zeros.
      const fileBytes = expected.slice(0, 10 * PAGE + 100);
      Deno.writeFileSync(`${dir}/image`, fileBytes);
      const fileImage = new Uint8Array(11 * PAGE);
      fileImage.set(fileBytes);
      await check("file", { file: `${dir}/image` }, undefined, fileImage);
      await check("fileUrl", { file: new URL(`file://${dir}/image`) }, undefined, fileImage);
      // Longer than the file: zeros past its end.
      const longer = new Uint8Array(16 * PAGE);
      longer.set(fileBytes);
      await check("filePastEnd", { file: `${dir}/image` }, 16 * PAGE, longer);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
    // Bytes: copied once unless shared — a later change is seen only through shared bytes.
    const plain = expected.slice();
    const lazyPlain = await openLazy(plain);
    plain.fill(0xee, 0, PAGE);
    out.plainCopied = lazyPlain.bytes[0] === expected[0];
    out.plainWrong = differing(lazyPlain, expected, allPages(PAGES)).length;
    await lazyPlain.close();
    const shared = new Uint8Array(new SharedArrayBuffer(PAGES * PAGE));
    shared.set(expected);
    const lazyShared = await openLazy(shared);
    shared.fill(0xee, 0, PAGE);
    out.sharedSeen = lazyShared.bytes[0] === 0xee;
    out.sharedBytesRead = lazyShared.stats.bytesRead;
    await lazyShared.close();
    {
      using mem = Region.map(PAGES * PAGE);
      mem.bytes.set(expected);
      await check("memory", mem);
    }
    await check("module", { module: PATTERN }, PAGES * PAGE);
    await check("moduleAsync", { module: PATTERN, options: { async: true } }, PAGES * PAGE);
    {
      // A module with prefetch: its async function runs in the prefetcher too.
      await using lazy = await openLazy({ module: PATTERN, options: { async: true } }, {
        length: PAGES * PAGE,
        prefetch: true,
      });
      const stats = await within(lazy.ready, 20_000, "ready");
      out.modulePrefetch = { resident: stats.resident, wrong: differing(lazy, expected, allPages(PAGES)).length };
    }
    // Known-zero pages of a bytes source: zero pages, one UFFDIO_ZEROPAGE each.
    const sparse = new Uint8Array(PAGES * PAGE);
    sparse.fill(1, 5 * PAGE, 6 * PAGE);
    {
      await using lazy = await openLazy(sparse, { prefetch: true });
      const stats = await within(lazy.ready, 20_000, "ready");
      out.sparse = {
        zeroPages: stats.zeroPages,
        pfnZero: scanned(lazy.region, "PFNZERO"),
        page5: lazy.bytes[5 * PAGE],
      };
    }
    return out;
  },

  /** memfd + minor faults: pages written into the page cache and mapped with UFFDIO_CONTINUE. */
  async memfd() {
    const dir = Deno.makeTempDirSync();
    try {
      const PAGES = 4096; // 16 MiB
      const { paths, image } = buildChain(dir, PAGES);
      const out: Observations = {};
      {
        await using lazy = await openLazy({ checkpoint: paths }, { memory: "memfd" });
        const touched = new Set(randomPages(PAGES, 500, 3));
        out.wrong = differing(lazy, image, touched).length;
        out.faults = lazy.stats.faults;
        out.touched = touched.size;
        out.kind = lazy.region.kind;
        out.fill = lazy.fill;
        out.minorBefore = lazy.stats.handler.minor;
        // Written, dropped from the mapping (MADV_DONTNEED), touched again: a minor fault maps the page cache page.
        const page = [...touched][0]!;
        lazy.bytes[page * PAGE + 1] = 0xab;
        lazy.region.zap(lazy.region.pages(page, 1));
        out.keptAfterDrop = lazy.bytes[page * PAGE + 1] === 0xab;
        lazy.handler.control("error", 0); // a round trip: the Worker is between batches, its counters final
        out.minorAfter = lazy.stats.handler.minor;
      }
      {
        await using lazy = await openLazy({ checkpoint: paths }, { memory: "memfd", prefetch: true });
        const stats = await within(lazy.ready, 30_000, "ready");
        out.prefetch = {
          resident: stats.resident,
          present: scanned(lazy.region, "PRESENT"),
          wrong: differing(lazy, image, allPages(PAGES)).length,
        };
      }
      return out;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** Anonymous memory filled with UFFDIO_MOVE from a staging page. */
  async move() {
    const dir = Deno.makeTempDirSync();
    try {
      const PAGES = 4096;
      const { paths, image, zero } = buildChain(dir, PAGES);
      const out: Observations = {};
      {
        await using lazy = await openLazy({ checkpoint: paths }, { fill: "move" });
        const touched = new Set(randomPages(PAGES, 500, 5));
        out.wrong = differing(lazy, image, touched).length;
        out.faults = lazy.stats.faults;
        out.touched = touched.size;
        out.fill = lazy.fill;
      }
      {
        await using lazy = await openLazy({ checkpoint: paths }, { fill: "move", prefetch: true });
        const stats = await within(lazy.ready, 30_000, "ready");
        out.prefetch = {
          resident: stats.resident,
          zeroPages: stats.zeroPages,
          chainZeroPages: zero.size,
          present: scanned(lazy.region, "PRESENT"),
          wrong: differing(lazy, image, allPages(PAGES)).length,
        };
      }
      return out;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** A module source that throws for two pages, sync and async, with and without prefetch. */
  async "module-throws"() {
    const PAGES = 256;
    const expected = new Uint8Array(PAGES * PAGE);
    fillPattern(expected, 0);
    const out: Observations = {};
    for (const async of [false, true]) {
      for (const prefetch of [false, true]) {
        await using lazy = await openLazy({ module: PATTERN, options: { failAt: [5, 77], async } }, {
          length: PAGES * PAGE,
          prefetch,
        });
        if (prefetch) await within(lazy.ready, 20_000, "ready");
        const errors: string[] = [];
        for (const page of [5, 77]) {
          try {
            lazy.read(page * PAGE, PAGE);
            errors.push("none");
          } catch (e) {
            errors.push(e instanceof UffdError ? `${e.code} ${e.message}` : String(e));
          }
        }
        const others = allPages(PAGES).filter((p) => p !== 5 && p !== 77);
        const read = lazy.read(0, 5 * PAGE);
        out[`${async ? "async" : "sync"}${prefetch ? "Prefetch" : ""}`] = {
          errors,
          poisoned: lazy.poisoned(),
          othersWrong: differing(lazy, expected, others).length,
          readBefore: read.every((b, i) => b === expected[i]),
          stats: { poisoned: lazy.stats.poisoned, resident: lazy.stats.resident },
        };
      }
    }
    return out;
  },

  /**
   * Without UFFDIO_POISON (declined): the failed page is made inaccessible instead (PROT_NONE), the handler serves
   * the other pages on, and read() and system calls report the page.
   */
  async "no-poison"() {
    const lazy = await openLazy({ module: PATTERN, options: { failAt: [5] } }, {
      length: 16 * PAGE,
      decline: ["POISON"],
    });
    const out: Observations = {};
    out.page4 = lazy.bytes[4 * PAGE] === (patternWord(4, 0) & 0xff);
    out.readError = (() => {
      try {
        lazy.read(5 * PAGE - 4, 8);
        return "none";
      } catch (e) {
        return e instanceof UffdError ? `${e.code} ${e.message}` : String(e);
      }
    })();
    // write(2) from the failed page: the kernel reads it for us and fails.
    const fd = libc.memfdCreate("lazy-probe", 1);
    out.writeSyscall = libc.write(fd, new Uint8Array(libc.bufferAt(lazy.region.address + BigInt(5 * PAGE), 64)));
    libc.close(fd);
    out.page9 = lazy.bytes[9 * PAGE] === (patternWord(9, 0) & 0xff);
    out.poisoned = lazy.poisoned();
    out.stats = { poisoned: lazy.stats.poisoned, faults: lazy.stats.faults };
    out.state = lazy.state;
    const address = lazy.region.address + BigInt(5 * PAGE);
    out.perms = readMaps().find((m) => m.start <= address && address < m.end)?.perms;
    await lazy.close();
    out.closedState = lazy.state;
    return out;
  },

  /** close() while a fault waits on a stuck source: the waiter is woken, nothing is left behind. */
  async "close-pending"() {
    await warmUp();
    const before = { fds: anonInodes(), threads: threads() };
    const gate = new Int32Array(new SharedArrayBuffer(8));
    const lazy = await openLazy(
      { module: PATTERN, export: "gated", options: { page: 3, gate: gate.buffer, ms: 20_000 } },
      { length: 8 * PAGE, stopTimeoutMs: 300 },
    );
    const scratch = new Uint8Array(16);
    const reader = libc.memcpyOffThread(libc.addressOf(scratch), lazy.region.address + BigInt(3 * PAGE), 16n);
    while (Atomics.load(gate, 0) === 0) await new Promise((r) => setTimeout(r, 5));
    const t0 = performance.now();
    await lazy.close();
    const closeMs = performance.now() - t0;
    await within(reader, 30_000, "the reader woken by close()");
    const readerDone = true;
    const state = lazy.state;
    const mappedAfterClose = lazy.region.mapped;
    // The mapping outlives an unclean close by a second, for woken threads.
    await new Promise((r) => setTimeout(r, 1500));
    const mappedLater = lazy.region.mapped;
    // The Worker is still blocked in the source's synchronous wait: nothing can interrupt
    // that; once the source returns, its thread ends and takes its descriptors along.
    const stuck = { fds: anonInodes(), threads: threads() };
    Atomics.store(gate, 1, 1);
    Atomics.notify(gate, 1);
    await new Promise((r) => setTimeout(r, 500));
    const after = { fds: anonInodes(), threads: threads() };
    return { closeMs, readerDone, state, before, stuck, after, mappedAfterClose, mappedLater };
  },

  /** close() after ordinary use: the region is unmapped at once, and no fd or thread is left. */
  async "close-clean"() {
    await warmUp();
    const before = { fds: anonInodes(), threads: threads() };
    const lazy = await openLazy({ module: PATTERN }, { length: 32 * PAGE, prefetch: true });
    const first = new Uint32Array(lazy.bytes.buffer, lazy.bytes.byteOffset + PAGE + 8, 1)[0] === patternWord(1, 2);
    await lazy.close();
    await new Promise((r) => setTimeout(r, 300)); // the Worker's thread goes away after its exit event
    const after = { fds: anonInodes(), threads: threads() };
    let bytesError = "";
    try {
      lazy.bytes;
    } catch (e) {
      bytesError = (e as UffdError).code;
    }
    return { first, mapped: lazy.region.mapped, state: lazy.state, before, after, bytesError };
  },

  /** Without prefetch, `ready` resolves once the program has touched every page. */
  async "ready-by-touch"() {
    const lazy = await openLazy({ module: PATTERN }, { length: 16 * PAGE });
    let resolved = false;
    lazy.ready.then(() => resolved = true);
    for (let p = 0; p < 15; p++) lazy.bytes[p * PAGE];
    await new Promise((r) => setTimeout(r, 100));
    const before = resolved;
    lazy.bytes[15 * PAGE];
    const stats = await within(lazy.ready, 30_000, "ready");
    await lazy.close();
    return { before, resident: stats.resident, faults: stats.faults };
  },

  /**
   * Restored into a caller's memory: a WebAssembly.Memory that a fresh instance
   * reads (wasm code blocking in the fault, served like any access), and a private
   * Region whose old contents are replaced and which stays mapped after close().
   */
  async target() {
    const dir = Deno.makeTempDirSync();
    try {
      const PAGES = 256; // 1 MiB: 16 wasm pages
      const { paths, image } = buildChain(dir, PAGES);
      const memory = new WebAssembly.Memory({ initial: 16, maximum: 64 });
      new Uint8Array(memory.buffer).fill(0xcc); // old contents: dropped by open()
      // (module (import "env" "memory" (memory 1)) (func (export "load") (param i32) (result i32) local.get 0 i32.load))
      const wasm = new Uint8Array([
        0x00,
        0x61,
        0x73,
        0x6d,
        0x01,
        0x00,
        0x00,
        0x00,
        0x01,
        0x06,
        0x01,
        0x60,
        0x01,
        0x7f,
        0x01,
        0x7f,
        0x02,
        0x0f,
        0x01,
        0x03,
        0x65,
        0x6e,
        0x76,
        0x06,
        0x6d,
        0x65,
        0x6d,
        0x6f,
        0x72,
        0x79,
        0x02,
        0x00,
        0x01,
        0x03,
        0x02,
        0x01,
        0x00,
        0x07,
        0x08,
        0x01,
        0x04,
        0x6c,
        0x6f,
        0x61,
        0x64,
        0x00,
        0x00,
        0x0a,
        0x09,
        0x01,
        0x07,
        0x00,
        0x20,
        0x00,
        0x28,
        0x02,
        0x00,
        0x0b,
      ]);
      const instance = new WebAssembly.Instance(new WebAssembly.Module(wasm), { env: { memory } });
      const load = instance.exports.load as (address: number) => number;
      const out: Observations = {};
      {
        await using lazy = await openLazy({ checkpoint: paths }, { target: memory });
        out.address = lazy.region.address === libc.addressOf(memory.buffer);
        const words = new Int32Array(image.buffer, image.byteOffset, image.byteLength >>> 2);
        let wrong = 0;
        for (const p of randomPages(PAGES, 100, 11)) {
          const at = p * PAGE + 4 * (p % 1024);
          if (load(at) !== words[at >>> 2]) wrong++;
        }
        out.wasmWrong = wrong;
        out.wasmFaults = lazy.stats.faults;
        out.allWrong = differing(lazy, image, allPages(PAGES)).length;
      }
      out.afterClose = new Uint8Array(memory.buffer)[4096 * 9 + 8] === image[4096 * 9 + 8];
      memory.grow(1); // pages added later are ordinary memory
      out.grown = new Uint8Array(memory.buffer)[PAGES * PAGE + 5];
      {
        const mem = Region.map(PAGES * PAGE);
        mem.bytes.fill(0xcc);
        const lazy = await openLazy({ checkpoint: paths }, { target: mem, prefetch: true });
        await within(lazy.ready, 20_000, "ready");
        out.regionWrong = differing(lazy, image, allPages(PAGES)).length;
        await lazy.close();
        out.regionMapped = mem.mapped;
        out.regionKept = mem.bytes.every((b, i) => b === image[i]);
        mem.unmap();
      }
      return out;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },

  /** A checkpoint of an ArrayBuffer whose data starts 16 bytes into a page (head ≠ 0). */
  async "checkpoint-head"() {
    const dir = Deno.makeTempDirSync();
    try {
      const buffer = new ArrayBuffer(2 << 20); // ≥ 1 MiB: malloc'd, 16 bytes into a page
      const view = new Uint8Array(buffer);
      for (let i = 0; i < view.length; i += 64) view[i] = (i >>> 6) & 0xff;
      view.fill(0, 4096 * 10, 4096 * 20);
      using ckpt = Checkpoint.start(buffer);
      ckpt.write(`${dir}/base`);
      view[5000] = 1;
      ckpt.write(`${dir}/delta-1`);
      using reader = CheckpointReader.open(ckpt.files);
      await using lazy = await openLazy({ checkpoint: reader }, { prefetch: true });
      await within(lazy.ready, 10_000, "ready");
      const bytes = lazy.bytes;
      let wrong = 0;
      for (let i = 0; i < view.length; i++) if (bytes[i] !== view[i]) wrong++;
      return { head: reader.head, length: lazy.length, wrong };
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
};

const name = Deno.args[0] ?? "";
const run = scenarios[name];
assert.ok(run, `unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
console.log(JSON.stringify(await run()));
