/**
 * The implementation of `Userfaultfd.events()`: batches of events, waiting with
 * `poll()` on one of Deno's blocking-pool threads so that the main isolate's
 * event loop keeps running. Each wait polls the userfaultfd and an `eventfd`
 * that an `AbortSignal` or `close()` writes, so the stream ends promptly; at most
 * one pool thread is held per stream at any time. Generic over its
 * {@linkcode EventSource}, so that it needs nothing of `Userfaultfd` but what it
 * reads. Internal: use `uffd.events()`.
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { PollSet } from "../ffi/_pollset.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLERR, POLLNVAL } from "../ffi/linux.ts";
import { onClose } from "./_on_close.ts";
import { ERRNO, failure, invalid, UffdError } from "./errors.ts";

/** What the stream reads from: a non-blocking fd, its closed flag, and a read of every queued event. */
export interface EventSource<Event> {
  /** The fd polled. */
  readonly fd: number;
  /** `true` once closed (on any thread): the stream ends. */
  readonly closed: boolean;
  /** Whether the fd is `O_NONBLOCK` (a blocking userfaultfd reports `POLLERR` to `poll()`). */
  readonly nonblocking: boolean;
  /** Reads every queued event; an empty array when none is queued. */
  readEvents(): Event[];
}
/**
 * How long one wait lasts before the stream looks at the closed flag again: a close
 * by another thread holding a `share()` of the userfaultfd does not wake the poll,
 * and while the poll holds the file the kernel does not release its waiting faults.
 */
const POLL_MS = 100;

/** Validates the arguments now, and returns the stream (which starts polling on the first `next()`). */
export function eventStream<Event>(
  uffd: EventSource<Event>,
  options: { signal?: AbortSignal },
): AsyncIterableIterator<Event[]> {
  const operation = "Userfaultfd.events";
  if (options === null || typeof options !== "object") {
    throw new TypeError(`${operation}: options must be an object like { signal }`);
  }
  const signal = options.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(`${operation}: signal must be an AbortSignal`);
  }
  if (uffd.closed) throw invalid(operation, "the userfaultfd is closed", { fd: uffd.fd }, ERRNO.EBADF);
  if (!uffd.nonblocking) {
    throw invalid(
      operation,
      "the userfaultfd is blocking: poll() reports POLLERR on it; open it with { nonblocking: true } (the default)",
      { fd: uffd.fd },
    );
  }
  return stream(uffd, signal);
}

async function* stream<Event>(
  uffd: EventSource<Event>,
  signal: AbortSignal | undefined,
): AsyncGenerator<Event[], void> {
  if (signal?.aborted || uffd.closed) return;
  const efd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) throw failure("eventfd", efd);
  const set = new PollSet([uffd.fd, efd]);
  let woken = false;
  const wake = () => {
    if (woken) return;
    woken = true;
    libc.eventfdSignal(efd);
  };
  signal?.addEventListener("abort", wake);
  const unwatch = onClose(uffd, wake);
  const ended = () => woken || signal?.aborted === true || uffd.closed;
  try {
    for (;;) {
      if (ended()) return;
      let batch: Event[];
      try {
        batch = uffd.readEvents();
      } catch (e) {
        if (uffd.closed) return; // closed between the check and the read
        throw e;
      }
      if (batch.length > 0) {
        yield batch;
        continue;
      }
      const ready = await set.pollOffThread(POLL_MS);
      if (ended()) return;
      if (ready < 0) {
        throw new UffdError({
          errno: ERRNO.EIO,
          operation: "poll",
          detail: "poll() failed on a blocking-pool thread (its errno is not readable from here)",
          args: { fd: uffd.fd },
        });
      }
      const revents = set.revents(0);
      if (revents & (POLLERR | POLLNVAL)) {
        throw new UffdError({
          errno: revents & POLLNVAL ? ERRNO.EBADF : ERRNO.EINVAL,
          operation: "poll",
          detail: revents & POLLNVAL ? "the fd is not open" : "POLLERR on the userfaultfd",
          args: { fd: uffd.fd, revents },
        });
      }
    }
  } finally {
    signal?.removeEventListener("abort", wake);
    unwatch();
    libc.close(efd);
  }
}
