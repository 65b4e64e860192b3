/**
 * FaultHandler scenarios in which the main isolate itself touches protected or
 * missing memory — a broken handler would block it for good — run one per
 * process by `tests/fault_handler_test.ts`, which kills the process at its
 * deadline. `deno run --allow-all tests/scenarios/fault_handler.ts <name>`
 * checks what it can with `node:assert`, prints one JSON line of observations
 * and ends by itself (never `Deno.exit`): a scenario that leaves the process
 * alive is a failure the test sees as a timeout.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  FaultHandler,
  FaultHandlerError,
  Feature,
  MADV_DONTNEED,
  policies,
  Region,
  type UffdEvent,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { anonInodes, waitFor, within } from "../helpers.ts";
import { nativeForkWriter } from "../native_fork.ts";

const PAGE = Region.pageSize;
type Observations = Record<string, unknown>;

function policyUrl(name: string): URL {
  return new URL(`../policies/${name}.ts`, import.meta.url);
}

/** A deterministic pseudo-random subset of `count` page numbers out of `total`. */
function pickPages(total: number, count: number, seed = 12345): number[] {
  const pages = Array.from({ length: total }, (_, i) => i);
  let s = seed;
  for (let i = total - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const j = s % (i + 1);
    [pages[i], pages[j]] = [pages[j]!, pages[i]!];
  }
  return pages.slice(0, count).sort((a, b) => a - b);
}

function runsToPages(runs: { firstPage: number; pages: number }[]): number[] {
  return runs.flatMap((r) => Array.from({ length: r.pages }, (_, i) => r.firstPage + i));
}

/** Starts the test writer Worker and asks it to write `value` at `offsets` of `mem`. */
function startWriter(mem: Region, offsets: number[], value: number): { worker: Worker; done: Promise<unknown> } {
  const worker = new Worker(new URL("../workers/tid_writer.ts", import.meta.url), { type: "module" });
  const done = new Promise((resolve) => worker.onmessage = (e) => resolve(e.data));
  worker.postMessage({ type: "write", address: mem.address, length: mem.length, offsets, value });
  return { worker, done };
}

const scenarios: Record<string, () => Promise<Observations>> = {
  /** 10,000 of 12,000 write-protected pages written by the main isolate: every write lands, exactly those pages reported. */
  async "wp-10k"() {
    const TOTAL = 12_000;
    using mem = Region.map(TOTAL * PAGE, { populate: true });
    using uffd = Userfaultfd.open();
    uffd.register(mem, { wp: true });
    const pages = pickPages(TOTAL, 10_000);
    await using handler = await FaultHandler.start(uffd, policies.unprotect());
    uffd.writeProtect(mem);
    const bytes = mem.bytes;
    // Read right after each write, before any round trip: faults and resolved already count it.
    let behind = 0;
    let n = 0;
    for (const p of pages) {
      bytes[p * PAGE + (p % PAGE)] = (p % 251) + 1;
      n++;
      const s = handler.stats;
      if (s.resolved < n || s.faults < n) behind++;
    }
    const reported = runsToPages(handler.collect());
    const stats = handler.stats; // after collect(): the Worker is between batches, every counter final
    const landed = pages.every((p) => bytes[p * PAGE + (p % PAGE)] === (p % 251) + 1);
    const again = handler.collect();
    // Re-protected by collect(): the next write faults again and is reported by the next collect.
    bytes[pages[7]! * PAGE] = 9;
    const next = runsToPages(handler.collect());
    return {
      written: pages.length,
      reported: reported.length,
      exact: JSON.stringify(reported) === JSON.stringify(pages),
      landed,
      wpFaults: stats.wp,
      resolved: stats.resolved,
      latencyCounted: stats.latency.counts.reduce((a, b) => a + b, 0),
      again: again.length,
      next,
      expectedNext: [pages[7]],
      batches: stats.batches,
      behind,
    };
  },

  /** chunk 16: one fault unprotects the aligned 16 pages around it; all 16 are reported written. */
  async "wp-chunk16"() {
    const TOTAL = 4096;
    using mem = Region.map(TOTAL * PAGE, { populate: true });
    using uffd = Userfaultfd.open();
    uffd.register(mem, { wp: true });
    const pages = pickPages(TOTAL, 300, 777);
    await using handler = await FaultHandler.start(uffd, policies.unprotect({ chunk: 16 }));
    uffd.writeProtect(mem);
    const bytes = mem.bytes;
    for (const p of pages) bytes[p * PAGE] = 1;
    const chunks = [...new Set(pages.map((p) => Math.floor(p / 16)))];
    const expected = chunks.flatMap((c) => Array.from({ length: 16 }, (_, i) => c * 16 + i));
    const reported = runsToPages(handler.collect());
    return {
      exact: JSON.stringify(reported) === JSON.stringify(expected),
      wpFaults: handler.stats.wp,
      chunks: chunks.length,
      landed: pages.every((p) => bytes[p * PAGE] === 1),
    };
  },

  /** Missing pages read and written by the main isolate, served by zerofill. */
  async zerofill() {
    using mem = Region.map(64 * PAGE);
    using uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    await using handler = await FaultHandler.start(uffd, policies.zerofill());
    const bytes = mem.bytes;
    let zeros = true;
    for (let p = 0; p < 32; p++) zeros &&= bytes[p * PAGE + 5] === 0; // reads: zero page
    for (let p = 32; p < 64; p++) bytes[p * PAGE + 5] = p; // writes
    const landed = Array.from({ length: 32 }, (_, i) => bytes[(32 + i) * PAGE + 5] === 32 + i).every(Boolean);
    const stats = await handler.stop();
    return { zeros, landed, missing: stats.missing, resolved: stats.resolved };
  },

  /** copyFrom a Uint8Array, a file and another Region: the main isolate reads back the pattern (zeros past the end). */
  async "copy-from"() {
    const PAGES = 8;
    const pattern = new Uint8Array(PAGES * PAGE - 100).map((_, i) => (i * 7 + (i >> 12)) % 256);
    const file = await Deno.makeTempFile({ prefix: "uffd-copy-" });
    await Deno.writeFile(file, pattern);
    using source = Region.map(PAGES * PAGE);
    source.bytes.set(pattern);
    const results: Observations = {};
    try {
      for (
        const [name, spec] of [
          ["bytes", policies.copyFrom(pattern)],
          ["file", policies.copyFrom(file)],
          ["region", policies.copyFrom({ address: source.address, length: pattern.length })],
        ] as const
      ) {
        using mem = Region.map(PAGES * PAGE);
        using uffd = Userfaultfd.open();
        uffd.register(mem, { missing: true });
        await using handler = await FaultHandler.start(uffd, spec);
        const bytes = mem.bytes;
        const copy = bytes.slice(); // reads every page from the main isolate
        const same = copy.subarray(0, pattern.length).every((b, i) => b === pattern[i]);
        const tailZero = copy.subarray(pattern.length).every((b) => b === 0);
        results[name] = { same, tailZero, missing: handler.stats.missing };
      }
    } finally {
      await Deno.remove(file);
    }
    return results;
  },

  /** Minor faults on a memfd whose page cache was filled through an alias, served by continue. */
  async continue() {
    using mem = Region.map(16 * PAGE, { memfd: true });
    using alias = mem.alias();
    alias.bytes.forEach((_, i, a) => a[i] = (i % 200) + 3);
    using uffd = Userfaultfd.open({ require: [Feature.MINOR_SHMEM] });
    uffd.register(mem, { minor: true });
    await using handler = await FaultHandler.start(uffd, policies.continue());
    const bytes = mem.bytes;
    const same = bytes.every((b, i) => b === (i % 200) + 3);
    bytes[PAGE] = 1; // shared: visible through the alias
    return { same, throughAlias: alias.bytes[PAGE], minor: handler.stats.minor, resolved: handler.stats.resolved };
  },

  /** A user policy module sees the main isolate's thread id and the exact address, and answers control(). */
  async "thread-id"() {
    using mem = Region.map(8 * PAGE, { populate: true });
    using uffd = Userfaultfd.open({ require: [Feature.THREAD_ID, Feature.EXACT_ADDRESS] });
    uffd.register(mem, { wp: true });
    await using handler = await FaultHandler.start(uffd, policies.module(policyUrl("recording")));
    uffd.writeProtect(mem);
    mem.bytes[3 * PAGE + 321] = 1;
    const seen = handler.control("faults") as { address: number; page: number; pageIndex: number; threadId: number }[];
    let unknown: string | undefined;
    try {
      handler.control("nope");
    } catch (e) {
      unknown = (e as Error).message;
    }
    return {
      seen,
      mainTid: libc.gettid(),
      expectedAddress: Number(mem.address) + 3 * PAGE + 321,
      expectedPage: Number(mem.address) + 3 * PAGE,
      unknown,
      stillRunning: handler.state,
    };
  },

  /**
   * The policy throws on the 100th fault while the main isolate is the writer; then 15 more
   * handlers fail the same way, and the anonymous-inode fds they used must all be closed.
   */
  async "throw-100"() {
    async function failOnce(pages: number, at: number) {
      const mem = Region.map(pages * PAGE, { populate: true });
      const uffd = Userfaultfd.open();
      uffd.register(mem, { wp: true });
      const handler = await FaultHandler.start(uffd, policies.module(policyUrl("throw_at"), { at }));
      uffd.writeProtect(mem);
      const bytes = mem.bytes;
      for (let p = 0; p < pages; p++) bytes[p * PAGE] = 1; // write `at` blocks until the Worker closes the uffd
      let error: unknown;
      await within(handler.done, 30_000, "handler.done").catch((e) => error = e);
      let stopError: unknown;
      await handler.stop().catch((e) => stopError = e);
      const landed = Array.from({ length: pages }, (_, p) => bytes[p * PAGE] === 1).every(Boolean);
      mem.unmap();
      return { handler, uffd, error, stopError, landed };
    }
    const { handler, uffd, error, stopError, landed } = await failOnce(200, 100);
    const before = anonInodes();
    for (let i = 0; i < 15; i++) await failOnce(8, 3);
    const after = anonInodes();
    return {
      landed,
      isHandlerError: error instanceof FaultHandlerError,
      message: (error as Error)?.message,
      cause: ((error as Error)?.cause as Error)?.message,
      causeCause: (((error as Error)?.cause as Error)?.cause as Error)?.message,
      sameFromStop: stopError === error,
      uffdClosed: uffd.closed,
      state: handler.state,
      faults: handler.stats.faults,
      userfaultfdsOpen: after["[userfaultfd]"] ?? 0,
      eventfdsGrown: (after["[eventfd]"] ?? 0) - (before["[eventfd]"] ?? 0),
    };
  },

  /** The policy ends its Worker with process.exit() while the main isolate is blocked in a fault. */
  async "worker-exits"() {
    using mem = Region.map(20 * PAGE, { populate: true });
    using uffd = Userfaultfd.open();
    uffd.register(mem, { wp: true });
    const handler = await FaultHandler.start(uffd, policies.module(policyUrl("exit_at"), { at: 5 }));
    uffd.writeProtect(mem);
    const bytes = mem.bytes;
    for (let p = 0; p < 20; p++) bytes[p * PAGE] = 2;
    let error: unknown;
    await within(handler.done, 30_000, "handler.done").catch((e) => error = e);
    return {
      landed: Array.from({ length: 20 }, (_, p) => bytes[p * PAGE] === 2).every(Boolean),
      isHandlerError: error instanceof FaultHandlerError,
      message: (error as Error)?.message,
      uffdClosed: uffd.closed,
    };
  },

  /** stop() while idle; then the script ends and the process must exit by itself. */
  async "stop-idle"() {
    using mem = Region.map(4 * PAGE);
    using uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    const handler = await FaultHandler.start(uffd, policies.zerofill());
    const t0 = performance.now();
    const stats = await handler.stop();
    return { stopMs: performance.now() - t0, state: handler.state, faults: stats.faults };
  },

  /** stop() while a Worker's writes keep faulting; then the userfaultfd is closed and the writer finishes. */
  async "stop-inflight"() {
    const PAGES = 2000;
    using mem = Region.map(PAGES * PAGE, { populate: true });
    using uffd = Userfaultfd.open();
    uffd.register(mem, { wp: true });
    const handler = await FaultHandler.start(uffd, policies.unprotect());
    uffd.writeProtect(mem);
    const { worker, done } = startWriter(mem, Array.from({ length: PAGES }, (_, p) => p * PAGE), 4);
    await waitFor(() => handler.stats.faults >= 20, 30_000, "the writer's faults");
    const t0 = performance.now();
    const stats = await handler.stop();
    const stopMs = performance.now() - t0;
    uffd.close(); // wakes the writer if it is blocked; its remaining writes need no handler
    await within(done, 30_000, "the writer after close");
    worker.terminate();
    return {
      stopMs,
      servedBeforeStop: stats.resolved,
      landed: Array.from({ length: PAGES }, (_, p) => mem.bytes[p * PAGE] === 4).every(Boolean),
    };
  },

  /** A handler that is never stopped, with faults served: the process still exits when the script ends. */
  async forgotten() {
    const mem = Region.map(16 * PAGE, { populate: true });
    const uffd = Userfaultfd.open();
    uffd.register(mem, { wp: true });
    const handler = await FaultHandler.start(uffd, policies.unprotect());
    uffd.writeProtect(mem);
    for (let p = 0; p < 16; p++) mem.bytes[p * PAGE] = 1;
    return { resolved: handler.stats.resolved, state: handler.state };
  },

  /**
   * MADV_DONTNEED with EVENT_REMOVE while a Worker's fault is held by the policy: the remove
   * event arrives with the right range, the held fault fails with EAGAIN, is retried after
   * the event and served; removed pages count as written (removedAsWritten).
   */
  async remove() {
    using mem = Region.map(64 * PAGE, { populate: true });
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_REMOVE] });
    uffd.register(mem, { wp: true });
    const events: UffdEvent[] = [];
    await using handler = await FaultHandler.start(uffd, policies.module(policyUrl("gated")), {
      onEvent: (e) => events.push(e),
    });
    uffd.writeProtect(mem);
    const { worker, done } = startWriter(mem, [10 * PAGE], 6);
    try {
      await waitFor(() => handler.stats.faults >= 1, 30_000, "the writer's fault");
      mem.advise(MADV_DONTNEED, mem.pages(20, 4)); // waits until the Worker has read the remove event
      await within(done, 30_000, "the writer");
      await waitFor(() => events.length >= 1, 30_000, "the remove event on the main side");
    } finally {
      worker.terminate();
    }
    const stats = handler.stats;
    return {
      events: events.map((e) => e.type === "remove" ? { ...e, start: String(e.start), end: String(e.end) } : e.type),
      expected: {
        type: "remove",
        start: String(mem.address + BigInt(20 * PAGE)),
        end: String(mem.address + BigInt(24 * PAGE)),
      },
      retried: stats.retried,
      removeEvents: stats.events.remove,
      landed: mem.bytes[10 * PAGE],
      written: runsToPages(handler.collect()),
    };
  },

  /**
   * EVENT_REMAP and EVENT_UNMAP: pages moved by mremap keep their numbers at their new
   * address (a write there is reported under the old number); unmapped pages leave the view.
   */
  async "remap-unmap"() {
    using mem = Region.map(32 * PAGE, { populate: true });
    const destination = Region.map(8 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_REMAP, Feature.EVENT_UNMAP] });
    uffd.register(mem, { wp: true });
    const events: UffdEvent[] = [];
    await using handler = await FaultHandler.start(uffd, policies.unprotect(), { onEvent: (e) => events.push(e) });
    uffd.writeProtect(mem);
    const moved = mem.movePages(mem.pages(8, 8), destination.address); // waits for the Worker to read the event
    const view = new Uint8Array(libc.bufferAt(moved, 8 * PAGE));
    view[2 * PAGE] = 5; // tracked page 10, now at destination + 2 pages
    mem.bytes[3 * PAGE] = 5;
    const afterMove = runsToPages(handler.collect());
    destination.unmap(); // unmaps the moved pages: an unmap event
    // mremap itself may send an unmap event (for the range it replaces), so wait for the one that names the
    // destination rather than for a count of events.
    const destinationUnmapped = () => events.some((e) => e.type === "unmap" && e.start === destination.address);
    await waitFor(destinationUnmapped, 30_000, "the unmap event of the destination");
    const afterUnmap = runsToPages(handler.collect()); // nothing left to re-protect at the old place
    mem.bytes[31 * PAGE] = 5;
    const stats = handler.stats;
    const describe = (e: UffdEvent) =>
      e.type === "remap"
        ? { type: e.type, from: String(e.from), to: String(e.to), length: String(e.length) }
        : e.type === "unmap"
        ? { type: e.type, start: String(e.start), end: String(e.end) }
        : { type: e.type };
    return {
      events: events.map(describe),
      expectedEvents: [
        {
          type: "remap",
          from: String(mem.address + BigInt(8 * PAGE)),
          to: String(destination.address),
          length: String(8 * PAGE),
        },
        { type: "unmap", start: String(destination.address), end: String(destination.address + BigInt(8 * PAGE)) },
      ],
      afterMove,
      afterUnmap,
      last: runsToPages(handler.collect()),
      untracked: stats.untracked,
      remaps: stats.events.remap,
      unmaps: stats.events.unmap,
    };
  },

  /**
   * fork with EVENT_FORK: a child (native code, see tests/native_fork.ts) writes a protected
   * page and exits. The fork event hands the child's userfaultfd to the main side, where
   * the child's fault is read and resolved through it.
   */
  async fork() {
    const forkWriter = nativeForkWriter();
    if (!forkWriter) return { skipped: `no native fork helper for ${Deno.build.arch}` };
    using mem = Region.map(4 * PAGE, { populate: true });
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_FORK] });
    uffd.register(mem, { wp: true });
    const forks: Userfaultfd[] = [];
    await using handler = await FaultHandler.start(uffd, policies.unprotect(), {
      onEvent: (e) => e.type === "fork" && forks.push(e.uffd),
    });
    uffd.writeProtect(mem);
    const target = mem.address + BigInt(PAGE + 17);
    const pid = forkWriter(target, 7); // returns once the handler has read the fork event
    assert.ok(pid > 0, `fork failed: ${pid}`);
    let status = -1;
    let faults: UffdEvent[] = [];
    try {
      await waitFor(() => forks.length === 1, 30_000, "the fork event");
      const child = forks[0]!;
      await waitFor(() => (faults = child.readEvents()).length > 0, 30_000, "the child's fault");
      const blocked = libc.waitpid(pid, 1 /* WNOHANG */)[0] === 0;
      child.unprotect({ address: mem.address + BigInt(PAGE), length: PAGE });
      await waitFor(
        () => {
          const [rc, s] = libc.waitpid(pid, 1 /* WNOHANG */);
          if (rc === pid) status = s;
          return rc === pid;
        },
        5_000,
        "the child to exit",
      );
      child.close();
      const fault = faults[0];
      return {
        forkEvents: handler.stats.events.fork,
        childFault: fault?.type === "pagefault"
          ? { address: String(fault.address), wp: fault.wp, write: fault.write }
          : fault?.type,
        expectedAddress: String(mem.address + BigInt(PAGE)),
        blockedUntilResolved: blocked,
        exitStatus: status,
        parentUntouched: mem.bytes[PAGE + 17],
        childClosed: child.closed,
      };
    } finally {
      if (status === -1) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
    }
  },
};

const name = Deno.args[0] ?? "";
const scenario = scenarios[name];
if (!scenario) throw new Error(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(scenarios).join(", ")}`);
const observations = await scenario();
console.log(JSON.stringify(observations, (_, v) => typeof v === "bigint" ? v.toString() : v));
