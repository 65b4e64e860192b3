/**
 * The demo's point-in-time check of a live snapshot: is the image, byte for byte,
 * what the writer's memory held at one instant — right after one of the writer's
 * stores — and is that instant between `take()` being called and `take()`
 * returning?
 *
 * **Why the writer's log can answer that.** The memory starts as zeros and only
 * the writer writes it, one 8-byte stamp per store (`_demo_writer.ts`); the pass
 * log says which pages each pass stamped, in order, and where. So the memory
 * after any store can be replayed exactly ({@linkcode replay}). A snapshot taken
 * at one instant, while a single thread writes, holds every store of that thread
 * up to some point and none after it. The snapshot's mark (`started` raised before
 * `take()`, `done` after it returned) bounds the point:
 *
 * - a pass that read `started` below the mark after its last store ended before
 *   `take()` began: all of it must be in the image;
 * - a pass that read `done` at or above the mark before its first store began
 *   after `take()` returned: none of it may be.
 *
 * The check replays the memory up to the end of the last pass of the first kind,
 * then store by store through the passes in between, keeping count of the 8-byte
 * slots where the replay and the image differ (one slot changes per store). The
 * image is consistent when the count reaches zero at one of these instants. Each
 * store changes its slot (a stamp names its pass), so at most one instant can
 * match. Nothing is assumed about timing: the log's loads and stores order
 * everything, so a `✓` cannot be wrong; a torn image — a page saved after a write
 * the snapshot should not hold, or before one it should, or a page lost or
 * misplaced — matches no instant, and the check names the pages that differ from
 * the closest one.
 *
 * @example
 * ```ts
 * import { checkSnapshot, replay } from "./_demo_snapshot_check.ts";
 * // Two passes of 2 pages; the first ended before take() began (after 0 < mark 1), the second
 * // ran during it, the third began after it returned (before 1 >= mark 1).
 * const passes = [{ before: 0, after: 0 }, { before: 0, after: 1 }, { before: 1, after: 1 }];
 * const log = { count: 3, at: (g: number) => ({ ...passes[g - 1]!, runs: [0, 2, 1] }) };
 * const image = replay(log, 4096, 2 * 4096, { pass: 2, store: 1 }); // page 0 stamped twice, page 1 once
 * console.log(checkSnapshot(image, log, 1, 4096).instant); // { pass: 2, store: 1, storesInPass: 2, totalStores: 3 }
 * image[4096 + 16] = 1; // page 1 holds a byte no store put there
 * console.log(checkSnapshot(image, log, 1, 4096).closest?.pages); // [1]
 * ```
 *
 * @module
 */

import { stampOffset } from "./_demo_pattern.ts";
import type { PassLog } from "./_demo_writer.ts";

/** An instant in the writer's life: right after store `store` of pass `pass`. */
export interface Instant {
  /** The pass (0 with `store` 0: before the first). */
  pass: number;
  /** Stores of that pass made by then (`storesInPass` at its end). */
  store: number;
}

/** An instant with its place among the writer's stores. */
export interface PlacedInstant extends Instant {
  /** Stores that pass makes in all. */
  storesInPass: number;
  /** Stores the writer had made by then, all passes. */
  totalStores: number;
}

/** What {@linkcode checkSnapshot} found. */
export interface SnapshotCheck {
  /** The image is the memory at one instant of the window. */
  ok: boolean;
  /** Why there is no verdict (`ok` is then `false`): the log does not reach past the snapshot. */
  reason?: string;
  /** The instant the image shows, or `null`. */
  instant: PlacedInstant | null;
  /** The instants that could be the snapshot's, from the mark. */
  window: {
    /** The end of this pass, the first candidate: every pass up to it ended before `take()` began. */
    afterPass: number;
    /** The end of this pass, the last candidate: the next one began after `take()` returned. */
    untilPass: number;
    /** Passes that ran, at least in part, while `take()` did. */
    passes: number;
    /** Stores those passes made: the candidates after the first. */
    stores: number;
  };
  /** The newest pass whose stamp is in the image (0: none). */
  newestStamp: number;
  /** Bytes of the image compared with the replayed memory. */
  bytes: number;
  /** When no instant matches: the closest one, the pages that differ from it, and the 8-byte slots that do. */
  closest?: { instant: PlacedInstant; pages: number[]; slots: number };
}

/** Pages listed in {@linkcode SnapshotCheck.closest} at most. */
const MAX_LISTED = 16;

/**
 * The stores of one pass, in order: calls `store(slot, page)` for each (`slot`:
 * the index of its 8-byte slot in the memory) until it returns `false`.
 */
function forEachStore(
  log: PassLog,
  pass: number,
  pageSize: number,
  store: (slot: number, page: number) => boolean,
): void {
  const runs = log.at(pass).runs;
  const offset = stampOffset(pass, pageSize) / 8;
  const perPage = pageSize / 8;
  for (let i = 0; i + 2 < runs.length; i += 3) {
    const [first, count, step] = [runs[i]!, runs[i + 1]!, runs[i + 2]!];
    for (let k = 0, page = first; k < count; k++, page += step) {
      if (!store(page * perPage + offset, page)) return;
    }
  }
}

function storesOf(log: PassLog, pass: number): number {
  const runs = log.at(pass).runs;
  let n = 0;
  for (let i = 1; i < runs.length; i += 3) n += runs[i]!;
  return n;
}

/** Writes the stamp of `pass` for `page` into slot `slot` of `words` (two 32-bit words, little-endian). */
function put(words: Uint32Array, slot: number, pass: number, page: number): void {
  words[2 * slot] = page;
  words[2 * slot + 1] = pass;
}

function words(bytes: Uint8Array): Uint32Array {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  return new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
}

/**
 * The memory of `length` bytes as it was right after `instant`, replayed from
 * the pass log (zeros, then every stamp in order).
 *
 * @example
 * ```ts
 * import { replay } from "./_demo_snapshot_check.ts";
 * const log = { count: 1, at: () => ({ before: 0, after: 0, runs: [1, 1, 1] }) };
 * const memory = replay(log, 4096, 2 * 4096, { pass: 1, store: 1 });
 * console.log(new Uint32Array(memory.buffer).slice(1024 + 2, 1024 + 4)); // Uint32Array(2) [ 1, 1 ] (page 1, pass 1)
 * ```
 */
export function replay(log: PassLog, pageSize: number, length: number, instant: Instant): Uint8Array {
  if (length % pageSize !== 0 || pageSize % 8 !== 0) throw new RangeError("replay: whole pages of 8-byte slots");
  if (instant.pass > log.count) throw new RangeError(`replay: the log has ${log.count} passes, not ${instant.pass}`);
  const memory = new Uint8Array(length);
  const w = new Uint32Array(memory.buffer);
  for (let g = 1; g <= instant.pass; g++) {
    let left = g === instant.pass ? instant.store : Infinity;
    forEachStore(log, g, pageSize, (slot, page) => {
      if (left-- <= 0) return false;
      put(w, slot, g, page);
      return true;
    });
  }
  return memory;
}

/**
 * Checks a snapshot `image` of the writer's memory, taken as mark `mark`, against
 * the writer's pass log: see the module documentation. The log must reach a pass
 * that began after the mark's action returned (`WasmWriter.settled(mark)`);
 * otherwise the result says so in `reason`.
 *
 * @example
 * ```ts
 * import { checkSnapshot } from "./_demo_snapshot_check.ts";
 * const log = { count: 1, at: () => ({ before: 0, after: 0, runs: [0, 1, 1] }) };
 * console.log(checkSnapshot(new Uint8Array(4096), log, 1, 4096).reason); // the writer's log does not reach past the snapshot (1 passes logged)
 * ```
 */
export function checkSnapshot(image: Uint8Array, log: PassLog, mark: number, pageSize: number): SnapshotCheck {
  if (image.length % pageSize !== 0 || pageSize % 8 !== 0) {
    throw new RangeError("checkSnapshot: the image must be whole pages of 8-byte slots");
  }
  // The window, from the log: passes are in order, so `before` and `after` only grow.
  let afterPass = 0;
  let untilPass = -1;
  for (let g = 1; g <= log.count; g++) {
    const { before, after } = log.at(g);
    if (after < mark) afterPass = g;
    if (before >= mark) {
      untilPass = g - 1;
      break;
    }
  }
  const pages = image.length / pageSize;
  const window = { afterPass, untilPass: Math.max(untilPass, afterPass), passes: 0, stores: 0 };
  const a = words(image);
  let newestStamp = 0;
  for (let i = 1; i < a.length; i += 2) if (a[i]! > newestStamp) newestStamp = a[i]!;
  const base = { ok: false, instant: null, window, newestStamp, bytes: image.length };
  if (untilPass < 0) {
    return { ...base, reason: `the writer's log does not reach past the snapshot (${log.count} passes logged)` };
  }
  window.passes = untilPass - afterPass;
  for (let g = afterPass + 1; g <= untilPass; g++) window.stores += storesOf(log, g);

  // The replay up to the end of `afterPass`, and how far the image is from it.
  let totalStores = 0;
  for (let g = 1; g <= afterPass; g++) totalStores += storesOf(log, g);
  const start: PlacedInstant = {
    pass: afterPass,
    store: afterPass === 0 ? 0 : storesOf(log, afterPass),
    storesInPass: afterPass === 0 ? 0 : storesOf(log, afterPass),
    totalStores,
  };
  const e = new Uint32Array(replay(log, pageSize, image.length, start).buffer);
  const differs = (slot: number) => a[2 * slot] !== e[2 * slot] || a[2 * slot + 1] !== e[2 * slot + 1];
  let distance = 0;
  for (let slot = 0; slot < a.length / 2; slot++) if (differs(slot)) distance++;
  let best = { instant: start, distance };
  let found: PlacedInstant | null = distance === 0 ? start : null;

  // Then store by store through the window.
  for (let g = afterPass + 1; g <= untilPass && found === null; g++) {
    const storesInPass = storesOf(log, g);
    let store = 0;
    forEachStore(log, g, pageSize, (slot, page) => {
      const was = differs(slot);
      put(e, slot, g, page);
      distance += (differs(slot) ? 1 : 0) - (was ? 1 : 0);
      store++;
      totalStores++;
      if (distance < best.distance) {
        best = { instant: { pass: g, store, storesInPass, totalStores }, distance };
      }
      if (distance === 0) found = { pass: g, store, storesInPass, totalStores };
      return distance !== 0;
    });
  }
  if (found !== null) return { ...base, ok: true, instant: found };

  // No instant matches: name the pages that differ from the closest one.
  const closest = new Uint32Array(replay(log, pageSize, image.length, best.instant).buffer);
  const perPage = pageSize / 8;
  const differing: number[] = [];
  for (let page = 0; page < pages && differing.length < MAX_LISTED; page++) {
    for (let slot = page * perPage; slot < (page + 1) * perPage; slot++) {
      if (a[2 * slot] !== closest[2 * slot] || a[2 * slot + 1] !== closest[2 * slot + 1]) {
        differing.push(page);
        break;
      }
    }
  }
  return { ...base, closest: { instant: best.instant, pages: differing, slots: best.distance } };
}
