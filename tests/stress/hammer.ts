/// <reference lib="deno.worker" />
/**
 * A stress Worker: increments its own slot of random pages of the stressed region
 * under each page's lock, checking the whole page each time (see
 * `page_format.ts`); between increments, now and then, touches a random page
 * without the lock (a racing read, or a write to its scratch word) so that several
 * threads fault on the same page at once. Every access may block in a missing or
 * write-protect fault until the handler resolves it.
 *
 * In: one message with the run's shared arrays. Out: `{ ready }` on arrival, `{ error }`
 * at the first integrity failure (after setting `FAILED`), and `{ done }` once `STOP` is set.
 *
 * @module
 */

import { bufferAt } from "../../ffi/_libc.ts";
import { check, CTRL, lock, prng, SCRATCH, seal, SLOTS, TOTAL, unlock, WSTAT } from "./page_format.ts";

/** What the Worker is given. */
export interface HammerInit {
  index: number;
  workers: number;
  address: bigint;
  pageSize: number;
  pages: number;
  seed: number;
  racing: boolean;
  locks: SharedArrayBuffer;
  expected: SharedArrayBuffer;
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
}

self.onmessage = (e: MessageEvent<HammerInit>) => {
  const init = e.data;
  self.postMessage({ ready: true }); // the run's clock starts once every Worker is here
  const { index: me, workers, pages, pageSize } = init;
  const pageWords = pageSize / 4;
  const words = new Uint32Array(bufferAt(init.address, pages * pageSize));
  const locks = new Int32Array(init.locks);
  const expected = new Uint32Array(init.expected);
  const control = new Int32Array(init.control);
  const stats = new Float64Array(init.stats, me * WSTAT.SIZE * 8, WSTAT.SIZE);
  const random = prng(init.seed);
  const row = me * pages;
  let increments = 0;
  let racingWrites = 0;
  let racingReads = 0;
  let sink = 0;
  for (let round = 0;; round++) {
    if ((round & 63) === 0) {
      stats[WSTAT.increments] = increments;
      stats[WSTAT.racingWrites] = racingWrites;
      stats[WSTAT.racingReads] = racingReads;
      if (Atomics.load(control, CTRL.STOP) !== 0) break;
    }
    const r = random();
    const page = Math.floor(random() * pages);
    const base = page * pageWords;
    if (init.racing && r < 0.04) {
      words[base + SCRATCH + me] = round; // may fault (missing or write-protect) alongside others
      racingWrites++;
      continue;
    }
    if (init.racing && r < 0.08) {
      sink ^= words[base + TOTAL]!; // a read: may fault (missing) alongside others
      racingReads++;
      continue;
    }
    lock(locks, page);
    const problem = check(words, base, page, pageWords, workers, expected, pages);
    if (problem !== "") {
      unlock(locks, page);
      Atomics.store(control, CTRL.FAILED, 1);
      Atomics.store(control, CTRL.STOP, 1);
      self.postMessage({ error: `Worker ${me}, increment ${increments + 1}: ${problem}` });
      break;
    }
    words[base + SLOTS + me]++;
    expected[row + page]++;
    seal(words, base, page, words[base + TOTAL]! + 1, pageWords);
    unlock(locks, page);
    increments++;
  }
  stats[WSTAT.increments] = increments;
  stats[WSTAT.racingWrites] = racingWrites;
  stats[WSTAT.racingReads] = racingReads;
  stats[WSTAT.done] = 1;
  self.postMessage({ done: true, increments, sink: sink & 1 });
};
