/**
 * A fault handler's statistics, kept in a `SharedArrayBuffer` that the handler's
 * Worker updates as it goes and the main isolate reads at any time — also while
 * the Worker is busy — without a message round trip. One writer (the Worker),
 * any number of readers; each counter is a float64 slot (exact up to 2^53).
 * Counters are read one by one, so a snapshot taken in the middle of a batch may
 * count a fault that is not yet in `resolved`.
 *
 * @example
 * ```ts
 * import { emptyStats } from "@uffd/uffd";
 * console.log(emptyStats().latency.upperBoundsMicros.slice(0, 4)); // [1, 2, 4, 8]
 * ```
 *
 * @module
 */

/** Slot numbers in the statistics buffer. */
export const STAT = {
  faults: 0,
  wp: 1,
  missing: 2,
  minor: 3,
  resolved: 4,
  retried: 5,
  vanished: 6,
  untracked: 7,
  fork: 8,
  remap: 9,
  remove: 10,
  unmap: 11,
  unknown: 12,
  wakeups: 13,
  batches: 14,
  messages: 15,
  largestBatch: 16,
  collects: 17,
  collected: 18,
  controls: 19,
  latency: 24,
} as const;

/** Number of latency buckets: `[0, 1)`, `[1, 2)`, `[2, 4)`, … µs, the last one open-ended. */
export const LATENCY_BUCKETS = 16;

/** Slots in the statistics buffer. */
export const STAT_SLOTS: number = STAT.latency + LATENCY_BUCKETS;

const UPPER_BOUNDS: readonly number[] = Object.freeze(
  Array.from({ length: LATENCY_BUCKETS }, (_, i) => i === LATENCY_BUCKETS - 1 ? Infinity : 2 ** i),
);

/** The bucket of a latency in microseconds: 0 for < 1 µs, then one per power of two. */
export function latencyBucket(micros: number): number {
  if (micros < 1) return 0;
  const bucket = 32 - Math.clz32(micros);
  return bucket < LATENCY_BUCKETS ? bucket : LATENCY_BUCKETS - 1;
}

/** What a fault handler has done so far. */
export interface HandlerStats {
  /** Page faults read (each retry of a deferred fault is not counted again). */
  readonly faults: number;
  /** Of those, write-protect faults. */
  readonly wp: number;
  /** Of those, missing faults. */
  readonly missing: number;
  /** Of those, minor faults. */
  readonly minor: number;
  /** Faults the policy resolved. */
  readonly resolved: number;
  /** Resolutions retried because the address space was changing (`EAGAIN` while an event was pending). */
  readonly retried: number;
  /** Faults whose range went away before they were resolved (`ENOENT`: unmapped or unregistered meanwhile). */
  readonly vanished: number;
  /** Faults outside the ranges the handler tracks (registered after it started). */
  readonly untracked: number;
  /** Address-space events read, by kind. */
  readonly events: {
    readonly fork: number;
    readonly remap: number;
    readonly remove: number;
    readonly unmap: number;
    readonly unknown: number;
  };
  /** Returns from `poll()`. */
  readonly wakeups: number;
  /** `read()`s that returned messages. */
  readonly batches: number;
  /** Messages read. */
  readonly messages: number;
  /** The most messages one `read()` returned. */
  readonly largestBatch: number;
  /** `collect()` calls served, and pages they reported. */
  readonly collects: number;
  /** Pages reported by all `collect()` calls. */
  readonly collected: number;
  /** Control requests served (`collect()` and `control()`). */
  readonly controls: number;
  /** Latency from the `read()` that delivered a fault to the end of its resolution. */
  readonly latency: {
    /** Exclusive upper bound of each bucket, in µs (the last is `Infinity`). */
    readonly upperBoundsMicros: readonly number[];
    /** Faults per bucket. */
    readonly counts: readonly number[];
  };
}

/** A statistics buffer for a new handler. */
export function statsBuffer(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(STAT_SLOTS * Float64Array.BYTES_PER_ELEMENT));
}

/** Reads a statistics buffer into a plain object. */
export function readStats(slots: Float64Array): HandlerStats {
  return {
    faults: slots[STAT.faults]!,
    wp: slots[STAT.wp]!,
    missing: slots[STAT.missing]!,
    minor: slots[STAT.minor]!,
    resolved: slots[STAT.resolved]!,
    retried: slots[STAT.retried]!,
    vanished: slots[STAT.vanished]!,
    untracked: slots[STAT.untracked]!,
    events: {
      fork: slots[STAT.fork]!,
      remap: slots[STAT.remap]!,
      remove: slots[STAT.remove]!,
      unmap: slots[STAT.unmap]!,
      unknown: slots[STAT.unknown]!,
    },
    wakeups: slots[STAT.wakeups]!,
    batches: slots[STAT.batches]!,
    messages: slots[STAT.messages]!,
    largestBatch: slots[STAT.largestBatch]!,
    collects: slots[STAT.collects]!,
    collected: slots[STAT.collected]!,
    controls: slots[STAT.controls]!,
    latency: {
      upperBoundsMicros: UPPER_BOUNDS,
      counts: Array.from(slots.subarray(STAT.latency, STAT.latency + LATENCY_BUCKETS)),
    },
  };
}

/**
 * Statistics with every counter at zero: what a handler reports before its first
 * fault, and a template for code that prints statistics.
 *
 * @example
 * ```ts
 * import { emptyStats } from "@uffd/uffd";
 * console.log(emptyStats().faults, emptyStats().latency.counts.length); // 0 16
 * ```
 */
export function emptyStats(): HandlerStats {
  return readStats(new Float64Array(STAT_SLOTS));
}
