/**
 * What the live-snapshot tests write and check: a page-index pattern (every
 * 32-bit word of page `i` is `PATTERN + i`), a Worker that keeps overwriting
 * random pages during a snapshot (`workers/generation_writer.ts`), and the checks
 * that a snapshot equals the pattern and that the memory afterwards holds every
 * value the writer left.
 *
 * @module
 */

import { PAGE_SIZE } from "../ffi/_libc.ts";
import { within } from "./helpers.ts";

/** The pattern's base: far from the writer's values (small counters). */
export const PATTERN = 0xa0000000;
const WORDS = PAGE_SIZE / 4;

/** Fills every page of `words` whose number passes `which` with the pattern. */
export function fillPattern(words: Uint32Array, which: (page: number) => boolean = () => true): number {
  const pages = words.length / WORDS;
  let filled = 0;
  for (let i = 0; i < pages; i++) {
    if (!which(i)) continue;
    words.fill((PATTERN + i) >>> 0, i * WORDS, (i + 1) * WORDS);
    filled++;
  }
  return filled;
}

/**
 * The pages of a snapshot (`words`, page `i` at word `i × 1024`) that differ
 * from the pattern (or from zeros where `zero(page)`), at most `limit` of them.
 */
export function wrongPages(words: Uint32Array, zero: (page: number) => boolean = () => false, limit = 10): number[] {
  const pages = words.length / WORDS;
  const wrong: number[] = [];
  for (let i = 0; i < pages && wrong.length < limit; i++) {
    const expected = zero(i) ? 0 : (PATTERN + i) >>> 0;
    for (let w = i * WORDS, end = w + WORDS; w < end; w++) {
      if (words[w] !== expected) {
        wrong.push(i);
        break;
      }
    }
  }
  return wrong;
}

/** A `workers/generation_writer.ts`: start it, stop it, then read what it wrote. */
export interface GenerationWriter {
  /** Lets it write (it is ready and waiting). */
  go(): void;
  /** Writes so far. */
  readonly writes: () => number;
  /** Stops the writer and resolves with its write count. */
  stop(): Promise<number>;
  /** Words (index → value) the writer left, last write wins. */
  expected(): Map<number, number>;
  /** Pages the writer touched. */
  touched(): Set<number>;
}

/** Starts a Worker that, after `go()`, overwrites random pages of `[address, address + pages × P)` until stopped. */
export async function startGenerationWriter(
  address: bigint,
  pages: number,
  seed = 7,
  capacity = 1_000_000,
): Promise<GenerationWriter> {
  const worker = new Worker(new URL("./workers/generation_writer.ts", import.meta.url), { type: "module" });
  const control = new Int32Array(new SharedArrayBuffer(8));
  const log = new Int32Array(new SharedArrayBuffer(4 * (1 + 2 * capacity)));
  const ready = Promise.withResolvers<void>();
  const finished = Promise.withResolvers<number>();
  worker.onmessage = (e: MessageEvent<{ ready?: boolean; writes?: number }>) => {
    if (e.data.ready) ready.resolve();
    else finished.resolve(e.data.writes!);
  };
  worker.postMessage({ address, pages, control: control.buffer, log: log.buffer, seed });
  await within(ready.promise, 20_000, "the generation writer to start");
  let count = 0;
  return {
    go() {
      Atomics.store(control, 0, 1);
      Atomics.notify(control, 0);
    },
    writes: () => Atomics.load(log, 0),
    async stop() {
      Atomics.store(control, 1, 1);
      Atomics.store(control, 0, 1);
      Atomics.notify(control, 0);
      try {
        return count = await within(finished.promise, 20_000, "the generation writer");
      } finally {
        worker.terminate();
      }
    },
    expected() {
      const words = new Map<number, number>();
      for (let n = 0; n < count; n++) words.set(log[1 + 2 * n]!, log[2 + 2 * n]!);
      return words;
    },
    touched() {
      const touched = new Set<number>();
      for (let n = 0; n < count; n++) touched.add(Math.floor(log[1 + 2 * n]! / WORDS));
      return touched;
    },
  };
}

/** Waits until `check()` holds, yielding to the event loop (bounded). */
export async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 0));
  }
}
