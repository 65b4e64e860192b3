/**
 * `deno task bench`: lazy restore. Each iteration opens a `LazyRegion` of 64 MiB
 * (untimed), then the main isolate reads one byte of 2048 pages in a random
 * order — 2048 fault round trips through the handler's Worker — (timed), then
 * closes it (untimed): divide by 2048 for the cost of one fault, from the
 * toucher's point of view (the first faults of a fresh Worker run before its JIT
 * has warmed up). The baseline is the built-in `copyFrom` policy over the same
 * bytes, whose handler sleeps after each fault; a LazyRegion's spins 30 µs by
 * default (`spinMicros: 0` is measured too). A second group times a whole
 * prefetch, from `open()` to `ready`. The C comparison is `lazy_restore` in `bench/compare.ts`.
 *
 * @module
 */

import {
  Checkpoint,
  FaultHandler,
  LazyRegion,
  type LazyRegionOptions,
  type LazySource,
  policies,
  Region,
  Userfaultfd,
} from "../mod.ts";

const PAGE = Region.pageSize;
const PAGES = (64 << 20) / PAGE;
const TOUCHES = 2048;

// The sources, made once: a pattern with no zero page, as bytes, a file and a one-file chain.
const dir = Deno.makeTempDirSync({ prefix: "uffd-lazy-bench-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const image = new Uint8Array(new SharedArrayBuffer(PAGES * PAGE));
// The same bytes in a Region, for the built-in copyFrom (given a view of a large SharedArrayBuffer, its
// Worker would take seconds to start: Deno clones such a view element by element).
const imageRegion = Region.map(PAGES * PAGE);
{
  using mem = Region.map(PAGES * PAGE);
  const words = new Uint32Array(mem.bytes.buffer);
  for (let i = 0; i < words.length; i++) words[i] = ((i * 2654435761) >>> 0) | 1;
  using ckpt = Checkpoint.start(mem);
  ckpt.write(`${dir}/base`);
  image.set(mem.bytes);
  imageRegion.bytes.set(mem.bytes);
  Deno.writeFileSync(`${dir}/image`, mem.bytes);
}
const chain = [`${dir}/base`];

// A random order of distinct pages, the same for every variant.
const offsets = new Int32Array(TOUCHES);
{
  const order = Array.from({ length: PAGES }, (_, i) => i);
  let s = 12345;
  for (let i = PAGES - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  for (let i = 0; i < TOUCHES; i++) offsets[i] = order[i]! * PAGE + 64;
}

function touch(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < offsets.length; i++) sum += bytes[offsets[i]!]!;
  return sum;
}

function restore(source: LazySource, options: LazyRegionOptions = {}): (b: Deno.BenchContext) => Promise<void> {
  return async (b) => {
    const lazy = await LazyRegion.open(source, options);
    const bytes = lazy.bytes;
    b.start();
    touch(bytes);
    b.end();
    if (lazy.stats.faults !== TOUCHES) throw new Error(`${lazy.stats.faults} faults served`);
    await lazy.close();
  };
}

const group = `lazy restore, ${TOUCHES} random faults`;
const runs = { n: 12, warmup: 2 };
Deno.bench("FaultHandler + copyFrom(a Region)", { group, baseline: true, ...runs }, async (b) => {
  const mem = Region.map(PAGES * PAGE);
  const uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const handler = await FaultHandler.start(uffd, policies.copyFrom(imageRegion));
  const bytes = mem.bytes;
  b.start();
  touch(bytes);
  b.end();
  await handler.stop();
  uffd.close();
  mem.unmap();
});
Deno.bench("LazyRegion, shared bytes", { group, ...runs }, restore(image));
Deno.bench("LazyRegion, file", { group, ...runs }, restore({ file: `${dir}/image` }));
Deno.bench("LazyRegion, checkpoint (CRC checked)", { group, ...runs }, restore({ checkpoint: chain }));
Deno.bench("LazyRegion, checkpoint (verify: false)", { group, ...runs }, restore({ checkpoint: chain, verify: false }));
Deno.bench("LazyRegion, checkpoint, fill: move", { group, ...runs }, restore({ checkpoint: chain }, { fill: "move" }));
Deno.bench("LazyRegion, checkpoint, memfd", { group, ...runs }, restore({ checkpoint: chain }, { memory: "memfd" }));
Deno.bench(
  "LazyRegion, file, spinMicros: 0",
  { group, ...runs },
  restore({ file: `${dir}/image` }, { spinMicros: 0 }),
);

function prefetch(source: LazySource, options: LazyRegionOptions = {}): (b: Deno.BenchContext) => Promise<void> {
  return async (b) => {
    b.start();
    const lazy = await LazyRegion.open(source, { ...options, prefetch: true });
    await lazy.ready;
    b.end();
    await lazy.close();
  };
}

const whole = "prefetch 64 MiB, open() to ready";
const few = { n: 6, warmup: 1 };
Deno.bench("shared bytes", { group: whole, baseline: true, ...few }, prefetch(image));
Deno.bench("file", { group: whole, ...few }, prefetch({ file: `${dir}/image` }));
Deno.bench("checkpoint (CRC checked)", { group: whole, ...few }, prefetch({ checkpoint: chain }));
Deno.bench("checkpoint (verify: false)", { group: whole, ...few }, prefetch({ checkpoint: chain, verify: false }));
Deno.bench(
  "checkpoint, 256-page runs",
  { group: whole, ...few },
  prefetch({ checkpoint: chain }, { prefetchChunk: 256 }),
);
Deno.bench("checkpoint, fill: move", { group: whole, ...few }, prefetch({ checkpoint: chain }, { fill: "move" }));
Deno.bench("checkpoint, memfd", { group: whole, ...few }, prefetch({ checkpoint: chain }, { memory: "memfd" }));
