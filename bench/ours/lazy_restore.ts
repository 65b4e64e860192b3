/**
 * Lazy restore by random touches, our side: a `LazyRegion` of `--bytes` whose
 * source is an in-memory image (a `Region` filled with a pattern, passed as
 * `{ address, length }`: each page is copied straight from it with `UFFDIO_COPY`);
 * the main isolate reads one byte of distinct pages in a random order (the same
 * permutation as the C side: Fisher–Yates with a 32-bit LCG, seed 12345), each
 * read a missing fault served by the region's handler Worker. The first
 * `--warmup` touches are untimed (the Worker's JIT warms up), the next
 * `--touches` are timed: the time per op is the time per fault, as the toucher
 * sees it. Every byte read is checked against the image, and the handler must
 * have served exactly one fault per touch. Pairs with
 * `bench/reference/lazy_restore.c` (a `UFFDIO_COPY` handler thread).
 *
 * `--impl`:
 * - `default`: `LazyRegion.open(image)` with default options (the handler keeps
 *   reading for 30 µs after a fault before it sleeps, on a machine with more than
 *   one CPU);
 * - `spin0`: the same with `spinMicros: 0` (it sleeps in `poll()` at once, as the
 *   C handler does).
 *
 * ```sh
 * deno run -A bench/ours/lazy_restore.ts --impl=default --bytes=67108864 --touches=8192 --warmup=1024
 * ```
 *
 * @module
 */

import { LazyRegion, Region } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["default", "spin0"] as const);
const bytes = args.number("bytes", 64 * 2 ** 20);
const touches = args.number("touches", 8192);
const warmup = args.number("warmup", 1024);
const pageSize = Region.pageSize;
const pages = bytes / pageSize;
check(warmup + touches <= pages, "--warmup + --touches must not exceed the pages of --bytes");

// The image: word i holds (i × 2654435761) mod 2^32 | 1 — no zero page, as in the C side.
using image = mapWithoutThp(bytes);
{
  const words = new Uint32Array(image.bytes.buffer);
  for (let i = 0; i < words.length; i++) words[i] = (Math.imul(i, 2654435761) >>> 0) | 1;
}

// The order of the touches: a random permutation of the pages (the same on both sides).
const offsets = new Float64Array(warmup + touches);
{
  const order = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) order[i] = i;
  let s = 12345;
  for (let i = pages - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  for (let i = 0; i < offsets.length; i++) offsets[i] = order[i]! * pageSize + 64;
}

await using lazy = await LazyRegion.open(
  { address: image.address, length: bytes },
  impl === "spin0" ? { spinMicros: 0 } : {},
);
const memory = lazy.bytes;
const want = image.bytes;

function touch(from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum += memory[offsets[i]!]!;
  return sum;
}

const stopwatch = new Stopwatch();
let sum = touch(0, warmup);
stopwatch.start();
sum += touch(warmup, warmup + touches);
stopwatch.stop();

let expected = 0;
for (let i = 0; i < offsets.length; i++) expected += want[offsets[i]!]!;
check(sum === expected, `the bytes read sum to ${sum}, the image's to ${expected}`);
const stats = lazy.stats;
check(stats.faults === warmup + touches, `the handler served ${stats.faults} faults for ${warmup + touches} touches`);
emit({
  bench: "lazy_restore",
  impl: `ours:${impl}`,
  case: "random touch",
  bytes,
  ops: touches,
  extra: { warmup, wakeups: stats.handler.wakeups, batches: stats.handler.batches },
}, stopwatch);
