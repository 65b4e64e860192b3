/**
 * Missing faults served by random touches — a lazy restore — our side: a `LazyRegion` of `--bytes` whose
 * source is an in-memory image (a `Region` filled with a pattern, passed as
 * `{ address, length }`: each page is copied straight from it with `UFFDIO_COPY`);
 * the main isolate reads one byte of distinct pages in a random order (the same
 * permutation as the C side: Fisher–Yates with a 32-bit LCG, seed 12345), each
 * read a missing fault served by the region's handler Worker. The first
 * `--warmup` touches are untimed (the Worker's JIT warms up), the next
 * `--touches` are timed: the time per op is the time per fault, as the toucher
 * sees it. Every byte read is checked against the image, and the handler must
 * have served exactly one fault per touch. Pairs with
 * `bench/reference/lazy_restore.c` (a `UFFDIO_COPY` handler thread, which spins
 * as long with `--spin-us=30`: `bench/pairs.ts` compares like with like).
 *
 * `--impl`:
 * - `default`: `LazyRegion.open(image)` with default options (the handler keeps
 *   reading for 30 µs after a fault before it sleeps, on a machine with more than
 *   one CPU);
 * - `spin0`: the same with `spinMicros: 0` (it sleeps in `poll()` at once, as the
 *   C handler does);
 * - `copyFrom`: no `LazyRegion`, the layer below it: memory registered for missing
 *   faults and a `FaultHandler` with the built-in `policies.copyFrom(image)`
 *   (default options: it spins 30 µs too, on more than one CPU);
 * - `zerofill`: the same with `policies.zerofill()` (`UFFDIO_ZEROPAGE`), run with
 *   `--fill=zero` (the C side then maps the zero page too, and every byte read is 0).
 *
 * ```sh
 * deno run -A bench/ours/lazy_restore.ts --impl=default --bytes=67108864 --touches=8192 --warmup=1024
 * ```
 *
 * @module
 */

import { FaultHandler, LazyRegion, policies, Region, Userfaultfd } from "../../mod.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["default", "spin0", "copyFrom", "zerofill"] as const);
const fill = args.choice("fill", ["copy", "zero"] as const);
check(
  (impl === "zerofill") === (fill === "zero"),
  "--impl=zerofill goes with --fill=zero, the others with --fill=copy",
);
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

/** The memory to touch and how many faults its handler has served; closed at the end. */
interface Served extends AsyncDisposable {
  bytes: Uint8Array;
  faults(): number;
  wakeups(): number;
}

async function lazyRegion(): Promise<Served> {
  const lazy = await LazyRegion.open(
    { address: image.address, length: bytes },
    impl === "spin0" ? { spinMicros: 0 } : {},
  );
  return {
    bytes: lazy.bytes,
    faults: () => lazy.stats.faults,
    wakeups: () => lazy.stats.handler.wakeups,
    [Symbol.asyncDispose]: () => lazy.close(),
  };
}

async function faultHandler(): Promise<Served> {
  const mem = mapWithoutThp(bytes);
  const uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const handler = await FaultHandler.start(uffd, impl === "zerofill" ? policies.zerofill() : policies.copyFrom(image));
  return {
    bytes: mem.bytes,
    faults: () => handler.stats.missing,
    wakeups: () => handler.stats.wakeups,
    [Symbol.asyncDispose]: async () => {
      await handler.stop();
      uffd.close();
      mem.unmap();
    },
  };
}

await using served = impl === "default" || impl === "spin0" ? await lazyRegion() : await faultHandler();
const memory = served.bytes;
const want = fill === "zero" ? new Uint8Array(bytes) : image.bytes;

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
check(
  served.faults() === warmup + touches,
  `the handler served ${served.faults()} faults for ${warmup + touches} touches`,
);
emit({
  bench: "lazy_restore",
  impl: `ours:${impl}`,
  case: `random touch, fill=${fill}`,
  bytes,
  ops: touches,
  extra: { warmup, handler_wakeups: served.wakeups() },
}, stopwatch);
