/**
 * The content of a stress page, the per-page locks, and the checks (see
 * `tests/stress/README.md`). Every page of the stressed region carries, in 32-bit
 * words:
 *
 * - `INDEX`: its own page number (a page copied to the wrong place is caught);
 * - `TOTAL`: the number of increments made to it;
 * - `CRC`: the CRC-32C of `INDEX`, `TOTAL` and the slots;
 * - `MAGIC`: a constant (a zero page — content lost — is caught);
 * - `SLOTS`: one counter per Worker, which only that Worker increments;
 * - `SCRATCH`: one word per Worker written without the lock (racing faults; never checked);
 * - the body: every other word (1,024 of them per page, spread over the page) is a
 *   function of the page number and `TOTAL`, so a page assembled from two versions
 *   — a torn copy — is caught.
 *
 * An increment changes the Worker's slot, `TOTAL`, the CRC and the whole body,
 * under the page's lock; the Worker also counts it in its row of a shared
 * `expected` array (the kernel test's `count_verify`) under the same lock, so that
 * whoever holds the lock can check every slot against what was really done.
 *
 * @module
 */

import { crc32cWords } from "../../checkpoint/crc32c.ts";

/** Word offsets in a page. */
export const INDEX = 0;
export const TOTAL = 1;
export const CRC = 2;
export const MAGIC = 3;
export const SLOTS = 8;
/** At most this many Workers (slots per page). */
export const MAX_WORKERS = 64;
export const SCRATCH = SLOTS + MAX_WORKERS;
export const BODY = SCRATCH + MAX_WORKERS;
/** Words of the body written per page (spread over huge pages). */
export const BODY_WORDS = 1024;
export const MAGIC_VALUE = 0x55464644; // "UFFD"

/** The body word stride for a page size: 1 for 4 KiB pages, larger for huge pages. */
export function bodyStride(pageSize: number): number {
  return Math.max(1, Math.floor(pageSize / 4 / BODY_WORDS));
}

function bodyWord(page: number, total: number, k: number): number {
  return (Math.imul(page + 1, 0x9e3779b1) ^ Math.imul(total + 1, 0x85ebca6b) ^ k) >>> 0;
}

function checksum(words: Uint32Array, base: number): number {
  return crc32cWords(words, base + SLOTS, MAX_WORKERS, crc32cWords(words, base + INDEX, 2));
}

/** Writes the header, CRC and body of page `page` (at word `base`) for its current slots. */
export function seal(words: Uint32Array, base: number, page: number, total: number, pageWords: number): void {
  words[base + INDEX] = page;
  words[base + TOTAL] = total;
  words[base + MAGIC] = MAGIC_VALUE;
  words[base + CRC] = checksum(words, base);
  const stride = Math.max(1, Math.floor(pageWords / BODY_WORDS));
  for (let k = BODY; k < pageWords; k += stride) words[base + k] = bodyWord(page, total, k);
}

/** Writes the initial image of page `page` (no increments yet). */
export function initialPage(words: Uint32Array, base: number, page: number, pageWords: number): void {
  words.fill(0, base, base + pageWords);
  seal(words, base, page, 0, pageWords);
}

/**
 * Checks page `page` (at word `base`); with `expected` (`workers` rows of `pages`
 * counts), also every slot against the increments made. Returns "" when intact,
 * otherwise what is wrong.
 */
export function check(
  words: Uint32Array,
  base: number,
  page: number,
  pageWords: number,
  workers: number,
  expected?: Uint32Array,
  pages = 0,
): string {
  if (words[base + MAGIC] !== MAGIC_VALUE) {
    return `page ${page}: no magic (0x${words[base + MAGIC]!.toString(16)}): its content was lost`;
  }
  if (words[base + INDEX] !== page) return `page ${page}: holds page ${words[base + INDEX]}`;
  const total = words[base + TOTAL]!;
  let sum = 0;
  for (let w = 0; w < workers; w++) sum += words[base + SLOTS + w]!;
  if (sum !== total) return `page ${page}: slots add up to ${sum}, total says ${total}`;
  if (words[base + CRC] !== checksum(words, base)) return `page ${page}: checksum mismatch (total ${total})`;
  if (expected) {
    for (let w = 0; w < workers; w++) {
      const have = words[base + SLOTS + w]!;
      const want = expected[w * pages + page]!;
      if (have !== want) {
        return `page ${page}: Worker ${w} made ${want} increments, the page holds ${have} (${
          have < want ? "lost" : "invented"
        })`;
      }
    }
  }
  const stride = Math.max(1, Math.floor(pageWords / BODY_WORDS));
  for (let k = BODY; k < pageWords; k += stride) {
    if (words[base + k] !== bodyWord(page, total, k)) {
      return `page ${page}: torn: body word ${k} is not that of total ${total}`;
    }
  }
  return "";
}

/**
 * Locks in a SharedArrayBuffer, one `Int32` per page: 0 free, 1 taken, 2 taken
 * with waiters (a futex mutex). Waits are bounded so that a waiter notices `stop`.
 */
export function lock(locks: Int32Array, page: number): void {
  let c = Atomics.compareExchange(locks, page, 0, 1);
  if (c === 0) return;
  for (let spin = 0; spin < 64; spin++) {
    c = Atomics.compareExchange(locks, page, 0, 1);
    if (c === 0) return;
  }
  if (c !== 2) c = Atomics.exchange(locks, page, 2);
  while (c !== 0) {
    Atomics.wait(locks, page, 2, 50);
    c = Atomics.exchange(locks, page, 2);
  }
}

/** Releases a lock taken by {@linkcode lock}. */
export function unlock(locks: Int32Array, page: number): void {
  if (Atomics.exchange(locks, page, 0) === 2) Atomics.notify(locks, page, 1);
}

/** A small seeded PRNG (xorshift32) returning numbers in `[0, 1)`. */
export function prng(seed: number): () => number {
  let s = (seed >>> 0) || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** Slots of a Worker's statistics row (a Float64Array in a SharedArrayBuffer). */
export const WSTAT = { increments: 0, racingWrites: 1, racingReads: 2, lockWaits: 3, done: 4, SIZE: 8 } as const;

/** Slots of the run's control array (an Int32Array in a SharedArrayBuffer). */
export const CTRL = { STOP: 0, FAILED: 1, SIZE: 4 } as const;
