/**
 * One stress run with integrity checks — the idea of the kernel's `uffd-stress`
 * (tools/testing/selftests/mm/uffd-stress.c), in our own code and through our API.
 * See `tests/stress/README.md` for the design. Run by `tests/stress/run.ts` (the
 * `deno task stress` command) and by `tests/stress_test.ts`, each in a child
 * process with a deadline: `deno run --allow-all tests/stress/bounce.ts '<options JSON>'`
 * prints progress lines on stderr and the report as the last line of stdout.
 *
 * The actors, all in one process:
 *
 * - N hammer Workers (`hammer.ts`) increment counters in random pages of a region
 *   registered for missing and write-protect faults, under per-page locks, checking
 *   each page completely every time;
 * - the fault handler (`FaultHandler`, a Worker of its own) with the bounce policy
 *   (`bounce_policy.ts`): missing → `UFFDIO_COPY` from the bounce buffer (every
 *   other copy write-protected), write-protect → unprotect;
 * - the bouncer (this module, on the main isolate): takes the locks of a few
 *   pages, saves them into the bounce buffer (checking them), zaps them
 *   (`MADV_DONTNEED`, or `MADV_REMOVE` on shared memory; with `EVENT_REMOVE` the
 *   call waits until the handler has read the event) and releases the locks; or
 *   write-protects a random range while the Workers keep writing.
 *
 * At the end every page is checked once more against the increments each Worker
 * made, and the sum of the pages' totals against the sum of the Workers' counts.
 *
 * @module
 */

import {
  FaultHandler,
  Feature,
  type HandlerStats,
  MADV_DONTNEED,
  MADV_REMOVE,
  policies,
  Region,
  UffdError,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { mapMemory, type MemType, type TestMemory } from "../conformance/helpers.ts";
import { DEADLINE_SCALE, reserveHugePages } from "../helpers.ts";
import type { BouncePolicyStats } from "./bounce_policy.ts";
import type { HammerInit } from "./hammer.ts";
import { check, CTRL, initialPage, lock, MAX_WORKERS, prng, unlock, WSTAT } from "./page_format.ts";

/** How to run. */
export interface StressOptions {
  /** Memory type, named as in the kernel's tests (default anon). */
  memory: MemType;
  /** How long the Workers hammer, in milliseconds. */
  durationMs: number;
  /** Hammer Workers (default: cores × 2). */
  workers: number;
  /** Pages of the region (base pages, or huge pages for hugetlb). */
  pages: number;
  /** Seed of the random choices. */
  seed: number;
  /** Touch pages without the lock now and then (racing faults on one page). */
  racing: boolean;
  /** Register for EVENT_REMOVE (the bouncer's zaps then wait for the handler). */
  events: boolean;
  /** Copy with MODE_WP every this many copies (0: never). */
  wpEvery: number;
  /** Break the bounce on purpose, to prove the checks catch it. */
  sabotage: "none" | "stale" | "torn" | "zero";
  /** Print a progress line on stderr this often (0: never). */
  progressMs: number;
}

/** The defaults of {@linkcode StressOptions}. */
export function defaultOptions(): StressOptions {
  return {
    memory: "anon",
    durationMs: 60_000,
    workers: Math.min(MAX_WORKERS, navigator.hardwareConcurrency * 2),
    pages: 512,
    seed: 1,
    racing: true,
    events: true,
    wpEvery: 2,
    sabotage: "none",
    progressMs: 0,
  };
}

/** What a run did and found. */
export interface StressReport {
  ok: boolean;
  failures: string[];
  options: StressOptions;
  pageSize: number;
  wp: boolean;
  seconds: number;
  increments: number;
  incrementsPerSecond: number;
  perWorker: number[];
  racingWrites: number;
  racingReads: number;
  faults: number;
  missingFaults: number;
  wpFaults: number;
  faultsPerSecond: number;
  resolved: number;
  retried: number;
  vanished: number;
  removeEvents: number;
  batches: number;
  largestBatch: number;
  latency: { p50: string; p99: string; max: string };
  policy: BouncePolicyStats | undefined;
  bouncer: { zaps: number; zappedPages: number; protects: number; protectedPages: number; eagain: number };
  verified: { pages: number; totalInPages: number; sumOfWorkers: number };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The latency bucket holding quantile `q` of the histogram, as text: "≤ 32 µs", or "> 16384 µs" for the open one. */
function quantile(stats: HandlerStats, q: number): string {
  const { counts, upperBoundsMicros } = stats.latency;
  const total = counts.reduce((a, b) => a + b, 0);
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i]!;
    if (total > 0 && seen >= q * total) {
      const bound = upperBoundsMicros[i]!;
      return bound === Infinity ? `> ${upperBoundsMicros[i - 1]} µs` : `≤ ${bound} µs`;
    }
  }
  return "none";
}

function requiredFeatures(memory: MemType, events: boolean): { require: Feature[]; wp: boolean } {
  const have = Userfaultfd.supported().features;
  const require: Feature[] = [];
  if (events) require.push(Feature.EVENT_REMOVE);
  if (memory.startsWith("shmem")) require.push(Feature.MISSING_SHMEM);
  if (memory.startsWith("hugetlb")) require.push(Feature.MISSING_HUGETLBFS);
  const wpFeature = memory === "anon" ? Feature.PAGEFAULT_FLAG_WP : Feature.WP_HUGETLBFS_SHMEM;
  const wp = have.has(Feature.PAGEFAULT_FLAG_WP) && have.has(wpFeature);
  if (wp) require.push(Feature.PAGEFAULT_FLAG_WP, wpFeature);
  return { require, wp };
}

/** Runs one stress run in this process and reports. Huge pages are reserved (and released) for hugetlb. */
export async function bounceStress(options: StressOptions): Promise<StressReport> {
  const o = options;
  if (o.workers < 1 || o.workers > MAX_WORKERS) throw new RangeError(`workers must be in [1, ${MAX_WORKERS}]`);
  const huge = o.memory.startsWith("hugetlb");
  const restore = huge ? reserveHugePages(o.pages) : undefined;
  if (huge && !restore) throw new Error(`could not reserve ${o.pages} huge pages (root needed)`);
  const mem = mapMemory(o.memory, o.pages);
  let quiet = false;
  try {
    const { report, workersStopped } = await run(o, mem);
    quiet = workersStopped;
    return report;
  } finally {
    // Never unmap memory a Worker may still touch (a woken writer retries its access).
    if (quiet) mem[Symbol.dispose]();
    restore?.();
  }
}

async function run(o: StressOptions, mem: TestMemory): Promise<{ report: StressReport; workersStopped: boolean }> {
  const failures: string[] = [];
  const pageSize = mem.pageSize;
  const pageWords = pageSize / 4;
  const pages = o.pages;
  const shared = o.memory === "shmem" || o.memory === "hugetlb";
  const advice = shared ? MADV_REMOVE : MADV_DONTNEED;
  const { require, wp } = requiredFeatures(o.memory, o.events);
  using bounceBuffer = Region.map(pages * pageSize);
  const bounceWords = new Uint32Array(bounceBuffer.bytes.buffer);
  for (let p = 0; p < pages; p++) initialPage(bounceWords, p * pageWords, p, pageWords);
  const memWords = new Uint32Array(libc.bufferAt(mem.range.address, pages * pageSize));

  const locks = new Int32Array(new SharedArrayBuffer(pages * 4));
  const expected = new Uint32Array(new SharedArrayBuffer(o.workers * pages * 4));
  const control = new Int32Array(new SharedArrayBuffer(CTRL.SIZE * 4));
  const workerStats = new Float64Array(new SharedArrayBuffer(o.workers * WSTAT.SIZE * 8));
  const failed = () => Atomics.load(control, CTRL.FAILED) !== 0;
  const fail = (why: string) => {
    failures.push(why);
    Atomics.store(control, CTRL.FAILED, 1);
    Atomics.store(control, CTRL.STOP, 1);
  };

  using uffd = Userfaultfd.open({ require });
  uffd.register(mem.range, { missing: true, wp });
  const handler = await FaultHandler.start(
    uffd,
    policies.module(new URL("./bounce_policy.ts", import.meta.url), {
      bounce: Number(bounceBuffer.address),
      wpEvery: wp ? o.wpEvery : 0,
      sabotage: o.sabotage,
    }),
  );
  handler.done.catch((e: Error) => fail(`the fault handler failed: ${e.message}; ${(e.cause as Error)?.message}`));

  const workers: Worker[] = [];
  const finished: Promise<void>[] = [];
  const ready: Promise<void>[] = [];
  for (let w = 0; w < o.workers; w++) {
    const worker = new Worker(new URL("./hammer.ts", import.meta.url), { type: "module" });
    workers.push(worker);
    const arrived = Promise.withResolvers<void>();
    ready.push(arrived.promise);
    finished.push(
      new Promise((resolve) => {
        worker.onmessage = (e) => {
          if (e.data.ready) arrived.resolve();
          if (e.data.error) fail(e.data.error);
          if (e.data.done) resolve();
        };
        worker.onerror = (e) => {
          e.preventDefault();
          fail(`Worker ${w}: ${e.message}`);
          arrived.resolve();
          resolve();
        };
      }),
    );
    const init: HammerInit = {
      index: w,
      workers: o.workers,
      address: mem.range.address,
      pageSize,
      pages,
      seed: o.seed * 7919 + w + 1,
      racing: o.racing,
      locks: locks.buffer as SharedArrayBuffer,
      expected: expected.buffer as SharedArrayBuffer,
      control: control.buffer as SharedArrayBuffer,
      stats: workerStats.buffer as SharedArrayBuffer,
    };
    worker.postMessage(init);
  }

  const increments = () => {
    let n = 0;
    for (let w = 0; w < o.workers; w++) n += workerStats[w * WSTAT.SIZE + WSTAT.increments]!;
    return n;
  };

  // The run's duration counts from the moment every Worker runs (starting one takes seconds under an emulator).
  let readyTimer: ReturnType<typeof setTimeout> | undefined;
  const allReady = await Promise.race([
    Promise.all(ready).then(() => true),
    new Promise<boolean>((resolve) => readyTimer = setTimeout(() => resolve(false), 30_000 * DEADLINE_SCALE)),
  ]);
  clearTimeout(readyTimer);
  if (!allReady) fail("the Workers did not all start");

  // The bouncer.
  const random = prng(o.seed);
  const bouncer = { zaps: 0, zappedPages: 0, protects: 0, protectedPages: 0, eagain: 0 };
  const t0 = performance.now();
  const deadline = t0 + o.durationMs;
  let lastYield = t0;
  let lastProgress = t0;
  let zapCount = 0;
  while (!failed()) {
    const now = performance.now();
    if (now >= deadline) break;
    if (now - lastYield >= 2) {
      await sleep(0); // Worker messages, the handler's end
      lastYield = performance.now();
    }
    if (o.progressMs > 0 && now - lastProgress >= o.progressMs) {
      lastProgress = now;
      const s = handler.stats;
      console.error(
        `stress: ${((now - t0) / 1000).toFixed(0)} s, ${increments()} increments, ${s.faults} faults ` +
          `(${s.missing} missing, ${s.wp} wp), ${bouncer.zappedPages} pages zapped, ${bouncer.protectedPages} protected`,
      );
    }
    if (random() < 0.6) {
      // Zap a few pages, saving them first under their locks.
      const k = 1 + Math.floor(random() * Math.min(8, pages));
      const first = Math.floor(random() * (pages - k + 1));
      for (let p = first; p < first + k; p++) lock(locks, p);
      try {
        for (let p = first; p < first + k; p++) {
          const base = p * pageWords;
          zapCount++;
          const sabotaged = o.sabotage !== "none" && zapCount % 50 === 0;
          if (sabotaged && o.sabotage === "stale") continue; // the bounce keeps an older version
          // Reading the page may fault (missing): the handler copies it in from the bounce buffer first.
          const end = sabotaged && o.sabotage === "torn" ? base + pageWords / 2 : base + pageWords;
          bounceWords.set(memWords.subarray(base, end), base);
          if (sabotaged) continue;
          const problem = check(bounceWords, base, p, pageWords, o.workers, expected, pages);
          if (problem !== "") {
            fail(`bouncer, saving: ${problem}`);
            break;
          }
        }
        const rc = libc.madvise(
          mem.range.address + BigInt(first * pageSize),
          BigInt(k * pageSize),
          advice,
        );
        if (rc < 0) fail(`madvise: ${new UffdError({ errno: -rc, operation: "madvise" }).message}`);
        bouncer.zaps++;
        bouncer.zappedPages += k;
      } finally {
        for (let p = first; p < first + k; p++) unlock(locks, p);
      }
    } else if (wp) {
      // Write-protect a range while the Workers write into it.
      const k = 1 + Math.floor(random() * Math.min(64, pages));
      const first = Math.floor(random() * (pages - k + 1));
      try {
        uffd.writeProtect({ address: mem.range.address + BigInt(first * pageSize), length: k * pageSize });
        bouncer.protects++;
        bouncer.protectedPages += k;
      } catch (e) {
        if (e instanceof UffdError && e.code === "EAGAIN") bouncer.eagain++;
        else fail(`writeProtect: ${(e as Error).message}`);
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;

  // Stop the Workers (the handler keeps serving their last faults), then check everything.
  Atomics.store(control, CTRL.STOP, 1);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const allDone = await Promise.race([
    Promise.all(finished).then(() => true),
    new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), 30_000 * DEADLINE_SCALE)),
  ]);
  clearTimeout(timer);
  if (!allDone) fail(`the Workers did not stop within ${30 * DEADLINE_SCALE} s`);

  let totalInPages = 0;
  let verifiedPages = 0;
  if (allDone && handler.state === "running") {
    for (let p = 0; p < pages; p++) {
      const problem = check(memWords, p * pageWords, p, pageWords, o.workers, expected, pages);
      if (problem !== "") {
        if (failures.length < 10) fail(`final check: ${problem}`);
        continue;
      }
      verifiedPages++;
      totalInPages += memWords[p * pageWords + 1]!;
    }
  }
  const perWorker = Array.from({ length: o.workers }, (_, w) => workerStats[w * WSTAT.SIZE + WSTAT.increments]!);
  const sumOfWorkers = perWorker.reduce((a, b) => a + b, 0);
  if (verifiedPages === pages && totalInPages !== sumOfWorkers) {
    fail(`the pages count ${totalInPages} increments, the Workers made ${sumOfWorkers}`);
  }

  let policy: BouncePolicyStats | undefined;
  try {
    if (handler.state === "running") policy = handler.control("stats") as BouncePolicyStats;
  } catch (e) {
    fail(`control("stats"): ${(e as Error).message}`);
  }
  let stats: HandlerStats = handler.stats;
  try {
    stats = await handler.stop();
  } catch { /* reported through done */ }
  uffd.close(); // wakes anything still blocked, so the Workers can be terminated safely
  for (const worker of workers) worker.terminate();

  let racingWrites = 0;
  let racingReads = 0;
  for (let w = 0; w < o.workers; w++) {
    racingWrites += workerStats[w * WSTAT.SIZE + WSTAT.racingWrites]!;
    racingReads += workerStats[w * WSTAT.SIZE + WSTAT.racingReads]!;
  }
  const report: StressReport = {
    ok: failures.length === 0,
    failures,
    options: o,
    pageSize,
    wp,
    seconds: Math.round(seconds * 100) / 100,
    increments: sumOfWorkers,
    incrementsPerSecond: Math.round(sumOfWorkers / seconds),
    perWorker,
    racingWrites,
    racingReads,
    faults: stats.faults,
    missingFaults: stats.missing,
    wpFaults: stats.wp,
    faultsPerSecond: Math.round(stats.faults / seconds),
    resolved: stats.resolved,
    retried: stats.retried,
    vanished: stats.vanished,
    removeEvents: stats.events.remove,
    batches: stats.batches,
    largestBatch: stats.largestBatch,
    latency: { p50: quantile(stats, 0.5), p99: quantile(stats, 0.99), max: quantile(stats, 1) },
    policy,
    bouncer,
    verified: { pages: verifiedPages, totalInPages, sumOfWorkers },
  };
  return { report, workersStopped: allDone };
}

if (import.meta.main) {
  const options: StressOptions = { ...defaultOptions(), ...JSON.parse(Deno.args[0] ?? "{}") };
  const report = await bounceStress(options);
  console.log(JSON.stringify(report));
}
