/**
 * The userfaultfds whose address-space events this isolate itself reads — the
 * ones that would deadlock it. With `EVENT_REMOVE`, `EVENT_REMAP` or `EVENT_UNMAP`
 * negotiated, `madvise(MADV_DONTNEED)`, `mremap` and `munmap` of registered memory
 * block the calling thread until the event is read; if that thread is the one that
 * reads the events (`uffd.events()` or `readEvents()` on the main isolate), the call
 * never returns. `Region`'s calls that raise such events ask {@linkcode wouldDeadlock}
 * first and refuse with `EDEADLK`. A userfaultfd handed to another thread with
 * `share()` (a `FaultHandler`'s Worker, a snapshot's) is read there: it does not count.
 *
 * @example
 * ```ts
 * import { Region, Userfaultfd } from "@uffd/uffd";
 * import { wouldDeadlock } from "./_event_readers.ts";
 * using mem = Region.map(Region.pageSize);
 * using uffd = Userfaultfd.open({ require: ["EVENT_REMOVE"] });
 * uffd.register(mem, { missing: true });
 * console.log(wouldDeadlock("remove", mem.address, mem.address + 4096n) !== undefined); // true
 * ```
 *
 * @module
 */

/** What a userfaultfd tells the registry (see `Userfaultfd`). */
export interface EventReader {
  /** Whether it has the event of this kind negotiated. */
  raises(kind: EventKind): boolean;
  /** Whether `[start, end)` overlaps a range it registered. */
  overlaps(start: bigint, end: bigint): boolean;
  /** Closed, or handed to another thread (`share()`): its events are not read here. */
  readElsewhere(): boolean;
  /** How to name it in an error. */
  name(): string;
}

/** The address-space events that make the caller wait. */
export type EventKind = "remove" | "remap" | "unmap";

/** The userfaultfds of this isolate that may read their events here (left out once closed or shared). */
const readers = new Set<EventReader>();

/** Records a userfaultfd of this isolate (when it is created or adopted). */
export function track(reader: EventReader): void {
  readers.add(reader);
}

/** Forgets it: closed, or handed to another thread with `share()`. */
export function untrack(reader: EventReader): void {
  readers.delete(reader);
}

/**
 * Why a call raising `kind` over `[start, end)` from this thread would never
 * return — a userfaultfd of this isolate, read here, has the event and a
 * registration there — or `undefined` when it would return.
 */
export function wouldDeadlock(kind: EventKind, start: bigint, end: bigint): string | undefined {
  for (const r of readers) {
    if (r.readElsewhere() || !r.raises(kind) || !r.overlaps(start, end)) continue;
    const feature = kind === "remove" ? "EVENT_REMOVE" : kind === "remap" ? "EVENT_REMAP" : "EVENT_UNMAP";
    return `${r.name()} has ${feature} and a registration there, and its events are read on this thread: ` +
      "the kernel would make this call wait until this very thread reads the event — for good";
  }
  return undefined;
}
