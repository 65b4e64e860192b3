/**
 * Page sources for `LazyRegion` tests, imported in the handler's Worker: the
 * default export fills each page with {@linkcode fillPattern}, throws for the
 * pages listed in `failAt`, and with `async` returns a promise. `gated` holds one
 * page until the main side sets a flag in shared memory (or for `ms`), to keep a
 * fault pending.
 *
 * @module
 */

import type { LazySourceInfo, PageFiller } from "../../mod.ts";

/** Word `k` of page `page`: a value no other word of the region has. */
export function patternWord(page: number, k: number, seed = 0): number {
  return ((page * 1024 + k) ^ seed ^ 0x5a5a0000) >>> 0;
}

/** Fills `into` (whole pages, from page `first`) with the pattern. */
export function fillPattern(into: Uint8Array, first: number, seed = 0): void {
  const words = new Uint32Array(into.buffer, into.byteOffset, into.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = patternWord(first + (i >>> 10), i & 1023, seed);
}

/** Options of the default source. */
export interface PatternOptions {
  /** Pages whose read throws. */
  failAt?: number[];
  /** Return a promise (resolved after a macrotask) instead of filling synchronously. */
  async?: boolean;
  /** The pattern's seed. */
  seed?: number;
}

/** The factory: a function filling page `index` with the pattern, or throwing for `failAt`. */
export default function pattern(options: PatternOptions, info: LazySourceInfo): PageFiller {
  const fail = new Set(options.failAt ?? []);
  const seed = options.seed ?? 0;
  if (info.pageSize !== 4096) throw new Error(`expected 4 KiB pages, not ${info.pageSize}`);
  const fillPage = (index: number, page: Uint8Array) => {
    if (fail.has(index)) throw new Error(`the test source refuses page ${index}`);
    fillPattern(page, index, seed);
  };
  if (!options.async) return fillPage;
  return (index, page) =>
    new Promise((resolve, reject) =>
      setTimeout(() => {
        try {
          fillPage(index, page);
          resolve();
        } catch (e) {
          reject(e);
        }
      }, 0)
    );
}

/** Options of {@linkcode gated}. */
export interface GatedOptions {
  /** The page to hold. */
  page: number;
  /** An `Int32Array`'s buffer: word 0 is set to 1 when the page is asked for; the page is released when word 1 becomes 1. */
  gate: SharedArrayBuffer;
  /** The longest the page is held (ms). */
  ms: number;
}

/** A pattern source that blocks its Worker on one page (synchronously, as a slow disk would). */
export function gated(options: GatedOptions, _info: LazySourceInfo): PageFiller {
  const gate = new Int32Array(options.gate);
  return (index, page) => {
    if (index === options.page) {
      Atomics.store(gate, 0, 1);
      Atomics.notify(gate, 0);
      Atomics.wait(gate, 1, 0, options.ms);
    }
    fillPattern(page, index);
  };
}
