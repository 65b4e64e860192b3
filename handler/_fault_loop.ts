/**
 * The fault-serving loop of a `FaultHandler`, run inside its Worker (see
 * `_worker.ts`), and the {@linkcode PolicyContext} the policy resolves faults
 * through: poll, read a batch, serve each fault through the policy without an
 * allocation, answer control requests between batches. Internal; the loop step by
 * step: `docs/fault-handler.md`, "The Worker's loop".
 *
 * @module
 */

import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { MessageBatch } from "../ffi/_message_batch.ts";
import { PollSet } from "../ffi/_pollset.ts";
import * as resolve from "../ffi/_resolve_ops.ts";
import type { UffdMsg } from "../ffi/_structs.ts";
import {
  CTRL,
  type HandlerWorkerData,
  OP,
  PAYLOAD_BYTES,
  serializeError,
  type WorkerMessage,
  type WorkerRange,
} from "./_protocol.ts";
import { latencyBucket, STAT } from "./stats.ts";
import { POLLERR, POLLIN, POLLNVAL } from "../ffi/linux.ts";
import * as builtins from "./builtin_policies.ts";
import type { Fault, FaultPolicy, PolicyContext, PolicyFactory } from "./fault_policy.ts";
import { BUILTIN_POLICIES } from "./policies.ts";
import {
  type Feature,
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFDIO_CONTINUE_MODE_WP,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_WRITEPROTECT_MODE_WP,
} from "../ffi/uapi.ts";
import { type UffdEvent, Userfaultfd } from "../kernel/userfaultfd.ts";
import { byMapping } from "../kernel/maps.ts";

const EAGAIN = ERRNO.EAGAIN!;
const EEXIST = ERRNO.EEXIST!;
const ENOENT = ERRNO.ENOENT!;

/**
 * `rc` of a resolving ioctl over `[address, address + length)`, or — when the kernel
 * said `ENOENT` for a range of several pages, which it does where the range runs into
 * the next mapping — the result of doing it again one mapping at a time
 * (`byMapping`). A range with nothing mapped at its start stays `ENOENT` (vanished).
 */
function spanning(
  rc: number,
  address: number,
  length: number,
  op: (address: number, length: number) => number,
  counts = true,
): number {
  if (rc !== -ENOENT || length <= PAGE_SIZE) return rc;
  const done = byMapping(address, length, op);
  // Ioctls without a count (WRITEPROTECT) answer 0; the part after a hole went away with it.
  return counts || done < 0 ? done : 0;
}
const ESRCH = ERRNO.ESRCH!;
const EINTR = ERRNO.EINTR!;
const FLAG_WRITE = Number(UFFD_PAGEFAULT_FLAG_WRITE);
const FLAG_WP = Number(UFFD_PAGEFAULT_FLAG_WP);
const FLAG_MINOR = Number(UFFD_PAGEFAULT_FLAG_MINOR);
const WRITEPROTECT_WP = Number(UFFDIO_WRITEPROTECT_MODE_WP);
const COPY_WP = Number(UFFDIO_COPY_MODE_WP);
const CONTINUE_WP = Number(UFFDIO_CONTINUE_MODE_WP);
/** How long `stop()` keeps serving what is already queued, and how long a collect waits out `EAGAIN`. */
const DRAIN_MS = 200;
const COLLECT_EAGAIN_MS = 5000;
/**
 * How long an idle loop sleeps in `poll()` before it looks at the closed flag again.
 * A close on the main isolate wakes the loop through the eventfd; a close by another
 * thread holding a `share()` of the userfaultfd wakes nothing — and while this loop
 * keeps its own reference, the kernel does not release the faults waiting on it.
 */
const IDLE_POLL_MS = 100;

/** The fault record handed to the policy, reused for every fault. */
class FaultRecord implements Fault {
  address = 0;
  page = 0;
  pageSize = PAGE_SIZE;
  pageIndex = -1;
  flags = 0;
  write = false;
  wp = false;
  minor = false;
  threadId = 0;
}

/** A contiguous piece of the tracked pages at its current address. */
interface Segment {
  start: number;
  end: number;
  firstPage: number;
  pages: number;
  wp: boolean;
  pageSize: number;
}

function isEagain(error: unknown): boolean {
  return error instanceof UffdError && error.errno === EAGAIN;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The loop and the policy's context. One per Worker. */
export class FaultLoop implements PolicyContext {
  readonly pageSize: number = PAGE_SIZE;
  pages: number;
  readonly features: ReadonlySet<Feature>;
  readonly uffd: Userfaultfd;

  readonly #original: Userfaultfd;
  readonly #fd: number;
  readonly #efd: number;
  readonly #ctrl: Int32Array;
  readonly #payload: Uint8Array;
  readonly #stats: Float64Array;
  readonly #written: Uint8Array;
  readonly #collected: Uint8Array;
  readonly #batch: MessageBatch;
  readonly #poll: PollSet;
  readonly #fault = new FaultRecord();
  readonly #post: (message: WorkerMessage) => void;
  readonly #forward: boolean;
  readonly #spinMs: number;
  readonly #policyName: string;
  readonly #efdBuffer = new Uint8Array(8);
  #segments: Segment[];
  #last: Segment | undefined;
  #policy: FaultPolicy | undefined;
  #handled = 0;
  #deferFlag = false;
  #aborted = false;
  /** Faults to retry after the next events (`EAGAIN`), and the round being retried. */
  #deferredAddress = new Float64Array(64);
  #deferredFlags = new Int32Array(64);
  #deferredThread = new Int32Array(64);
  #deferred = 0;
  #retryAddress = new Float64Array(64);
  #retryFlags = new Int32Array(64);
  #retryThread = new Int32Array(64);
  #retryNext = 0;
  #retryCount = 0;
  #retryT0 = 0;
  /** The batch being handled: next message, message count, read time, whether it held events. */
  #next = 0;
  #count = 0;
  #t0 = 0;
  #batchEvents = false;
  /** A policy's promise that the async path awaits before resuming. */
  #pending: Promise<void> | undefined;
  /** The policy has background work left (`idle()` returned `true`, or was never called). */
  #idle = false;

  private constructor(data: HandlerWorkerData, post: (message: WorkerMessage) => void) {
    this.#original = Userfaultfd.adopt(data.uffd);
    this.uffd = Userfaultfd.adopt(data.own);
    this.features = this.uffd.features;
    this.#fd = data.own.fd;
    this.#efd = data.eventFd;
    this.#ctrl = new Int32Array(data.control);
    this.#payload = new Uint8Array(data.payload);
    this.#stats = new Float64Array(data.stats);
    this.#written = new Uint8Array(data.written);
    this.#collected = new Uint8Array(data.collected);
    this.#batch = new MessageBatch(data.batch);
    this.#poll = new PollSet([this.#fd, this.#efd]);
    this.#post = post;
    this.#forward = data.forwardEvents;
    this.#spinMs = data.spinMicros / 1000;
    this.#policyName = data.policy.name;
    this.pages = data.pages;
    this.#segments = data.ranges.map((r: WorkerRange) => ({
      start: r.start,
      end: r.start + r.pages * PAGE_SIZE,
      firstPage: r.firstPage,
      pages: r.pages,
      wp: r.wp,
      pageSize: r.pageSize,
    }));
  }

  /** Builds the loop and its policy (importing a user policy's module). */
  static async create(data: HandlerWorkerData, post: (message: WorkerMessage) => void): Promise<FaultLoop> {
    const loop = new FaultLoop(data, post);
    const spec = data.policy;
    const exports: Record<string, unknown> = spec.module === BUILTIN_POLICIES ? builtins : await import(spec.module);
    const factory = exports[spec.export];
    if (typeof factory !== "function") {
      throw new TypeError(`policy module ${spec.module} has no function export ${JSON.stringify(spec.export)}`);
    }
    const policy = await (factory as PolicyFactory)(spec.options, loop);
    if (policy === null || typeof policy !== "object" || typeof policy.fault !== "function") {
      throw new TypeError(`the factory ${spec.export} of ${spec.module} did not return a policy with a fault() method`);
    }
    loop.#policy = policy;
    loop.#idle = typeof policy.idle === "function";
    return loop;
  }

  /** Makes the loop stop at its next step (the handler failed elsewhere and closed the fds). */
  abort(): void {
    this.#aborted = true;
  }

  /** Runs until stopped (`"stopped"`) or until the userfaultfd is closed (`"closed"`); throws on failure. */
  async run(): Promise<"stopped" | "closed"> {
    const ctrl = this.#ctrl;
    const poll = this.#poll;
    for (;;) {
      // Deferred faults retry soon; a policy with idle work polls without sleeping; otherwise sleep, but
      // wake now and then to notice a userfaultfd closed by another thread.
      const ready = poll.poll(this.#deferred > 0 ? 1 : this.#idle ? 0 : IDLE_POLL_MS);
      if (ready !== 0 || this.#deferred > 0) this.#stats[STAT.wakeups]++;
      if (ready < 0 && ready !== -EINTR) {
        throw failure("poll", ready, { fd: this.#fd });
      }
      if (poll.revents(1) & POLLIN) libc.read(this.#efd, this.#efdBuffer);
      this.#checkAborted();
      if (this.#original.closed) return "closed";
      if (Atomics.load(ctrl, CTRL.STOP) !== 0) {
        await this.#drain();
        return "stopped";
      }
      if (Atomics.load(ctrl, CTRL.REQUEST) !== this.#handled) await this.#control();
      const revents = poll.revents(0);
      if (revents & (POLLERR | POLLNVAL)) {
        throw new UffdError({
          errno: revents & POLLNVAL ? ERRNO.EBADF! : ERRNO.EINVAL!,
          operation: "poll",
          detail: `revents 0x${revents.toString(16)} on the userfaultfd`,
          args: { fd: this.#fd },
        });
      }
      if ((revents & POLLIN) || this.#deferred > 0) {
        // The synchronous path allocates nothing; only a policy that returns a promise takes the async one.
        let served = this.#serveSync(true, true);
        if (served < 0) served = await this.#serveAsync(true);
        if (this.#spinMs > 0) {
          // Keep reading for a while: the next fault often comes within microseconds,
          // and catching it here saves this thread's sleep and wake-up.
          let until = performance.now() + this.#spinMs;
          while (performance.now() < until && !this.#wanted()) {
            served = this.#serveSync(true, true);
            if (served < 0) served = await this.#serveAsync(true);
            if (served > 0) until = performance.now() + this.#spinMs;
          }
        }
      } else if (this.#idle && ready === 0 && !this.#wanted()) {
        // Nothing is queued: one piece of the policy's background work.
        const more = this.#policy!.idle!(this);
        this.#idle = (typeof more === "boolean" ? more : await more) === true;
        this.#checkAborted();
      }
    }
  }

  /** Calls the policy's `close()`, and closes the handler's own reference to the userfaultfd. */
  close(): void {
    try {
      this.#policy?.close?.();
    } finally {
      this.uffd.close();
    }
  }

  // --- PolicyContext ---

  pageIndex(address: number): number {
    const s = this.#segmentAt(address);
    return s === undefined ? -1 : s.firstPage + Math.floor((address - s.start) / PAGE_SIZE);
  }

  pageAddress(index: number): number {
    const s = this.#segmentOf(index);
    return s === undefined ? -1 : s.start + (index - s.firstPage) * PAGE_SIZE;
  }

  rangeFirstPage(index: number): number {
    const s = this.#segmentOf(index);
    return s === undefined ? index : s.firstPage;
  }

  rangeEndPage(index: number): number {
    const s = this.#segmentOf(index);
    return s === undefined ? index + 1 : s.firstPage + s.pages;
  }

  unprotect(address: number, length: number): boolean {
    const fd = this.#fd;
    const rc = spanning(
      resolve.writeprotect(fd, address, length, 0),
      address,
      length,
      (a, n) => resolve.writeprotect(fd, a, n, 0),
      false,
    );
    return this.#outcome(rc, "UFFDIO_WRITEPROTECT", address, length);
  }

  zeropage(address: number, length: number): boolean {
    const fd = this.#fd;
    const rc = spanning(
      resolve.zeropage(fd, address, length, 0),
      address,
      length,
      (a, n) => resolve.zeropage(fd, a, n, 0),
    );
    return this.#outcome(rc, "UFFDIO_ZEROPAGE", address, length, true);
  }

  copy(destination: number, source: number, length: number, wp = false): boolean {
    const fd = this.#fd;
    const mode = wp ? COPY_WP : 0;
    const done = spanning(
      resolve.copy(fd, destination, source, length, mode),
      destination,
      length,
      (a, n) => resolve.copy(fd, a, source + (a - destination), n, mode),
    );
    return this.#outcome(done, "UFFDIO_COPY", destination, length, true);
  }

  continue(address: number, length: number, wp = false): boolean {
    const fd = this.#fd;
    const mode = wp ? CONTINUE_WP : 0;
    const done = spanning(
      resolve.continuePages(fd, address, length, mode),
      address,
      length,
      (a, n) => resolve.continuePages(fd, a, n, mode),
    );
    return this.#outcome(done, "UFFDIO_CONTINUE", address, length, true);
  }

  poison(address: number, length: number): boolean {
    return this.#outcome(resolve.poison(this.#fd, address, length, 0), "UFFDIO_POISON", address, length, true);
  }

  move(destination: number, source: number, length: number): boolean {
    const done = resolve.move(this.#fd, destination, source, length, 0);
    return this.#outcome(done, "UFFDIO_MOVE", destination, length, true);
  }

  wake(address: number, length: number): void {
    const rc = resolve.wake(this.#fd, address, length);
    if (rc < 0 && rc !== -ENOENT) {
      throw failure("UFFDIO_WAKE", rc, { start: BigInt(address), len: length });
    }
  }

  markWritten(firstPage: number, pages: number): void {
    if (!(firstPage >= 0 && pages >= 0 && firstPage + pages <= this.pages)) {
      throw new RangeError(`pages ${firstPage}..${firstPage + pages} are outside the ${this.pages} tracked pages`);
    }
    const bitmap = this.#written;
    for (let i = firstPage, end = firstPage + pages; i < end; i++) bitmap[i >> 3] |= 1 << (i & 7);
  }

  markWrittenAt(start: number, end: number): void {
    for (const s of this.#segments) {
      const from = Math.max(start, s.start);
      const to = Math.min(end, s.end);
      if (from >= to) continue;
      const first = s.firstPage + Math.floor((from - s.start) / PAGE_SIZE);
      const last = s.firstPage + Math.ceil((to - s.start) / PAGE_SIZE);
      this.markWritten(first, last - first);
    }
  }

  // --- serving ---

  /** Something other than faults needs the loop: a stop, a control request, a close. */
  #wanted(): boolean {
    return Atomics.load(this.#ctrl, CTRL.STOP) !== 0 ||
      Atomics.load(this.#ctrl, CTRL.REQUEST) !== this.#handled ||
      this.#original.closed;
  }

  #checkAborted(): void {
    if (this.#aborted) throw new Error("the fault handler was stopped by a failure");
  }

  /**
   * Reads and handles batches until the queue is empty (or, with `yieldToControl`,
   * until a stop or a control request is waiting), then retries deferred faults once
   * (with `retryTail`). Returns the messages handled — or -1 when a policy returned a
   * promise: the position is saved and {@linkcode #serveAsync} takes over.
   */
  #serveSync(yieldToControl: boolean, retryTail: boolean): number {
    const batch = this.#batch;
    const stats = this.#stats;
    let handled = 0;
    for (;;) {
      const n = batch.read(this.#fd);
      if (n < 0) {
        if (n === -EAGAIN) break;
        throw failure("read", n, { fd: this.#fd });
      }
      stats[STAT.batches]++;
      stats[STAT.messages] += n;
      if (n > stats[STAT.largestBatch]!) stats[STAT.largestBatch] = n;
      handled += n;
      this.#t0 = performance.now();
      this.#next = 0;
      this.#count = n;
      this.#batchEvents = false;
      if (!this.#runBatch()) return -1;
      if (n < batch.capacity) break;
      if (yieldToControl && this.#wanted()) break;
    }
    if (retryTail && this.#deferred > 0 && !this.#runRetries()) return -1;
    return handled;
  }

  /** Finishes what `#serveSync` left when a policy returned a promise, then serves on. */
  async #serveAsync(yieldToControl: boolean): Promise<number> {
    for (;;) {
      const pending = this.#pending!;
      this.#pending = undefined;
      await pending;
      this.#checkAborted();
      // Resume where the promise appeared: the rest of a retry round, then the rest of the batch.
      if (this.#retryNext < this.#retryCount && !this.#runRetries()) continue;
      if (this.#next < this.#count && !this.#runBatch()) continue;
      const served = this.#serveSync(yieldToControl, false);
      if (served >= 0) return served;
    }
  }

  /**
   * Handles messages `#next`…`#count` of the current batch, then (when the batch held
   * events) retries the deferred faults. `false` when a policy returned a promise
   * (kept in `#pending`; `#next` is already past its message).
   */
  #runBatch(): boolean {
    const batch = this.#batch;
    const stats = this.#stats;
    while (this.#next < this.#count) {
      const i = this.#next++;
      let pending: Promise<void> | undefined;
      if (batch.event(i) === UFFD_EVENT_PAGEFAULT) {
        const flags = batch.flags(i);
        stats[STAT.faults]++;
        stats[(flags & FLAG_MINOR) ? STAT.minor : (flags & FLAG_WP) ? STAT.wp : STAT.missing]++;
        if (!this.#setFault(batch.address(i), flags, batch.ptid(i))) stats[STAT.untracked]++;
        pending = this.#resolve(this.#t0);
      } else {
        this.#batchEvents = true;
        pending = this.#event(batch.message(i));
      }
      this.#checkAborted();
      if (pending !== undefined) {
        this.#pending = pending;
        return false;
      }
    }
    if (this.#batchEvents && this.#deferred > 0) {
      // The events that made them fail are read now: retry.
      this.#batchEvents = false;
      return this.#runRetries();
    }
    return true;
  }

  /**
   * Retries the deferred faults once (those that fail with `EAGAIN` again are deferred
   * again). `false` when a policy returned a promise (the round resumes later).
   */
  #runRetries(): boolean {
    if (this.#retryNext >= this.#retryCount) {
      // Start a round: swap the deferred list with the (finished) retry list.
      const n = this.#deferred;
      [this.#retryAddress, this.#deferredAddress] = [this.#deferredAddress, this.#retryAddress];
      [this.#retryFlags, this.#deferredFlags] = [this.#deferredFlags, this.#retryFlags];
      [this.#retryThread, this.#deferredThread] = [this.#deferredThread, this.#retryThread];
      this.#retryNext = 0;
      this.#retryCount = n;
      this.#deferred = 0;
      this.#retryT0 = performance.now();
    }
    while (this.#retryNext < this.#retryCount) {
      const k = this.#retryNext++;
      this.#stats[STAT.retried]++;
      this.#setFault(this.#retryAddress[k]!, this.#retryFlags[k]!, this.#retryThread[k]!);
      const pending = this.#resolve(this.#retryT0);
      this.#checkAborted();
      if (pending !== undefined) {
        this.#pending = pending;
        return false;
      }
    }
    return true;
  }

  /** Fills the fault record; returns whether the fault is on a tracked page. */
  #setFault(address: number, flags: number, threadId: number): boolean {
    const f = this.#fault;
    f.address = address;
    f.flags = flags;
    f.write = (flags & FLAG_WRITE) !== 0;
    f.wp = (flags & FLAG_WP) !== 0;
    f.minor = (flags & FLAG_MINOR) !== 0;
    f.threadId = threadId;
    const s = this.#segmentAt(address);
    if (s === undefined) {
      f.page = address - (address % PAGE_SIZE);
      f.pageSize = PAGE_SIZE;
      f.pageIndex = -1;
      return false;
    }
    const size = s.pageSize;
    f.page = address - (address % size);
    f.pageSize = size;
    f.pageIndex = s.firstPage + (f.page - s.start) / PAGE_SIZE;
    return true;
  }

  /** Runs the policy on the fault record; a promise when the policy returned one. */
  #resolve(t0: number): Promise<void> | undefined {
    this.#deferFlag = false;
    // Counted before the policy runs: the ioctl that resolves the fault wakes its writer, which may read
    // `handler.stats` at once — it must find its fault counted. Taken back if the fault is deferred.
    this.#stats[STAT.resolved]++;
    let result: void | Promise<void> = undefined;
    try {
      result = this.#policy!.fault(this.#fault, this);
    } catch (e) {
      if (!isEagain(e)) throw e;
      this.#deferFlag = true;
    }
    if (result !== undefined && result !== null && typeof (result as Promise<void>).then === "function") {
      return (result as Promise<void>).then(
        () => this.#settle(t0),
        (e) => {
          if (!isEagain(e)) throw e;
          this.#deferFlag = true;
          this.#settle(t0);
        },
      );
    }
    this.#settle(t0);
    return undefined;
  }

  #settle(t0: number): void {
    if (this.#deferFlag) {
      this.#stats[STAT.resolved]--;
      this.#defer();
      return;
    }
    this.#stats[STAT.latency + latencyBucket((performance.now() - t0) * 1000)]++;
  }

  /** Interprets a resolving ioctl's result (see `PolicyContext`). */
  #outcome(rc: number, operation: string, address: number, length: number, progress = false): boolean {
    if (rc >= 0) {
      if (!progress || rc >= length) return true;
      this.#deferFlag = true; // partly done: retry the rest (done pages then report EEXIST)
      return false;
    }
    if (rc === -EAGAIN) {
      this.#deferFlag = true;
      return false;
    }
    if (rc === -EEXIST && progress) {
      this.wake(address, length);
      return true;
    }
    if (rc === -ENOENT || rc === -ESRCH) {
      this.#stats[STAT.vanished]++;
      return false;
    }
    throw failure(operation, rc, { start: BigInt(address), len: length });
  }

  #defer(): void {
    if (this.#deferred === this.#deferredAddress.length) {
      const n = this.#deferredAddress.length * 2;
      const address = new Float64Array(n);
      const flags = new Int32Array(n);
      const thread = new Int32Array(n);
      address.set(this.#deferredAddress);
      flags.set(this.#deferredFlags);
      thread.set(this.#deferredThread);
      this.#deferredAddress = address;
      this.#deferredFlags = flags;
      this.#deferredThread = thread;
    }
    const f = this.#fault;
    this.#deferredAddress[this.#deferred] = f.address;
    this.#deferredFlags[this.#deferred] = f.flags;
    this.#deferredThread[this.#deferred] = f.threadId;
    this.#deferred++;
  }

  /** Handles an address-space event; a promise when the policy's `event` returned one. */
  #event(msg: UffdMsg): Promise<void> | undefined {
    const stats = this.#stats;
    let event: UffdEvent;
    let child: Userfaultfd | undefined;
    if ("raw" in msg) {
      stats[STAT.unknown]++;
      event = { type: "unknown", code: msg.event, raw: msg.raw };
    } else if (msg.event === UFFD_EVENT_FORK) {
      stats[STAT.fork]++;
      child = Userfaultfd.adopt(msg.ufd, this.uffd.featureMask, this.uffd.nonblocking);
      event = { type: "fork", uffd: child };
    } else if (msg.event === UFFD_EVENT_REMAP) {
      stats[STAT.remap]++;
      this.#move(Number(msg.from), Number(msg.from + msg.len), Number(msg.to));
      event = { type: "remap", from: msg.from, to: msg.to, length: msg.len };
    } else if (msg.event === UFFD_EVENT_REMOVE) {
      stats[STAT.remove]++;
      event = { type: "remove", start: msg.start, end: msg.end };
    } else if (msg.event === UFFD_EVENT_UNMAP) {
      stats[STAT.unmap]++;
      this.#move(Number(msg.start), Number(msg.end), -1);
      event = { type: "unmap", start: msg.start, end: msg.end };
    } else {
      throw new Error("unreachable: a page fault decoded as an event");
    }
    const finish = () => {
      if (this.#forward) {
        this.#post({ type: "event", event: child ? { type: "fork", uffd: child.share() } : event as never });
      } else child?.close();
    };
    let pending: void | Promise<void> = undefined;
    try {
      pending = this.#policy!.event?.(event, this);
    } catch (e) {
      finish();
      throw e;
    }
    if (pending !== undefined && pending !== null && typeof (pending as Promise<void>).then === "function") {
      return (pending as Promise<void>).then(finish, (e) => {
        finish();
        throw e;
      });
    }
    finish();
    return undefined;
  }

  /** Moves the tracked pages in `[from, end)` to `to` (mremap), or forgets them (`to` = -1, munmap). */
  #move(from: number, end: number, to: number): void {
    const next: Segment[] = [];
    const piece = (s: Segment, a: number, b: number, shift: number): Segment => ({
      start: a + shift,
      end: b + shift,
      firstPage: s.firstPage + (a - s.start) / PAGE_SIZE,
      pages: (b - a) / PAGE_SIZE,
      wp: s.wp,
      pageSize: s.pageSize,
    });
    for (const s of this.#segments) {
      if (s.end <= from || s.start >= end) {
        next.push(s);
        continue;
      }
      if (s.start < from) next.push(piece(s, s.start, from, 0));
      if (to >= 0) next.push(piece(s, Math.max(s.start, from), Math.min(s.end, end), to - from));
      if (s.end > end) next.push(piece(s, end, s.end, 0));
    }
    this.#segments = next;
    this.#last = undefined;
  }

  #segmentAt(address: number): Segment | undefined {
    const last = this.#last;
    if (last !== undefined && address >= last.start && address < last.end) return last;
    for (const s of this.#segments) {
      if (address >= s.start && address < s.end) return this.#last = s;
    }
    return undefined;
  }

  #segmentOf(index: number): Segment | undefined {
    const last = this.#last;
    if (last !== undefined && index >= last.firstPage && index < last.firstPage + last.pages) return last;
    for (const s of this.#segments) {
      if (index >= s.firstPage && index < s.firstPage + s.pages) return this.#last = s;
    }
    return undefined;
  }

  // --- control ---

  async #control(): Promise<void> {
    const ctrl = this.#ctrl;
    const seq = Atomics.load(ctrl, CTRL.REQUEST);
    const op = Atomics.load(ctrl, CTRL.OP);
    this.#stats[STAT.controls]++;
    let status = 0;
    let length = 0;
    try {
      if (op === OP.COLLECT) {
        length = await this.#collect();
      } else if (op === OP.ADD_RANGES) {
        length = this.#addRanges();
      } else if (op === OP.CONTROL) {
        const request = JSON.parse(decoder.decode(this.#payload.slice(0, Atomics.load(ctrl, CTRL.LENGTH))));
        const policy = this.#policy!;
        if (typeof policy.control !== "function") {
          throw new Error(`the ${this.#policyName} policy has no control operations`);
        }
        const result = await policy.control(request.op, request.arg, this);
        length = this.#writeJson(result === undefined ? null : result);
      } else {
        throw new Error(`unknown control operation ${op}`);
      }
    } catch (e) {
      status = 1;
      length = this.#writeJson(serializeError(e));
    }
    Atomics.store(ctrl, CTRL.STATUS, status);
    Atomics.store(ctrl, CTRL.LENGTH, length);
    this.#handled = seq;
    Atomics.store(ctrl, CTRL.RESPONSE, seq);
    Atomics.notify(ctrl, CTRL.RESPONSE);
  }

  /** Appends the ranges sent by `addRanges()` (the main side grew the bitmaps already); returns the new page count. */
  #addRanges(): number {
    const ranges = JSON.parse(decoder.decode(this.#payload.slice(0, Atomics.load(this.#ctrl, CTRL.LENGTH))));
    for (const r of ranges as WorkerRange[]) {
      if (r.firstPage !== this.pages) {
        throw new Error(`addRanges: range numbered from ${r.firstPage}, expected ${this.pages}`);
      }
      this.#segments.push({
        start: r.start,
        end: r.start + r.pages * PAGE_SIZE,
        firstPage: r.firstPage,
        pages: r.pages,
        wp: r.wp,
        pageSize: r.pageSize,
      });
      this.pages += r.pages;
    }
    this.#last = undefined;
    return this.pages;
  }

  #writeJson(value: unknown): number {
    let bytes = encoder.encode(JSON.stringify(value));
    if (bytes.length > PAYLOAD_BYTES) {
      bytes = encoder.encode(JSON.stringify(serializeError(
        new RangeError(`the result takes ${bytes.length} bytes as JSON; at most ${PAYLOAD_BYTES} fit`),
      )));
    }
    this.#payload.set(bytes);
    return bytes.length;
  }

  /**
   * Re-protects every page recorded as written, moves the records into the
   * `collected` bitmap and returns their number. Between two batches, so no fault
   * is half-handled: a write that lands before a page is re-protected is reported
   * now, one after it faults again and is reported by the next collect.
   */
  async #collect(): Promise<number> {
    const written = this.#written;
    const collected = this.#collected;
    collected.fill(0);
    const total = this.pages;
    const deadline = performance.now() + COLLECT_EAGAIN_MS;
    let count = 0;
    let page = 0;
    while (page < total) {
      const byte = written[page >> 3]!;
      if ((page & 7) === 0 && byte === 0) {
        page += 8;
        continue;
      }
      if ((byte & (1 << (page & 7))) === 0) {
        page++;
        continue;
      }
      const s = this.#segmentOf(page);
      const limit = s === undefined ? page + 1 : s.firstPage + s.pages;
      let end = page + 1;
      while (end < limit && (written[end >> 3]! & (1 << (end & 7))) !== 0) end++;
      if (s !== undefined && s.wp) {
        const start = s.start + (page - s.firstPage) * PAGE_SIZE;
        const fd = this.#fd;
        const len = (end - page) * PAGE_SIZE;
        const rc = spanning(
          resolve.writeprotect(fd, start, len, WRITEPROTECT_WP),
          start,
          len,
          (a, n) => resolve.writeprotect(fd, a, n, WRITEPROTECT_WP),
          false,
        );
        if (rc === -EAGAIN) {
          // An address-space event is waiting: read it (serving faults meanwhile), then retry.
          if (performance.now() > deadline) {
            throw new UffdError({
              errno: EAGAIN,
              operation: "collect",
              detail: `the address space kept changing for ${COLLECT_EAGAIN_MS} ms`,
            });
          }
          if ((await this.#serveAny(false)) === 0) this.#poll.poll(1);
          continue;
        }
        if (rc < 0 && rc !== -ENOENT) {
          throw failure("UFFDIO_WRITEPROTECT", rc, { start: BigInt(start), len: (end - page) * PAGE_SIZE, mode: "wp" });
        }
      }
      for (let i = page; i < end; i++) {
        written[i >> 3] &= ~(1 << (i & 7));
        collected[i >> 3] |= 1 << (i & 7);
      }
      count += end - page;
      page = end;
    }
    this.#stats[STAT.collects]++;
    this.#stats[STAT.collected] += count;
    return count;
  }

  /** `#serveSync` with its retry round, and the async path when a policy needs it (for rare callers). */
  async #serveAny(retryTail: boolean): Promise<number> {
    const served = this.#serveSync(false, retryTail);
    return served >= 0 ? served : await this.#serveAsync(false);
  }

  /** After a stop request: serves what is already queued (bounded), so no waiting writer is left behind. */
  async #drain(): Promise<void> {
    const deadline = performance.now() + DRAIN_MS;
    do {
      await this.#serveAny(true);
      if (this.#deferred === 0) return;
      this.#poll.poll(1);
    } while (performance.now() < deadline);
  }
}
