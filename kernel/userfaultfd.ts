/**
 * {@linkcode Userfaultfd}: one userfaultfd as an object. It is created through the
 * syscall (falling back to `/dev/userfaultfd`, then to `UFFD_USER_MODE_ONLY` when
 * that is what lets an unprivileged process in), negotiates features with the
 * `UFFDIO_API` handshake (`_create.ts`), and offers every `UFFDIO_*` operation on
 * typed ranges and its messages as typed events ({@linkcode UffdEvent}). Ranges are
 * validated before any system call; failures are `UffdError`s with the errno name,
 * the operation, the arguments and a hint.
 *
 * @example
 * ```ts
 * import { Feature, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
 * uffd.register(mem, { wp: true });
 * uffd.writeProtect(mem);
 * mem.bytes[5 * Region.pageSize] = 1; // resolved by the kernel: WP_ASYNC
 * ```
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import type { UffdMsg } from "../ffi/_structs.ts";
import { MessageBatch } from "../ffi/_message_batch.ts";
import * as ops from "../ffi/_uffd_ioctls.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import { O_CLOEXEC, O_NONBLOCK } from "../ffi/linux.ts";
import {
  type Feature,
  FEATURES,
  type Ioctl,
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFD_FEATURE_EVENT_REMAP,
  UFFD_FEATURE_EVENT_REMOVE,
  UFFD_FEATURE_EVENT_UNMAP,
  UFFD_FEATURE_MOVE,
  UFFD_FEATURE_SIGBUS,
  UFFD_FEATURE_THREAD_ID,
  UFFD_FEATURE_WP_ASYNC,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFDIO_CONTINUE_MODE_DONTWAKE,
  UFFDIO_CONTINUE_MODE_WP,
  UFFDIO_COPY_MODE_DONTWAKE,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
  UFFDIO_MOVE_MODE_DONTWAKE,
  UFFDIO_POISON_MODE_DONTWAKE,
  UFFDIO_REGISTER_MODE_MINOR,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE_MODE_DONTWAKE,
} from "../ffi/uapi.ts";
import { handshake, namedFeatures, type Origin, probe } from "./_create.ts";
import { type EventKind, type EventReader, track, untrack } from "./_event_readers.ts";
import { eventStream } from "./_event_stream.ts";
import { notifyClosed } from "./_on_close.ts";
import { describeMode, Registrations } from "./_registrations.ts";
import { describe, optionsBag } from "./_validate.ts";
import { kernelRelease } from "./access.ts";
import { ERRNO, failure, invalid, UffdError, uffdioHint } from "./errors.ts";
import { byMapping, unmappedParts } from "./maps.ts";
import { featureNames, ioctlNames } from "./names.ts";
import { bigintToSafeNumber, type NumericRange, pageRange, pageRangeInto, type Range, toAddress } from "./range.ts";

export type { Origin } from "./_create.ts";

// ---------------------------------------------------------------------------
// Events: what readEvents() and events() yield, one object per uffd_msg.

/** A thread touched a registered page: `UFFD_EVENT_PAGEFAULT`. */
export interface PagefaultEvent {
  /** Discriminant. */
  readonly type: "pagefault";
  /** The faulting address: exact with `EXACT_ADDRESS`, otherwise page-aligned. */
  readonly address: bigint;
  /** The raw `UFFD_PAGEFAULT_FLAG_*` bits. */
  readonly flags: bigint;
  /** The access was a write. */
  readonly write: boolean;
  /** A write to a write-protected page (`UFFD_PAGEFAULT_FLAG_WP`). */
  readonly wp: boolean;
  /** A minor fault: the page is in the page cache but not mapped. */
  readonly minor: boolean;
  /** The faulting thread's id, when `THREAD_ID` was negotiated. */
  readonly threadId: number | undefined;
}

/** The process forked with `EVENT_FORK`: the child's userfaultfd. */
export interface ForkEvent {
  /** Discriminant. */
  readonly type: "fork";
  /** The child's userfaultfd, installed in this process; close it when done. */
  readonly uffd: Userfaultfd;
}

/** A registered range moved with `mremap` (`EVENT_REMAP`). */
export interface RemapEvent {
  /** Discriminant. */
  readonly type: "remap";
  /** The old start address. */
  readonly from: bigint;
  /** The new start address. */
  readonly to: bigint;
  /** The old length in bytes. */
  readonly length: bigint;
}

/** Pages of a registered range were zapped (`MADV_DONTNEED`/`MADV_REMOVE`, `EVENT_REMOVE`). */
export interface RemoveEvent {
  /** Discriminant. */
  readonly type: "remove";
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
}

/** A registered range was unmapped (`EVENT_UNMAP`). */
export interface UnmapEvent {
  /** Discriminant. */
  readonly type: "unmap";
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
}

/** A message with an event code this library does not know. */
export interface UnknownEvent {
  /** Discriminant. */
  readonly type: "unknown";
  /** The `event` byte. */
  readonly code: number;
  /** The whole 32-byte `uffd_msg`. */
  readonly raw: Uint8Array;
}

/** Options of `Userfaultfd.events()`. */
export interface EventsOptions {
  /** Ends the iteration (without an error) when aborted. */
  signal?: AbortSignal;
}

/**
 * Any event a userfaultfd can deliver: each `uffd_msg` becomes one object with a
 * `type`; an event code this library does not know becomes an
 * {@linkcode UnknownEvent} carrying the raw 32 bytes instead of an exception.
 *
 * @example
 * ```ts
 * import type { UffdEvent } from "@uffd/uffd";
 * function describe(event: UffdEvent): string {
 *   switch (event.type) {
 *     case "pagefault": return `${event.wp ? "wp" : "missing"} fault at 0x${event.address.toString(16)}`;
 *     case "remove": return `removed [0x${event.start.toString(16)}, 0x${event.end.toString(16)})`;
 *     default: return event.type;
 *   }
 * }
 * ```
 */
export type UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent;

/** What kind of event a message is: the `type` of its {@linkcode UffdEvent}. */
export type UffdEventType = UffdEvent["type"];

const TYPE_OF_CODE: readonly UffdEventType[] = (() => {
  const types: UffdEventType[] = new Array(256).fill("unknown");
  types[UFFD_EVENT_PAGEFAULT] = "pagefault";
  types[UFFD_EVENT_FORK] = "fork";
  types[UFFD_EVENT_REMAP] = "remap";
  types[UFFD_EVENT_REMOVE] = "remove";
  types[UFFD_EVENT_UNMAP] = "unmap";
  return types;
})();
const FLAG_WRITE = Number(UFFD_PAGEFAULT_FLAG_WRITE);
const FLAG_WP = Number(UFFD_PAGEFAULT_FLAG_WP);
const FLAG_MINOR = Number(UFFD_PAGEFAULT_FLAG_MINOR);

/** A page fault needs no fork's userfaultfd adopted. */
const noFork = (): never => {
  throw new Error("unreachable: a page fault carries no userfaultfd");
};

/** Fills a batch from one `read(2)` (set up by `EventBatch`'s static block, used by `readEventsInto`). */
let fillBatch: (batch: EventBatch, fd: number, threadIds: boolean, other: (msg: UffdMsg) => UffdEvent) => number;

/**
 * Room for a batch of userfaultfd messages, filled by
 * {@linkcode Userfaultfd.readEventsInto} with one `read(2)` and decoded at once,
 * in one loop, into typed arrays that the batch keeps from read to read: no
 * object is made per page fault, so a loop that serves faults from it allocates
 * nothing. Read a page fault through the arrays (`codes`, `addresses`, `flags`,
 * `threadIds`, entries `0` to `length - 1`), the accessors (`type(i)`,
 * `address(i)`, `write(i)`, …) or by iterating, which yields one reused
 * {@linkcode EventView}; `event(i)` builds the full {@linkcode UffdEvent} object
 * when one is wanted. The rare address-space events (fork, remap, remove, unmap)
 * are decoded into objects when they are read, as `readEvents()` does (a fork's
 * child userfaultfd is adopted then, once). Each read replaces the contents.
 *
 * Addresses are numbers: every user-space address is below 2^53 on x86_64 and
 * aarch64, so they are exact (`address(i)` refuses anything larger rather than
 * round it). Flags are the low 32 bits of the kernel's, where every
 * `UFFD_PAGEFAULT_FLAG_*` lives.
 *
 * @example
 * ```ts
 * import { EventBatch, Region, Userfaultfd } from "@uffd/uffd";
 * const libc = Deno.dlopen("libc.so.6", {
 *   memset: { parameters: ["pointer", "i32", "usize"], result: "pointer", nonblocking: true },
 * });
 * using mem = Region.map(Region.pageSize);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { missing: true });
 * const writing = libc.symbols.memset(Deno.UnsafePointer.create(mem.address), 7, BigInt(mem.length));
 * const batch = new EventBatch();
 * while (uffd.readEventsInto(batch) === 0) await new Promise((r) => setTimeout(r, 1));
 * for (const e of batch) {
 *   if (e.type === "pagefault") uffd.zeropage({ address: BigInt(e.address), length: Region.pageSize });
 * }
 * await writing;
 * libc.close();
 * console.log(batch.length, batch.type(0), batch.write(0), mem.bytes[0]); // 1 pagefault true 7
 * ```
 */
export class EventBatch implements Iterable<EventView> {
  /** How many messages one read can return (the buffer's size in messages). */
  readonly capacity: number;
  /** The `event` byte of each message (`UFFD_EVENT_*`), entries `0` to `length - 1`. */
  readonly codes: Uint8Array;
  /** Each page fault's address (a number; `NaN` above 2^53); stale for other messages. */
  readonly addresses: Float64Array;
  /** Each page fault's `UFFD_PAGEFAULT_FLAG_*` bits; stale for other messages. */
  readonly flags: Uint32Array;
  /** Each page fault's thread id (`ptid`: 0 without `THREAD_ID`); stale for other messages. */
  readonly threadIds: Uint32Array;
  readonly #messages: MessageBatch;
  #length = 0;
  #hasThreadIds = false;
  /** The decoded event of each message that is not a page fault (`undefined` for page faults). */
  readonly #others: (UffdEvent | undefined)[];
  readonly #view: EventView;
  readonly #result: { done: boolean; value: EventView };
  #next = 0;
  readonly #iterator: Iterator<EventView> & Iterable<EventView>;

  /**
   * Room for `capacity` messages (default 64: what a `FaultHandler` reads at once).
   *
   * @param capacity Messages per read, 1 to 4096.
   * @throws {UffdError} `EINVAL` for a capacity out of range.
   */
  constructor(capacity = 64) {
    if (typeof capacity !== "number") {
      throw new TypeError(`EventBatch: capacity must be a number, not ${describe(capacity)}`);
    }
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 4096) {
      throw invalid("EventBatch", "capacity must be an integer in [1, 4096]", { capacity });
    }
    this.capacity = capacity;
    this.codes = new Uint8Array(capacity);
    this.addresses = new Float64Array(capacity);
    this.flags = new Uint32Array(capacity);
    this.threadIds = new Uint32Array(capacity);
    this.#messages = new MessageBatch(capacity);
    this.#others = new Array(capacity).fill(undefined);
    this.#view = new EventView(this);
    this.#result = { done: false, value: this.#view };
    const result = this.#result;
    const view = this.#view;
    this.#iterator = {
      next: () => {
        if (this.#next < this.#length) {
          view.index = this.#next++;
          result.done = false;
        } else result.done = true;
        return result as IteratorResult<EventView>;
      },
      [Symbol.iterator]() {
        return this;
      },
    };
  }

  static {
    fillBatch = (batch, fd, threadIds, other) => {
      const others = batch.#others;
      for (let i = 0; i < batch.#length; i++) others[i] = undefined;
      batch.#length = 0;
      batch.#hasThreadIds = threadIds;
      const messages = batch.#messages;
      const n = messages.read(fd);
      if (n < 0) return n;
      const codes = batch.codes;
      messages.decodeInto(codes, batch.addresses, batch.flags, batch.threadIds);
      for (let i = 0; i < n; i++) if (codes[i] !== UFFD_EVENT_PAGEFAULT) others[i] = other(messages.message(i));
      batch.#length = n;
      return n;
    };
  }

  /** Messages held (from the last read). */
  get length(): number {
    return this.#length;
  }

  #at(i: number): number {
    if (!(i >= 0 && i < this.#length && (i | 0) === i)) {
      throw new RangeError(`EventBatch: message ${i} is not in this batch of ${this.#length}`);
    }
    return i;
  }

  /** The kind of message `i`. */
  type(i: number): UffdEventType {
    return TYPE_OF_CODE[this.codes[this.#at(i)]!]!;
  }

  /** Page fault `i`'s address as a number: exact with `EXACT_ADDRESS`, otherwise page-aligned. */
  address(i: number): number {
    const address = this.addresses[this.#pagefault(i)]!;
    if (Number.isNaN(address)) throw new RangeError(`EventBatch: the address of message ${i} is above 2^53`);
    return address;
  }

  /** Page fault `i`'s `UFFD_PAGEFAULT_FLAG_*` bits. */
  flagsOf(i: number): number {
    return this.flags[this.#pagefault(i)]!;
  }

  /** Page fault `i` was a write. */
  write(i: number): boolean {
    return (this.flags[this.#pagefault(i)]! & FLAG_WRITE) !== 0;
  }

  /** Page fault `i` was a write to a write-protected page. */
  wp(i: number): boolean {
    return (this.flags[this.#pagefault(i)]! & FLAG_WP) !== 0;
  }

  /** Page fault `i` was a minor fault. */
  minor(i: number): boolean {
    return (this.flags[this.#pagefault(i)]! & FLAG_MINOR) !== 0;
  }

  /** The thread of page fault `i`, when `THREAD_ID` was negotiated. */
  threadId(i: number): number | undefined {
    const at = this.#pagefault(i);
    return this.#hasThreadIds ? this.threadIds[at] : undefined;
  }

  /**
   * Message `i` as a typed event object, exact to the kernel's 64 bits (allocates;
   * the same object each time for events other than faults).
   */
  event(i: number): UffdEvent {
    const at = this.#at(i);
    const other = this.#others[at];
    if (other !== undefined) return other;
    return toEvent(this.#messages.message(at), this.#hasThreadIds, noFork);
  }

  /**
   * The messages in order, as one {@linkcode EventView} that moves along: keep
   * what you need from it, not the view itself. One iteration of a batch at a time.
   */
  [Symbol.iterator](): Iterator<EventView> {
    this.#next = 0;
    return this.#iterator;
  }

  #pagefault(i: number): number {
    const at = this.#at(i);
    if (this.codes[at] !== UFFD_EVENT_PAGEFAULT) {
      throw new TypeError(
        `EventBatch: message ${i} is a ${this.#others[at]?.type ?? "unknown"} event, not a page fault`,
      );
    }
    return at;
  }
}

/**
 * One message of an {@linkcode EventBatch}, as iterating the batch yields it: the
 * same object for every message (`index` moves), so that a loop over a batch
 * allocates nothing. The page-fault fields throw for messages of other kinds.
 *
 * @example
 * ```ts
 * import { EventBatch } from "@uffd/uffd";
 * const writtenAt = (batch: EventBatch) => {
 *   const addresses: number[] = [];
 *   for (const e of batch) if (e.type === "pagefault" && e.write) addresses.push(e.address);
 *   return addresses;
 * };
 * console.log(writtenAt(new EventBatch())); // []
 * ```
 */
export class EventView {
  /** The message this view shows, in its batch. */
  index = 0;
  readonly #batch: EventBatch;

  /** A view of `batch`'s message `index` (batches make their own). */
  constructor(batch: EventBatch) {
    this.#batch = batch;
  }

  /** The kind of the message. */
  get type(): UffdEventType {
    return this.#batch.type(this.index);
  }

  /** The page fault's address, as a number. */
  get address(): number {
    return this.#batch.address(this.index);
  }

  /** The page fault's `UFFD_PAGEFAULT_FLAG_*` bits. */
  get flags(): number {
    return this.#batch.flagsOf(this.index);
  }

  /** The page fault was a write. */
  get write(): boolean {
    return this.#batch.write(this.index);
  }

  /** A write to a write-protected page. */
  get wp(): boolean {
    return this.#batch.wp(this.index);
  }

  /** A minor fault. */
  get minor(): boolean {
    return this.#batch.minor(this.index);
  }

  /** The faulting thread, when `THREAD_ID` was negotiated. */
  get threadId(): number | undefined {
    return this.#batch.threadId(this.index);
  }

  /** The message as a typed event object (allocates). */
  event(): UffdEvent {
    return this.#batch.event(this.index);
  }
}

// ---------------------------------------------------------------------------

/** Options of {@linkcode Userfaultfd.open}. */
export interface OpenOptions {
  /** Features wanted when the kernel has them; check `uffd.features` for what was granted. */
  features?: Iterable<Feature>;
  /** Features that must be granted: `open` fails with a clear error otherwise. */
  require?: Iterable<Feature>;
  /** Features to treat as unsupported even if the kernel has them (to exercise fallbacks). */
  decline?: Iterable<Feature>;
  /** `O_NONBLOCK` (default `true`): `readEvents()` never blocks and `poll` works. */
  nonblocking?: boolean;
  /** `O_CLOEXEC` (default `true`). */
  closeOnExec?: boolean;
  /**
   * `UFFD_USER_MODE_ONLY`: `"auto"` (default) uses it only when nothing else lets this
   * process in; `true` always; `false` never. With it, faults the kernel takes on the
   * process's behalf (a `read(2)` into registered memory) fail with EFAULT instead.
   */
  userModeOnly?: boolean | "auto";
  /** Where to create it: the syscall, `/dev/userfaultfd`, or whichever works (default). */
  via?: "auto" | "syscall" | "device";
  /**
   * Who writes the memory this userfaultfd write-protects, when `WP_ASYNC` is not
   * negotiated (a write to a protected page then waits for a handler, and a thread
   * can never serve its own fault):
   * - `"any"` (the default): the calling isolate may write it too, so a handler must
   *   run on another thread — a `FaultHandler`, `WriteWatch` or `LiveSnapshot`, or a
   *   Worker given `share()` or `duplicate()` — before anything is write-protected:
   *   until then `writeProtect()` and the `wp` modes of `copy()` and `continue()` are
   *   refused with `EDEADLK`, before the system call;
   * - `"other-threads"`: only other threads (Workers, `nonblocking` FFI calls, native
   *   code, a child process) write it, and this isolate may serve their faults itself
   *   (`readEvents()`, `events()`); nothing is refused.
   */
  writers?: "any" | "other-threads";
}

/** Which of the userfaultfd modes to register a range for. */
export interface RegisterOptions {
  /** Faults on pages that are not there (`UFFDIO_REGISTER_MODE_MISSING`). */
  missing?: boolean;
  /** Writes to write-protected pages (`UFFDIO_REGISTER_MODE_WP`). */
  wp?: boolean;
  /** Faults on pages in the page cache that are not mapped (shmem, hugetlbfs). */
  minor?: boolean;
}

/** Whether to wake the threads waiting on the range. */
export interface WakeOptions {
  /** Do not wake waiting threads (follow with `wake()`). */
  dontWake?: boolean;
}

/** What this kernel offers, probed on a throw-away userfaultfd. */
export interface Support {
  /** Every known feature the kernel reports. */
  readonly features: ReadonlySet<Feature>;
  /** The raw `uffdio_api.features` the kernel reported (may hold bits this library does not name). */
  readonly featureMask: bigint;
  /** The ioctls a fresh userfaultfd allows. */
  readonly ioctls: ReadonlySet<Ioctl>;
  /** How the probe's userfaultfd was created. */
  readonly origin: Origin;
  /**
   * A plain object for `JSON.stringify` (sets and a bigint do not serialise): the
   * feature and ioctl names as arrays, the mask in hex.
   */
  toJSON(): { features: Feature[]; featureMask: string; ioctls: Ioctl[]; origin: Origin };
}

/** What a {@linkcode Userfaultfd} shares with a handler on another thread (see `share()`). */
export interface SharedUserfaultfd {
  /** The file descriptor (process-wide). */
  readonly fd: number;
  /** The negotiated feature mask. */
  readonly featureMask: bigint;
  /** Whether the fd is `O_NONBLOCK`. */
  readonly nonblocking: boolean;
  /** How it was created. */
  readonly origin: Origin;
  /** One `Int32`: 0 while open, 1 once closed by any side. */
  readonly state: SharedArrayBuffer;
}

const MESSAGES_PER_READ = 64;
let supportCache: Support | undefined;

const ENOENT = ERRNO.ENOENT;
/** The feature bit of each event that makes its caller wait. */
const EVENT_BITS: Record<EventKind, bigint> = {
  remove: UFFD_FEATURE_EVENT_REMOVE,
  remap: UFFD_FEATURE_EVENT_REMAP,
  unmap: UFFD_FEATURE_EVENT_UNMAP,
};
const PAGE_SIZE = libc.PAGE_SIZE;
// The mode bits as numbers, for the ioctls of `_resolve_ops.ts` (the hot path converts no bigint).
const WP = Number(UFFDIO_WRITEPROTECT_MODE_WP);
const WP_DONTWAKE = Number(UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
const COPY_DONTWAKE = Number(UFFDIO_COPY_MODE_DONTWAKE);
const COPY_WP = Number(UFFDIO_COPY_MODE_WP);
const ZEROPAGE_DONTWAKE = Number(UFFDIO_ZEROPAGE_MODE_DONTWAKE);
const CONTINUE_DONTWAKE = Number(UFFDIO_CONTINUE_MODE_DONTWAKE);
const CONTINUE_WP = Number(UFFDIO_CONTINUE_MODE_WP);
const POISON_DONTWAKE = Number(UFFDIO_POISON_MODE_DONTWAKE);

/** A range ioctl of `_resolve_ops.ts` over `[start, start + len)` (`source`: a copy's source for `start`). */
type Retry = (fd: number, start: number, len: number, source: number, mode: number) => number;

/** The range ioctls that `#acrossMappingsN` repeats one mapping at a time. */
const RETRY = {
  writeprotect: (fd, start, len, _source, mode) => resolve.writeprotect(fd, start, len, mode),
  copy: (fd, start, len, source, mode) => resolve.copy(fd, start, source, len, mode),
  zeropage: (fd, start, len, _source, mode) => resolve.zeropage(fd, start, len, mode),
  continue: (fd, start, len, _source, mode) => resolve.continuePages(fd, start, len, mode),
  poison: (fd, start, len, _source, mode) => resolve.poison(fd, start, len, mode),
} satisfies Record<string, Retry>;

/**
 * Why required features are missing, each for its own reason: declined by the caller,
 * or not offered by this kernel.
 */
function missingHint(missing: bigint, declined: bigint): string {
  const byCaller = featureNames(missing & declined);
  const byKernel = featureNames(missing & ~declined);
  const parts: string[] = [];
  if (byCaller.length > 0) parts.push(`${byCaller.join(", ")} declined by the caller's options`);
  if (byKernel.length > 0) parts.push(`${byKernel.join(", ")} not offered by this kernel (${kernelRelease()})`);
  return parts.join("; ");
}

/** A failed `UFFDIO_*` call as a `UffdError`, with the hint for its errno. */
function kernelError(operation: string, rc: number, args: Record<string, unknown>): UffdError {
  return failure(operation, rc, args, uffdioHint(operation, rc));
}

/**
 * A userfaultfd: register ranges, resolve faults, write-protect, read events.
 * Disposable: `using uffd = Userfaultfd.open()` closes it at the end of the scope,
 * which unregisters every range and wakes every thread blocked in a fault on it.
 *
 * @example
 * ```ts
 * import { Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * const allowed = uffd.register(mem, { missing: true });
 * console.log([...allowed]); // ["WAKE", "COPY", "ZEROPAGE", ...]
 * uffd.zeropage(mem.pages(0, 4)); // resolve all four pages before anyone touches them
 * ```
 */
export class Userfaultfd implements Disposable {
  /** The file descriptor. */
  readonly fd: number;
  /** The features negotiated for this fd. */
  readonly features: ReadonlySet<Feature>;
  /** The negotiated features as a `UFFD_FEATURE_*` mask. */
  readonly featureMask: bigint;
  /** The ioctls the fd allows (from `UFFDIO_API`). */
  readonly ioctls: ReadonlySet<Ioctl>;
  /** Whether the fd is `O_NONBLOCK`. */
  readonly nonblocking: boolean;
  /** How the fd was created. */
  readonly origin: Origin;

  readonly #state: Int32Array;
  /** The batch `readEvents()` reads into. */
  #messages: EventBatch | undefined;
  readonly #registrations = new Registrations();
  readonly #ioctlMask: bigint;
  /** Where a range validated on the hot path goes (`pageRangeInto`): one object, reused by every call. */
  readonly #span: NumericRange = { start: 0, len: 0 };
  /** Handed to another thread with `share()`: its events are read there. */
  #sharedOut = false;
  /** What `Region` asks before a call that raises an event this isolate would have to read (`_event_readers.ts`). */
  readonly #reader: EventReader = {
    raises: (kind) => (this.featureMask & EVENT_BITS[kind]) !== 0n,
    overlaps: (start, end) => this.#registrations.overlaps(start, end),
    readElsewhere: () => this.#sharedOut || this.closed,
    name: () => `userfaultfd ${this.fd}`,
  };
  /**
   * A handler can serve this userfaultfd's faults from another thread (it was shared,
   * duplicated or adopted), or the caller said only other threads write (`writers`).
   */
  #handled: boolean;
  /** No fault waits for a handler here (`WP_ASYNC` or `SIGBUS`): nothing is refused for want of one. */
  readonly #neverWaits: boolean;

  private constructor(
    fd: number,
    mask: bigint,
    ioctls: bigint,
    nonblocking: boolean,
    origin: Origin,
    state: Int32Array,
    handled: boolean,
  ) {
    this.#handled = handled;
    this.#neverWaits = (mask & (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_SIGBUS)) !== 0n;
    this.fd = fd;
    this.featureMask = mask;
    this.features = new Set(featureNames(mask));
    this.ioctls = new Set(ioctlNames(ioctls));
    this.nonblocking = nonblocking;
    this.origin = origin;
    this.#state = state;
    this.#ioctlMask = ioctls;
    track(this.#reader);
  }

  /**
   * What this kernel offers: the `UFFDIO_API` handshake with no features on a
   * throw-away userfaultfd, cached for the process.
   *
   * @example
   * ```ts
   * import { Userfaultfd } from "@uffd/uffd";
   * const support = Userfaultfd.supported();
   * console.log(support.features.has("WP_ASYNC"), support.featureMask.toString(16));
   * ```
   */
  static supported(): Support {
    if (supportCache) return supportCache;
    const { features, ioctls, origin } = probe(O_CLOEXEC | O_NONBLOCK);
    const names = featureNames(features);
    const ioctlList = ioctlNames(ioctls);
    supportCache = Object.freeze({
      features: new Set(names),
      featureMask: features,
      ioctls: new Set(ioctlList),
      origin,
      toJSON: () => ({
        features: [...names],
        featureMask: `0x${features.toString(16)}`,
        ioctls: [...ioctlList],
        origin,
      }),
    });
    return supportCache;
  }

  /**
   * Creates a userfaultfd and negotiates features: those in `require` must be
   * granted, those in `features` are granted when the kernel has them.
   *
   * @param options Wanted, required and declined features; blocking, close-on-exec, user-mode-only, where to create it.
   * @returns An open userfaultfd that completed the `UFFDIO_API` handshake.
   * @throws {UffdError} `EINVAL` for a required feature the kernel lacks (or that was declined) and for an unknown
   *   name; the creation's errno (`EPERM`, …), with what to change, when no way to create one works.
   *
   * @example
   * ```ts
   * import { Feature, Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open({ require: [Feature.PAGEFAULT_FLAG_WP], features: [Feature.THREAD_ID] });
   * console.log(uffd.features.has(Feature.THREAD_ID));
   * ```
   */
  static open(options?: OpenOptions): Userfaultfd {
    options = optionsBag(options, "Userfaultfd.open");
    if (options.via !== undefined && !["auto", "syscall", "device"].includes(options.via)) {
      throw invalid("Userfaultfd.open", 'via must be "auto", "syscall" or "device"', { via: String(options.via) });
    }
    if (options.writers !== undefined && options.writers !== "any" && options.writers !== "other-threads") {
      throw invalid("Userfaultfd.open", 'writers must be "any" or "other-threads"', {
        writers: String(options.writers),
      });
    }
    const umo = options.userModeOnly;
    if (umo !== undefined && umo !== true && umo !== false && umo !== "auto") {
      throw new TypeError(`Userfaultfd.open: userModeOnly must be true, false or "auto", not ${describe(umo)}`);
    }
    const declined = namedFeatures(options.decline, "decline");
    const wanted = namedFeatures(options.features, "features");
    const required = namedFeatures(options.require, "require");
    const available = Userfaultfd.supported().featureMask & ~declined;
    const missing = required & ~available;
    if (missing !== 0n) {
      const names = featureNames(missing);
      const needs = names.map((n) => `${n} (Linux ${FEATURES.find((f) => f.name === n)!.since}+)`).join(", ");
      throw new UffdError({
        errno: ERRNO.EINVAL,
        operation: "UFFDIO_API",
        detail: `required feature${names.length > 1 ? "s" : ""} not available: ${needs}`,
        hint: missingHint(missing, declined),
        args: { required: names.join("|") },
        beforeSyscall: true,
      });
    }
    const nonblocking = options.nonblocking ?? true;
    const flags = (options.closeOnExec ?? true ? O_CLOEXEC : 0) | (nonblocking ? O_NONBLOCK : 0);
    const { fd, origin, features, ioctls } = handshake(flags, options, (wanted & available) | required, required);
    const state = new Int32Array(new SharedArrayBuffer(4));
    return new Userfaultfd(fd, features, ioctls, nonblocking, origin, state, options.writers === "other-threads");
  }

  /**
   * Wraps a userfaultfd created elsewhere that has completed its `UFFDIO_API`
   * handshake (the child's fd of a fork event, or one shared by another thread
   * with {@linkcode share}). The object owns the fd from then on.
   */
  static adopt(shared: SharedUserfaultfd): Userfaultfd;
  /** Wraps a handshaken userfaultfd fd with the given features. */
  static adopt(fd: number, featureMask: bigint, nonblocking?: boolean): Userfaultfd;
  static adopt(from: SharedUserfaultfd | number, featureMask = 0n, nonblocking = true): Userfaultfd {
    if (typeof from === "number") {
      if (!Number.isInteger(from) || from < 0) {
        throw invalid("Userfaultfd.adopt", "fd must be a non-negative integer", { fd: from }, ERRNO.EBADF);
      }
      if (typeof featureMask !== "bigint") {
        throw new TypeError(`Userfaultfd.adopt: featureMask must be a bigint, not ${describe(featureMask)}`);
      }
      const state = new Int32Array(new SharedArrayBuffer(4));
      return new Userfaultfd(from, featureMask, 0n, nonblocking, "syscall", state, true);
    }
    if (
      from === null || typeof from !== "object" || !Number.isInteger(from.fd) || from.fd < 0 ||
      typeof from.featureMask !== "bigint" || !(from.state instanceof SharedArrayBuffer) || from.state.byteLength < 4
    ) {
      throw new TypeError("Userfaultfd.adopt: expected an fd number or what share() returns");
    }
    return new Userfaultfd(
      from.fd,
      from.featureMask,
      0n,
      from.nonblocking,
      from.origin,
      new Int32Array(from.state),
      true,
    );
  }

  /**
   * A second reference to this userfaultfd: a new descriptor for the same file
   * (`fcntl(F_DUPFD_CLOEXEC)`, closed on `exec`), with the same features, ioctls
   * and mode, closed on its own. The kernel releases the userfaultfd — and with it
   * every registration and waiting fault — only when the last descriptor is
   * closed; a handler keeps one of its own this way, so that the caller's `close()`
   * cannot pull the fd it polls from under it. Registrations made through either
   * reference apply to both; each object records only its own.
   *
   * @returns A new `Userfaultfd` that owns the new descriptor.
   * @throws {UffdError} `EBADF` when this one is closed; `EMFILE` when the process has no descriptor left.
   *
   * @example
   * ```ts
   * import { Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open();
   * using second = uffd.duplicate();
   * console.log(second.fd !== uffd.fd, second.featureMask === uffd.featureMask); // true true
   * ```
   */
  duplicate(): Userfaultfd {
    this.#check("duplicate");
    const fd = libc.dupCloexec(this.fd);
    if (fd < 0) throw failure("fcntl(F_DUPFD_CLOEXEC)", fd, { fd: this.fd });
    const state = new Int32Array(new SharedArrayBuffer(4));
    this.#handled = true; // a second reference is for a handler elsewhere
    return new Userfaultfd(fd, this.featureMask, this.#ioctlMask, this.nonblocking, this.origin, state, true);
  }

  /**
   * What another thread needs to use this userfaultfd: the fd, its features, and a
   * shared closed-flag, so that whichever side closes it first closes it once and
   * the other side sees it closed. Pass it to a Worker and call `adopt` there.
   */
  share(): SharedUserfaultfd {
    this.#check("share");
    this.#sharedOut = true; // its events are read on the thread it goes to
    untrack(this.#reader);
    this.#handled = true;
    return {
      fd: this.fd,
      featureMask: this.featureMask,
      nonblocking: this.nonblocking,
      origin: this.origin,
      state: this.#state.buffer as SharedArrayBuffer,
    };
  }

  /** `true` once closed, by this object or by a thread it was shared with. */
  get closed(): boolean {
    return Atomics.load(this.#state, 0) !== 0;
  }

  /**
   * Registers a range for missing, write-protect and/or minor faults and returns the
   * ioctls the kernel allows on it. A range that overlaps one this object already
   * registered is refused (unregister it first).
   *
   * @param range Page-aligned, inside mappings.
   * @param options At least one of `missing`, `wp`, `minor`.
   * @returns The ioctls the kernel allows on the range.
   * @throws {UffdError} `EBUSY` when it overlaps a registration of this object; `ENOMEM` when part of it is not mapped;
   *   `EINVAL` when a mapping does not support the mode.
   */
  register(range: Range, options: RegisterOptions): ReadonlySet<Ioctl> {
    const operation = "UFFDIO_REGISTER";
    this.#check(operation);
    const { start, len } = pageRange(range, operation);
    if (options === null || typeof options !== "object") {
      throw new TypeError(`${operation}: options must be an object like { wp: true }`);
    }
    const mode = (options.missing ? UFFDIO_REGISTER_MODE_MISSING : 0n) |
      (options.wp ? UFFDIO_REGISTER_MODE_WP : 0n) |
      (options.minor ? UFFDIO_REGISTER_MODE_MINOR : 0n);
    if (mode === 0n) throw invalid(operation, "choose at least one of missing, wp, minor", { start, len });
    this.#registrations.refuseOverlap(start, start + len, operation);
    // The kernel registers a range with holes as long as one mapping meets it; a range
    // that runs past its mapping is almost always a mistake that can reach memory the
    // caller does not own, so refuse holes here.
    const holes = unmappedParts(start, start + len);
    if (holes && holes.length > 0) {
      const h = holes[0]!;
      throw invalid(
        operation,
        `part of the range is not mapped: [0x${h.start.toString(16)}, 0x${h.end.toString(16)})` +
          (holes.length > 1 ? ` and ${holes.length - 1} more` : ""),
        { start, len },
        ERRNO.ENOMEM,
      );
    }
    const { rc, ioctls } = ops.uffdioRegister(this.fd, start, len, mode);
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: describeMode(mode) });
    this.#registrations.add(start, start + len, mode);
    return new Set(ioctlNames(ioctls));
  }

  /** Unregisters a range; pending faults in it are woken and retried without userfaultfd. */
  unregister(range: Range): void {
    const operation = "UFFDIO_UNREGISTER";
    this.#check(operation);
    const { start, len } = pageRange(range, operation);
    const rc = ops.uffdioUnregister(this.fd, start, len);
    if (rc < 0) throw kernelError(operation, rc, { start, len });
    this.#registrations.unmapped(start, start + len);
  }

  /** The ranges this object has registered, as far as it knows (events and unregister update it). */
  get registrations(): readonly { start: bigint; end: bigint; mode: string }[] {
    return this.#registrations.list();
  }

  /**
   * Write-protects a range registered with `{ wp: true }` (`UFFDIO_WRITEPROTECT_MODE_WP`).
   * Protecting never wakes anyone, so `dontWake` changes nothing here.
   *
   * Without `WP_ASYNC` (or `SIGBUS`), a write to a protected page waits until a handler
   * resolves it; a write from the thread that would serve it waits for ever. So this is
   * refused (`EDEADLK`, before the system call) until a handler can run elsewhere —
   * the userfaultfd was given to a `FaultHandler` (or another Worker: `share()`,
   * `duplicate()`) — unless it was opened with `writers: "other-threads"`.
   *
   * @throws {UffdError} `EDEADLK` as above; `ENOENT` when the range is not registered for write-protect; `EAGAIN`
   *   while the address space changes.
   */
  writeProtect(range: Range, options?: WakeOptions): void {
    const operation = "UFFDIO_WRITEPROTECT";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      if (this.#selfDeadlocks) {
        this.#refuseSelfDeadlock(operation, { start: BigInt(span.start), len: BigInt(span.len) });
      }
      let rc = resolve.writeprotect(this.fd, span.start, span.len, WP);
      if (rc === -ENOENT) {
        rc = this.#acrossMappingsN(RETRY.writeprotect, span.start, span.len, 0, WP);
      }
      if (rc < 0) throw kernelError(operation, rc, { start: BigInt(span.start), len: BigInt(span.len), mode: "wp" });
      return;
    }
    const { start, len } = pageRange(range, operation);
    this.#refuseSelfDeadlock(operation, { start, len });
    let rc = ops.uffdioWriteprotect(this.fd, start, len, UFFDIO_WRITEPROTECT_MODE_WP);
    if (rc === -ENOENT) {
      // Before Linux 6.4 one call covers one mapping: a range of several goes one mapping at a time.
      rc = this.#acrossMappingsN(RETRY.writeprotect, Number(start), Number(len), 0, WP);
    }
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: "wp" });
  }

  /** Removes write protection and wakes the threads waiting on the range (unless `dontWake`). */
  unprotect(range: Range, options?: WakeOptions): void {
    const operation = "UFFDIO_WRITEPROTECT";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      const m = options.dontWake ? WP_DONTWAKE : 0;
      let rc = resolve.writeprotect(this.fd, span.start, span.len, m);
      if (rc === -ENOENT) rc = this.#acrossMappingsN(RETRY.writeprotect, span.start, span.len, 0, m);
      if (rc < 0) {
        throw kernelError(operation, rc, {
          start: BigInt(span.start),
          len: BigInt(span.len),
          mode: options.dontWake ? "dontwake" : "0",
        });
      }
      return;
    }
    const { start, len } = pageRange(range, operation);
    const mode = options.dontWake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0n;
    let rc = ops.uffdioWriteprotect(this.fd, start, len, mode);
    if (rc === -ENOENT) rc = this.#acrossMappingsN(RETRY.writeprotect, Number(start), Number(len), 0, Number(mode));
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: options.dontWake ? "dontwake" : "0" });
  }

  /**
   * Resolves missing faults by copying `source` into `destination` (`UFFDIO_COPY`).
   * `source` is bytes (at least `destination.length` of them) or an address in
   * this process. Returns the bytes copied, which may be fewer than asked when the
   * kernel stopped early; a kernel error is thrown, never returned as a count.
   *
   * @param destination The missing pages to fill (page-aligned).
   * @param source At least `destination.length` bytes, or their address in this process.
   * @param options `dontWake`, and `wp` to map the pages write-protected.
   * @returns Bytes copied.
   * @throws {UffdError} `EEXIST` when a page is already mapped; `ENOENT` when the range is not registered for missing
   *   faults; `EAGAIN` while the address space changes.
   *
   * @example
   * ```ts
   * import { Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * const page = new Uint8Array(Region.pageSize).fill(0x5a);
   * console.log(uffd.copy(mem, page), mem.bytes[0]); // 4096 90
   * ```
   */
  copy(destination: Range, source: Uint8Array | bigint, options?: WakeOptions & { wp?: boolean }): number {
    const operation = "UFFDIO_COPY";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(destination, operation, span)) {
      const at = span.start;
      const length = span.len;
      const from = this.#sourceNumber(source, length, operation);
      if (from >= 0) {
        if (options.wp && this.#selfDeadlocks) {
          this.#refuseSelfDeadlock(operation, { dst: BigInt(at), len: BigInt(length) });
        }
        const m = (options.dontWake ? COPY_DONTWAKE : 0) | (options.wp ? COPY_WP : 0);
        let done = resolve.copy(this.fd, at, from, length, m);
        if (done === -ENOENT) {
          done = this.#acrossMappingsN(RETRY.copy, at, length, from, m);
        }
        if (done < 0) throw kernelError(operation, done, { dst: BigInt(at), src: BigInt(from), len: BigInt(length) });
        return done;
      }
    }
    const { start, len } = pageRange(destination, operation);
    const src = this.#source(source, len, operation);
    if (options.wp) this.#refuseSelfDeadlock(operation, { dst: start, len });
    const mode = (options.dontWake ? UFFDIO_COPY_MODE_DONTWAKE : 0n) | (options.wp ? UFFDIO_COPY_MODE_WP : 0n);
    let done = ops.uffdioCopy(this.fd, start, src, len, mode);
    if (done === -ENOENT) {
      done = this.#acrossMappingsN(RETRY.copy, Number(start), Number(len), Number(src), Number(mode));
    }
    if (done < 0) throw kernelError(operation, done, { dst: start, src, len });
    return done;
  }

  /**
   * Maps the zero page over a missing range (`UFFDIO_ZEROPAGE`); returns bytes mapped.
   *
   * @param range Missing pages (page-aligned).
   * @param options `dontWake`.
   * @returns Bytes mapped.
   * @throws {UffdError} `EEXIST`, `ENOENT`, `EAGAIN` as `copy`; `EINVAL` on hugetlb.
   */
  zeropage(range: Range, options?: WakeOptions): number {
    const operation = "UFFDIO_ZEROPAGE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      const m = options.dontWake ? ZEROPAGE_DONTWAKE : 0;
      let done = resolve.zeropage(this.fd, span.start, span.len, m);
      if (done === -ENOENT) done = this.#acrossMappingsN(RETRY.zeropage, span.start, span.len, 0, m);
      if (done < 0) throw kernelError(operation, done, { start: BigInt(span.start), len: BigInt(span.len) });
      return done;
    }
    const { start, len } = pageRange(range, operation);
    const mode = options.dontWake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0n;
    let done = ops.uffdioZeropage(this.fd, start, len, mode);
    if (done === -ENOENT) done = this.#acrossMappingsN(RETRY.zeropage, Number(start), Number(len), 0, Number(mode));
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Resolves minor faults by mapping the pages already in the page cache
   * (`UFFDIO_CONTINUE`); `wp` maps them write-protected. Returns bytes mapped.
   *
   * @param range Pages in the page cache but not mapped (page-aligned).
   * @param options `dontWake`, `wp`.
   * @returns Bytes mapped.
   * @throws {UffdError} `EFAULT` when a page is not in the page cache; `ENOENT` when not registered for minor faults.
   */
  continue(range: Range, options?: WakeOptions & { wp?: boolean }): number {
    const operation = "UFFDIO_CONTINUE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      if (options.wp && this.#selfDeadlocks) {
        this.#refuseSelfDeadlock(operation, { start: BigInt(span.start), len: BigInt(span.len) });
      }
      const m = (options.dontWake ? CONTINUE_DONTWAKE : 0) | (options.wp ? CONTINUE_WP : 0);
      let done = resolve.continuePages(this.fd, span.start, span.len, m);
      if (done === -ENOENT) {
        done = this.#acrossMappingsN(RETRY.continue, span.start, span.len, 0, m);
      }
      if (done < 0) throw kernelError(operation, done, { start: BigInt(span.start), len: BigInt(span.len) });
      return done;
    }
    const { start, len } = pageRange(range, operation);
    if (options.wp) this.#refuseSelfDeadlock(operation, { start, len });
    const mode = (options.dontWake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0n) |
      (options.wp ? UFFDIO_CONTINUE_MODE_WP : 0n);
    let done = ops.uffdioContinue(this.fd, start, len, mode);
    if (done === -ENOENT) done = this.#acrossMappingsN(RETRY.continue, Number(start), Number(len), 0, Number(mode));
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Poisons missing pages (`UFFDIO_POISON`, Linux 6.6): a later access raises
   * SIGBUS in user space, or EFAULT/EIO from a system call. Returns bytes poisoned.
   *
   * @param range Missing pages (page-aligned).
   * @param options `dontWake`.
   * @returns Bytes poisoned.
   * @throws {UffdError} `EEXIST` when a page is mapped; `ENOENT` when not registered for missing faults; `EINVAL` before
   *   the system call on a kernel without it (before 6.6).
   */
  poison(range: Range, options?: WakeOptions): number {
    const operation = "UFFDIO_POISON";
    this.#check(operation);
    options = optionsBag(options, operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      if (!Userfaultfd.supported().features.has("POISON")) {
        throw invalid(operation, `UFFDIO_POISON is not available: Linux 6.6+ (this kernel: ${kernelRelease()})`, {
          start: BigInt(span.start),
          len: BigInt(span.len),
        });
      }
      const m = options.dontWake ? POISON_DONTWAKE : 0;
      let done = resolve.poison(this.fd, span.start, span.len, m);
      if (done === -ENOENT) done = this.#acrossMappingsN(RETRY.poison, span.start, span.len, 0, m);
      if (done < 0) throw kernelError(operation, done, { start: BigInt(span.start), len: BigInt(span.len) });
      return done;
    }
    const { start, len } = pageRange(range, operation);
    if (!Userfaultfd.supported().features.has("POISON")) {
      // The kernel would say EINVAL, as for any ioctl it does not know.
      throw invalid(operation, `UFFDIO_POISON is not available: Linux 6.6+ (this kernel: ${kernelRelease()})`, {
        start,
        len,
      });
    }
    const mode = options.dontWake ? UFFDIO_POISON_MODE_DONTWAKE : 0n;
    let done = ops.uffdioPoison(this.fd, start, len, mode);
    if (done === -ENOENT) done = this.#acrossMappingsN(RETRY.poison, Number(start), Number(len), 0, Number(mode));
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Moves pages from `source` (an address, or a `Range` whose start is used) into the
   * missing range `destination` without copying (`UFFDIO_MOVE`, needs the `MOVE`
   * feature). Returns bytes moved.
   *
   * @param destination The missing pages to fill (page-aligned).
   * @param source The first source address, or a range whose start is used.
   * @param options `dontWake`, `allowSrcHoles`.
   * @returns Bytes moved.
   * @throws {UffdError} `EINVAL` without the `MOVE` feature or on memory that is not private anonymous; `EBUSY` for a
   *   shared source page; `ENOENT` for holes.
   */
  move(
    destination: Range,
    source: bigint | Range,
    options?: WakeOptions & { allowSrcHoles?: boolean },
  ): number {
    const operation = "UFFDIO_MOVE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(destination, operation);
    const src = typeof source === "bigint" ? source : pageRange(source, operation).start;
    const srcChecked = pageRange({ address: src, length: len }, operation).start;
    if ((this.featureMask & UFFD_FEATURE_MOVE) === 0n) {
      throw invalid(operation, "this userfaultfd was opened without the MOVE feature", { dst: start, src, len });
    }
    const mode = (options.dontWake ? UFFDIO_MOVE_MODE_DONTWAKE : 0n) |
      (options.allowSrcHoles ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0n);
    const done = ops.uffdioMove(this.fd, start, srcChecked, len, mode);
    if (done < 0) throw kernelError(operation, done, { dst: start, src: srcChecked, len });
    return done;
  }

  /**
   * Repeats a range ioctl — one of {@linkcode RETRY}, with a copy's `source` and the
   * `mode` bits — one mapping at a time after the kernel refused the whole range
   * with `ENOENT` because it runs into the next mapping (a memory that grew while
   * registered, a range split by `madvise`): see `byMapping` in `maps.ts`. Only
   * where this userfaultfd registered all of the range — otherwise `ENOENT` stands:
   * the range reaches memory that is not ours. Returns bytes done or `-errno`.
   *
   * A method of its own, with the ioctl from a table: a closure over a caller's
   * locals (or `this`) would make V8 allocate a context on every call of the
   * caller, the hot path included; this one is built on the rare path only.
   */
  #acrossMappingsN(op: Retry, start: number, len: number, source: number, mode: number): number {
    if (len <= PAGE_SIZE || !this.#registrations.covers(BigInt(start), BigInt(start + len))) return -ENOENT;
    const fd = this.fd;
    return byMapping(start, len, (s, l) => op(fd, s, l, source + s - start, mode));
  }

  /** Wakes the threads waiting on a range (after `dontWake` resolutions). */
  wake(range: Range): void {
    const operation = "UFFDIO_WAKE";
    this.#check(operation);
    const span = this.#span;
    if (pageRangeInto(range, operation, span)) {
      const rc = resolve.wake(this.fd, span.start, span.len);
      if (rc < 0) throw kernelError(operation, rc, { start: BigInt(span.start), len: BigInt(span.len) });
      return;
    }
    const { start, len } = pageRange(range, operation);
    const rc = ops.uffdioWake(this.fd, start, len);
    if (rc < 0) throw kernelError(operation, rc, { start, len });
  }

  /**
   * Reads every queued message, many per `read(2)`, and returns them as typed
   * events (an empty array when none is queued). On a blocking fd this waits for
   * the first message. Unmap and remap events update `registrations`.
   *
   * @example
   * ```ts
   * import { Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open();
   * console.log(uffd.readEvents()); // []
   * ```
   */
  readEvents(): UffdEvent[] {
    const events: UffdEvent[] = [];
    const batch = this.#messages ??= new EventBatch(MESSAGES_PER_READ);
    for (;;) {
      const n = this.readEventsInto(batch);
      for (let i = 0; i < n; i++) events.push(batch.event(i));
      if (n < batch.capacity || !this.nonblocking) break;
    }
    return events;
  }

  /**
   * Reads the queued messages into `batch` with one `read(2)` — as many as it
   * holds — and returns how many it read: 0 when none is queued (on a blocking fd
   * it waits for the first). Page faults are read from the batch in place, with no
   * object per message: a loop that serves faults this way allocates nothing.
   * Address-space events are decoded when read (unmap and remap update
   * `registrations`, a fork's child userfaultfd is adopted), as `readEvents()` does.
   * Call again while it returns `batch.capacity`: more may be queued.
   *
   * @param batch Where the messages go; what it held before is replaced.
   * @returns Messages read (`batch.length`).
   * @throws {UffdError} `EBADF` when closed; the `read(2)` error otherwise.
   *
   * @example
   * ```ts
   * import { EventBatch, Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open();
   * const batch = new EventBatch(32);
   * console.log(uffd.readEventsInto(batch), batch.length); // 0 0
   * ```
   */
  readEventsInto(batch: EventBatch): number {
    const operation = "read";
    this.#check(operation);
    if (!(batch instanceof EventBatch)) throw new TypeError("readEventsInto: batch must be an EventBatch");
    const threadIds = (this.featureMask & UFFD_FEATURE_THREAD_ID) !== 0n;
    const n = fillBatch(batch, this.fd, threadIds, this.#decodeOther);
    if (n >= 0) return n;
    if (n === -ERRNO.EAGAIN) return 0;
    throw kernelError(operation, n, { fd: this.fd });
  }

  /** An address-space event read into a batch, as an object; unmaps and remaps update `registrations`. */
  readonly #decodeOther = (msg: UffdMsg): UffdEvent => {
    const event = toEvent(msg, false, (fd) => Userfaultfd.adopt(fd, this.featureMask));
    if (event.type === "unmap") this.#registrations.unmapped(event.start, event.end);
    else if (event.type === "remap") this.#registrations.moved(event.from, event.to, event.length);
    return event;
  };

  /**
   * The events of this userfaultfd as an `AsyncIterable` of batches: every message
   * queued at a wake-up is read (many per `read(2)`) and yielded as one array of
   * typed events. It waits with `poll()` on one of Deno's blocking-pool threads
   * (at most one at a time), so the main isolate keeps running: use it to serve
   * faults raised by other threads — `nonblocking` FFI calls, Workers, native code
   * — never by the main isolate itself (that needs a `FaultHandler`). The
   * iteration ends, without an error, when `signal` aborts or the userfaultfd is
   * closed. Needs a non-blocking fd (the default of `open`).
   *
   * The same goes for address-space events: with `EVENT_REMOVE`, `EVENT_REMAP` or
   * `EVENT_UNMAP`, `madvise(MADV_DONTNEED)`, `mremap` and `munmap` of registered
   * memory wait until their event is read — an `mremap` queues a remap event and
   * then an unmap of the old range, so a reader that stops after the remap leaves
   * the caller blocked. Made from the thread that reads the events, such a call
   * would never return: `Region`'s `zap`, `advise`, `movePages` and `unmap` refuse
   * it with `EDEADLK` while this userfaultfd is read here (not `share()`d with a
   * thread that reads it); a raw `madvise` through FFI gets no such check.
   *
   * @example
   * ```ts
   * import { Region, Userfaultfd } from "@uffd/uffd";
   * const libc = Deno.dlopen("libc.so.6", {
   *   memset: { parameters: ["pointer", "i32", "usize"], result: "pointer", nonblocking: true },
   * });
   * using mem = Region.map(4 * Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * // memset runs on a blocking-pool thread, which blocks in each missing fault
   * const writing = libc.symbols.memset(Deno.UnsafePointer.create(mem.address), 7, BigInt(mem.length));
   * const stop = new AbortController();
   * let served = 0;
   * for await (const batch of uffd.events({ signal: stop.signal })) {
   *   for (const event of batch) {
   *     if (event.type !== "pagefault") continue;
   *     uffd.zeropage({ address: event.address, length: Region.pageSize });
   *     if (++served === 4) stop.abort();
   *   }
   * }
   * await writing;
   * libc.close();
   * console.log(served, mem.bytes[3 * Region.pageSize]); // 4 7
   * ```
   */
  events(options: EventsOptions = {}): AsyncIterableIterator<UffdEvent[]> {
    return eventStream(this, options);
  }

  /**
   * Closes the fd: the kernel unregisters every range, clears write protection and
   * wakes every thread blocked in a fault here. Harmless to call twice, or after a
   * thread this fd was shared with closed it. An `events()` stream or a
   * `FaultHandler` waiting on it is woken and ends.
   */
  close(): void {
    untrack(this.#reader);
    if (Atomics.compareExchange(this.#state, 0, 0, 1) !== 0) return;
    this.#registrations.clear();
    libc.close(this.fd);
    notifyClosed(this);
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Refuses a closed fd. A plain read of the shared flag, not `Atomics.load`: an
   * aligned `Int32Array` element is read whole either way, a close racing with
   * the call is caught by the kernel (`EBADF`) either way, and `Atomics.load` costs
   * hundreds of nanoseconds here (a tenth of an ioctl, measured in `copy()`).
   */
  #check(operation: string): void {
    if (this.#state[0] !== 0) {
      throw invalid(operation, "the userfaultfd is closed", { fd: this.fd }, ERRNO.EBADF);
    }
  }

  /**
   * {@linkcode #source} on numbers: the source address, validated as `#source` does,
   * or -1 when it lies above 2^53 (the caller then takes the bigint path).
   */
  #sourceNumber(source: Uint8Array | bigint, len: number, operation: string): number {
    if (typeof source === "bigint") {
      const address = bigintToSafeNumber(source);
      return address >= 0 ? address : bigintToSafeNumber(toAddress(source, operation, "src"));
    }
    if (!(source instanceof Uint8Array)) {
      throw new TypeError(`${operation}: source must be a Uint8Array or a bigint address`);
    }
    if (source.byteLength < len) {
      throw invalid(operation, `source has ${source.byteLength} bytes; the destination needs ${len}`, {
        len: BigInt(len),
      });
    }
    return bigintToSafeNumber(libc.addressOf(source));
  }

  /**
   * Whether {@linkcode #refuseSelfDeadlock} would refuse: two booleans, so that the
   * hot paths test it before building the refusal's arguments.
   */
  get #selfDeadlocks(): boolean {
    return !this.#handled && !this.#neverWaits;
  }

  /**
   * Refuses to write-protect where a write of the calling isolate would wait for a
   * handler that does not exist: no `WP_ASYNC`, nobody else holds the fd, and the
   * caller did not say that only other threads write (`writers: "other-threads"`).
   */
  #refuseSelfDeadlock(operation: string, args: Record<string, unknown>): void {
    // With SIGBUS no fault waits: it raises SIGBUS instead.
    if (!this.#selfDeadlocks) return;
    throw new UffdError({
      errno: ERRNO.EDEADLK,
      operation,
      detail: "no handler serves this userfaultfd and WP_ASYNC is not negotiated: a write to the protected " +
        "memory from this isolate would wait for ever",
      hint: "start the handler first (FaultHandler.start, or a Worker given share() or duplicate()), " +
        'or open it with { writers: "other-threads" } when only other threads write the memory',
      args,
      beforeSyscall: true,
    });
  }

  #source(source: Uint8Array | bigint, len: bigint, operation: string): bigint {
    if (typeof source === "bigint") return toAddress(source, operation, "src");
    if (!(source instanceof Uint8Array)) {
      throw new TypeError(`${operation}: source must be a Uint8Array or a bigint address`);
    }
    if (BigInt(source.byteLength) < len) {
      throw invalid(operation, `source has ${source.byteLength} bytes; the destination needs ${len}`, { len });
    }
    return libc.addressOf(source);
  }
}

/**
 * Turns a decoded `uffd_msg` into a typed event. `adopt` wraps a fork event's fd
 * into a `Userfaultfd`; `threadIds` says whether `THREAD_ID` was negotiated.
 */
function toEvent(msg: UffdMsg, threadIds: boolean, adopt: (fd: number) => Userfaultfd): UffdEvent {
  if ("raw" in msg) return { type: "unknown", code: msg.event, raw: msg.raw };
  switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
      return {
        type: "pagefault",
        address: msg.address,
        flags: msg.flags,
        write: (msg.flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0n,
        wp: (msg.flags & UFFD_PAGEFAULT_FLAG_WP) !== 0n,
        minor: (msg.flags & UFFD_PAGEFAULT_FLAG_MINOR) !== 0n,
        threadId: threadIds ? msg.ptid : undefined,
      };
    case UFFD_EVENT_FORK:
      return { type: "fork", uffd: adopt(msg.ufd) };
    case UFFD_EVENT_REMAP:
      return { type: "remap", from: msg.from, to: msg.to, length: msg.len };
    case UFFD_EVENT_REMOVE:
      return { type: "remove", start: msg.start, end: msg.end };
    case UFFD_EVENT_UNMAP:
      return { type: "unmap", start: msg.start, end: msg.end };
  }
  throw new Error("unreachable");
}
