/**
 * Setups shared by the `Deno.bench` suites and the `bench/ours/*.ts` programs,
 * each the same as its C reference does it: private anonymous memory without
 * transparent huge pages (so every scan walks 4 KiB PTEs), a fraction of pages
 * made resident, and the count of threads asleep in a userfaultfd fault.
 *
 * @example
 * ```ts
 * import { mapWithoutThp, populateFraction } from "./fixtures.ts";
 * using mem = mapWithoutThp(1 << 20);
 * console.log(populateFraction(mem, 0.01)); // 3: pages 0, 100 and 200 of 256
 * ```
 *
 * @module
 */

import { MADV_NOHUGEPAGE, MADV_POPULATE_WRITE, Region } from "../../mod.ts";

/**
 * Where every benchmark's memory starts, on both sides: a 1 GiB boundary (`MAP_ALIGN` in `bench.h`). Where a range
 * starts decides how much of the page tables a walk over it visits — a C `PAGEMAP_SCAN` of 1 GiB never touched took
 * 4.8–10 µs from process to process where `mmap` put it, 1.8 µs from a boundary — so both sides start on one.
 */
export const MAP_ALIGN = 2 ** 30;

/**
 * `Region.map(bytes)` (private, `MAP_NORESERVE`) on a {@linkcode MAP_ALIGN} boundary, with `MADV_NOHUGEPAGE`, as
 * `map_anon()` in `bench.h`.
 */
export function mapWithoutThp(bytes: number): Region {
  const mem = Region.map(bytes, { align: MAP_ALIGN });
  mem.advise(MADV_NOHUGEPAGE);
  return mem;
}

/**
 * Makes `fraction` of the pages resident with `MADV_POPULATE_WRITE`: all of them
 * (1), every `round(1 / fraction)`-th page (between 0 and 1: one region per
 * page, the most regions that fraction can make), or none (0). Returns the
 * number of resident pages.
 */
export function populateFraction(mem: Region, fraction: number): number {
  if (fraction >= 1) {
    mem.advise(MADV_POPULATE_WRITE);
    return mem.pageCount;
  }
  if (fraction <= 0) return 0;
  const stride = Math.round(1 / fraction);
  let count = 0;
  for (let i = 0; i < mem.pageCount; i += stride, count++) mem.advise(MADV_POPULATE_WRITE, mem.pages(i, 1));
  return count;
}

/** How many threads of this process sleep in `handle_userfault` (from `/proc/self/task/<tid>/wchan`). */
export function blockedInFault(): number {
  let count = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    try {
      if (Deno.readTextFileSync(`/proc/self/task/${task.name}/wchan`) === "handle_userfault") count++;
    } catch { /* the thread exited meanwhile */ }
  }
  return count;
}

/** Resolves once `count` threads sleep in a userfaultfd fault; rejects after `ms`. */
export async function waitBlocked(count: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (blockedInFault() < count) {
    if (Date.now() > deadline) throw new Error(`${count} writers did not all block in a fault within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}
