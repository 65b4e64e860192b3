/**
 * LiveSnapshot scenarios in which the main isolate itself writes (or drops) the
 * memory being snapshotted — a broken snapshot would block it for good — run
 * one per process by `tests/live_snapshot_test.ts`, which kills the process at
 * its deadline. `deno run --allow-all tests/scenarios/live_snapshot.ts <name>`
 * prints one JSON line of observations and ends by itself.
 *
 * @module
 */

import { LiveSnapshot, LiveSnapshotError, Region } from "../../mod.ts";
import { fillPattern, PATTERN, wrongPages } from "../snapshot_patterns.ts";

const PAGE = Region.pageSize;
const WORDS = PAGE / 4;
type Observations = Record<string, unknown>;

/** xorshift32 */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

const scenarios: Record<string, () => Promise<Observations>> = {
  /** 256 MiB; the main isolate overwrites random pages while the snapshot runs. */
  async "main-writer"() {
    const PAGES = 65536;
    using mem = Region.map(PAGES * PAGE);
    const words = new Uint32Array(mem.bytes.buffer);
    fillPattern(words);
    using sink = Region.map(mem.length);
    const snap = await LiveSnapshot.take(mem, { sink: sink.bytes });
    const next = random(99);
    const written = new Map<number, number>();
    let writes = 0;
    // Synchronous writes: each one to a page not saved yet blocks the main isolate in a fault.
    while (snap.progress.savedPages < PAGES && writes < 200_000) {
      const word = (next() % PAGES) * WORDS + (next() & 1023);
      words[word] = writes + 1;
      written.set(word, writes + 1);
      writes++;
    }
    const result = await snap.done;
    let lost = 0;
    for (const [word, value] of written) if (words[word] !== value) lost++;
    return {
      wrong: wrongPages(new Uint32Array(sink.bytes.buffer)),
      lost,
      writes,
      byFault: result.byFault,
      saved: result.savedPages,
      pages: PAGES,
    };
  },

  /** The main isolate drops part of the target itself while the snapshot runs (its madvise waits). */
  async "main-dontneed"() {
    const PAGES = 16384;
    using mem = Region.map(PAGES * PAGE);
    const words = new Uint32Array(mem.bytes.buffer);
    fillPattern(words);
    using sink = Region.map(mem.length);
    const snap = await LiveSnapshot.take(mem, { sink: sink.bytes });
    const before = snap.progress.savedPages;
    const t0 = performance.now();
    mem.zap(mem.pages(PAGES / 2, PAGES / 2)); // held until every page is saved
    const madviseMs = performance.now() - t0;
    let outcome: string;
    let message = "";
    try {
      await snap.done;
      outcome = "right";
    } catch (e) {
      outcome = e instanceof LiveSnapshotError ? "failed clearly" : "failed otherwise";
      message = String((e as Error).message);
    }
    return {
      outcome,
      message,
      before,
      wrong: outcome === "right" ? wrongPages(new Uint32Array(sink.bytes.buffer)) : [],
      droppedReadsZero: words[(PAGES / 2) * WORDS] === 0 && words[PAGES * WORDS - 1] === 0,
      keptIntact: words[0] === PATTERN,
      removes: snap.progress.removes,
      held: snap.progress.heldChanges,
      madviseMs,
    };
  },

  /** A callback sink while the main isolate writes: pages queue up, and are delivered once it yields. */
  async "main-writer-callback"() {
    const PAGES = 8192;
    using mem = Region.map(PAGES * PAGE);
    const words = new Uint32Array(mem.bytes.buffer);
    fillPattern(words);
    const image = new Uint32Array(PAGES * WORDS);
    const calls = new Uint8Array(PAGES);
    const snap = await LiveSnapshot.take(mem, {
      sink: (page, bytes) => {
        calls[page]++;
        image.set(new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4), page * WORDS);
      },
      stagingPages: 256,
    });
    const next = random(5);
    let writes = 0;
    const deliveredBefore = calls.reduce((n, c) => n + c, 0);
    for (; writes < 20_000; writes++) words[(next() % PAGES) * WORDS + (next() & 1023)] = writes + 1;
    const deliveredWhileWriting = calls.reduce((n, c) => n + c, 0) - deliveredBefore;
    const result = await snap.done;
    return {
      wrong: wrongPages(image),
      once: calls.every((c) => c === 1),
      deliveredWhileWriting,
      byFault: result.byFault,
      writes,
    };
  },
};

const name = Deno.args[0] ?? "";
const scenario = scenarios[name];
if (!scenario) throw new Error(`unknown scenario ${JSON.stringify(name)}: ${Object.keys(scenarios).join(", ")}`);
console.log(JSON.stringify(await scenario()));
