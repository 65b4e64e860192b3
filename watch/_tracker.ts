/**
 * One write tracker per memory, shared by every watch of it. The kernel has one
 * uffd-wp bit per page and one userfaultfd per mapping, so two `WriteWatch`es (or
 * `Checkpoint`s, which watch) of the same memory cannot each register it: the second
 * would get `EBUSY`. Instead the first creates the backend and every later one
 * attaches to it; each gets a {@linkcode Consumer} — itself a backend to its
 * `WriteWatch` — with a pending set of its own:
 *
 * - While one consumer is attached, it drives the backend directly (no cost).
 * - With several, every answer first *harvests* the kernel's written set (the
 *   backend's get-and-clear `scan`) into every consumer's pending set, then answers
 *   from the caller's own set; `reset()` and `collect()` clear only the caller's. A
 *   page collected by one consumer is still pending for the others: each sees every
 *   write exactly as a sole watch would (per-consumer epochs).
 * - Growth is followed once (`extend`), its written pages given to every consumer;
 *   lost pages are reported by every harvest (backends report them on every scan).
 * - The backend is released when the last consumer detaches.
 *
 * Trackers are per isolate (a Worker's watches share among themselves), keyed by the
 * span's first page. A watch of memory that overlaps a tracked span without starting
 * at the same page, or that asks for another backend by name, is refused with
 * `EBUSY`.
 *
 * @example
 * ```ts
 * import { Region, WriteWatch } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using a = WriteWatch.start(mem);
 * using b = WriteWatch.start(mem); // attaches to a's tracker
 * mem.bytes[0] = 1;
 * console.log([...a.collect()], [...b.collect()], [...a.collect()]); // [0] [0] []
 * ```
 *
 * @module
 */

import { ERRNO, UffdError } from "../kernel/errors.ts";
import { PAGE_SIZE_N } from "../ffi/_libc.ts";
import type { UntouchedPages } from "../kernel/profile.ts";
import type { BackendProvider, WatchedSpan, WriteWatchBackend, WriteWatchBackendName } from "./_backend.ts";
import type { Userfaultfd } from "../kernel/userfaultfd.ts";
import { RunList } from "./write_set.ts";

const trackers = new Map<bigint, Tracker>();

/** The backend of one memory and the consumers attached to it. */
export class Tracker {
  readonly provider: BackendProvider;
  readonly address: bigint;
  readonly backend: WriteWatchBackend;
  readonly #consumers = new Set<Consumer>();
  readonly #written = new RunList();
  readonly #lost = new RunList();

  private constructor(provider: BackendProvider, backend: WriteWatchBackend, address: bigint) {
    this.provider = provider;
    this.backend = backend;
    this.address = address;
  }

  /** The tracker of the memory starting at `address`, if one is running in this isolate. */
  static at(address: bigint): Tracker | undefined {
    return trackers.get(address);
  }

  /**
   * A consumer of the tracker for `span`: the running one (grown to the span if it is
   * longer), or a new one with the backend of the provider `choose()` picks.
   *
   * @throws {UffdError} `EBUSY` when a tracked span overlaps this one without starting at its first page, or when
   *   `wanted` names a backend other than the running tracker's.
   */
  static acquire(span: WatchedSpan, wanted: WriteWatchBackendName | "auto", choose: () => BackendProvider): Consumer {
    const end = span.address + BigInt(span.pages) * PAGE_SIZE_N;
    const same = trackers.get(span.address);
    for (const t of trackers.values()) {
      if (t === same) continue;
      const tEnd = t.address + BigInt(t.backend.pages) * PAGE_SIZE_N;
      if (t.address < end && span.address < tEnd) {
        throw busy(`another watch covers [0x${t.address.toString(16)}, 0x${tEnd.toString(16)}), which overlaps`);
      }
    }
    if (same !== undefined) {
      if (wanted !== "auto" && wanted !== same.provider.name) {
        throw busy(`this memory is watched with the ${same.provider.name} backend already; a second watch shares it`);
      }
      const consumer = same.#attach();
      if (span.pages > same.backend.pages) consumer.extend(span.pages, new RunList());
      return consumer;
    }
    const provider = choose();
    const tracker = new Tracker(provider, provider.create(span), span.address);
    trackers.set(span.address, tracker);
    return tracker.#attach();
  }

  /** Consumers attached now. */
  get consumers(): number {
    return this.#consumers.size;
  }

  #attach(): Consumer {
    // The consumer that had the backend to itself keeps what the kernel holds for it: harvested now.
    if (this.#consumers.size === 1) this.harvest(undefined);
    const consumer = new Consumer(this);
    this.#consumers.add(consumer);
    return consumer;
  }

  /** Whether `consumer` may drive the backend directly (alone, nothing harvested pending for it). */
  alone(consumer: Consumer): boolean {
    return this.#consumers.size === 1 && consumer.pending.length === 0;
  }

  /**
   * Moves the kernel's written set into every consumer's pending set (re-protecting:
   * the backend's get-and-clear scan) and the lost pages into `lost`.
   */
  harvest(lost: RunList | undefined): void {
    const written = this.#written;
    written.clear();
    this.#lost.clear();
    this.backend.scan(true, written, this.#lost);
    for (const c of this.#consumers) c.pending.addAll(written);
    lost?.addAll(this.#lost);
  }

  /** Grows the span once; the pages found holding data are pending for every consumer. */
  extend(pages: number): void {
    if (pages <= this.backend.pages) return;
    const written = this.#written;
    written.clear();
    this.backend.extend(pages, written);
    for (const c of this.#consumers) c.pending.addAll(written);
  }

  /**
   * Lends the tracker's userfaultfd to a live snapshot of the memory: every
   * consumer's pending set is brought up to date first (a harvest, which also
   * protects every page), then the backend stops serving faults. Every page the
   * snapshot lets a write through on, it records; `end(written)` gives them to every
   * consumer and hands the userfaultfd back. Only backends whose faults reach user
   * space can lend (`sync`); the others return `undefined`.
   */
  lend(): Lease | undefined {
    const backend = this.backend;
    if (backend.lend === undefined || backend.resume === undefined) return undefined;
    this.harvest(undefined);
    const uffd = backend.lend();
    let ended = false;
    return {
      uffd,
      pages: backend.pages,
      end: (written: Uint8Array) => {
        if (ended) return;
        ended = true;
        const runs = this.#written;
        runs.clear();
        for (let i = 0; i < backend.pages; i++) if ((written[i >> 3]! & (1 << (i & 7))) !== 0) runs.add(i, 1);
        for (const c of this.#consumers) c.pending.addAll(runs);
        backend.resume!();
      },
    };
  }

  /** Detaches a consumer; the last one releases the backend. */
  detach(consumer: Consumer): void {
    if (!this.#consumers.delete(consumer)) return;
    if (this.#consumers.size > 0) return;
    if (trackers.get(this.address) === this) trackers.delete(this.address);
    this.backend.close();
  }
}

/** A tracker's userfaultfd, lent to a live snapshot (see {@linkcode Tracker.lend}). */
export interface Lease {
  /** The userfaultfd, registered and serving nobody until `end`. */
  readonly uffd: Userfaultfd;
  /** Pages of the tracked span. */
  readonly pages: number;
  /** Gives it back: `written` is a bitmap (bit `i`: page `i`) of the pages the snapshot let writes through on. */
  end(written: Uint8Array): void;
}

/** One watch's view of a shared tracker: a backend to its `WriteWatch` (see the module documentation). */
export class Consumer implements WriteWatchBackend {
  readonly tracker: Tracker;
  /** Pages written since this consumer's last reset that the kernel no longer holds for it. */
  readonly pending: RunList = new RunList();
  #closed = false;

  constructor(tracker: Tracker) {
    this.tracker = tracker;
  }

  get name(): WriteWatchBackendName {
    return this.tracker.backend.name;
  }

  get untouched(): UntouchedPages {
    return this.tracker.backend.untouched;
  }

  get pages(): number {
    return this.tracker.backend.pages;
  }

  extend(pages: number, written: RunList): void {
    this.#check();
    if (this.tracker.alone(this)) {
      this.tracker.backend.extend(pages, written);
      return;
    }
    this.tracker.extend(pages); // what it found is in this.pending, reported by the next scan
  }

  scan(reset: boolean, written: RunList, lost: RunList): void {
    this.#check();
    if (this.tracker.alone(this)) {
      this.tracker.backend.scan(reset, written, lost);
      return;
    }
    this.tracker.harvest(lost);
    written.addAll(this.pending);
    if (reset) this.pending.clear();
  }

  reset(): void {
    this.#check();
    if (this.tracker.alone(this)) {
      this.tracker.backend.reset();
      return;
    }
    this.tracker.harvest(undefined);
    this.pending.clear();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.tracker.detach(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #check(): void {
    if (this.#closed) {
      throw new UffdError({ errno: ERRNO.EBADF, operation: "WriteWatch", detail: "the watch is stopped" });
    }
  }
}

function busy(detail: string): UffdError {
  return new UffdError({ errno: ERRNO.EBUSY, operation: "WriteWatch.start", detail, beforeSyscall: true });
}
