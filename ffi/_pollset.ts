/**
 * A reusable `struct pollfd` array: the descriptors to wait on, polled on this
 * thread (a handler Worker's loop) or on one of Deno's blocking-pool threads
 * (the main isolate's `events()`), and the `revents` the kernel reported.
 *
 * `struct pollfd` is 8 bytes: `int fd`@0, `short events`@4, `short revents`@6.
 *
 * @module
 */

import { poll, pollOffThread } from "./_libc.ts";

const SIZEOF_POLLFD = 8;

/** `POLLIN` */
const POLLIN = 0x1;

/** A fixed set of file descriptors to `poll(2)`, allocated once and reused for every wait. */
export class PollSet {
  readonly #bytes: Uint8Array;
  readonly #ints: Int32Array;
  readonly #shorts: Int16Array;
  /** Number of descriptors. */
  readonly size: number;

  /** A set over `fds`, each waited on for `events` (default `POLLIN`). */
  constructor(fds: readonly number[], events = POLLIN) {
    this.size = fds.length;
    this.#bytes = new Uint8Array(fds.length * SIZEOF_POLLFD);
    this.#ints = new Int32Array(this.#bytes.buffer);
    this.#shorts = new Int16Array(this.#bytes.buffer);
    fds.forEach((fd, i) => {
      this.#ints[i * 2] = fd;
      this.#shorts[i * 4 + 2] = events;
    });
  }

  /** `poll()` on this thread: the number of ready descriptors, 0 on timeout, or `-errno`. */
  poll(timeoutMs: number): number {
    this.#clear();
    return poll(this.#bytes, this.size, timeoutMs);
  }

  /**
   * `poll()` on a blocking-pool thread. Resolves to the ready count, 0 on timeout,
   * or `-1` when poll failed (its errno stays on the other thread). The set must
   * not be polled again until the promise settles.
   */
  pollOffThread(timeoutMs: number): Promise<number> {
    this.#clear();
    return pollOffThread(this.#bytes, this.size, timeoutMs);
  }

  /** The `revents` the last poll reported for descriptor `index` (`POLLIN`, `POLLERR`, …). */
  revents(index: number): number {
    return this.#shorts[index * 4 + 3]!;
  }

  #clear(): void {
    for (let i = 0; i < this.size; i++) this.#shorts[i * 4 + 3] = 0;
  }
}
