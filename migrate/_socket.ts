/**
 * TCP for the live migration, through libc: listening, accepting and connecting
 * with deadlines, and whole sends and exact receives by address — off the
 * calling thread for the main isolate (`*Async`, on Deno's blocking pool, so that
 * it keeps running), on it for Workers (`*Sync`). Plain descriptors rather than
 * `Deno.Conn`s, because the post-copy's two Workers (the source's page server, the
 * destination's fault handler) use the same connections the main isolate opened,
 * and a `Deno.Conn` cannot be handed to a Worker. Every send is `MSG_NOSIGNAL` (a
 * closed peer is `EPIPE`, not `SIGPIPE`); every socket is `SOCK_CLOEXEC`, with
 * `TCP_NODELAY` and `SO_RCVTIMEO`/`SO_SNDTIMEO` set to the caller's silence
 * timeout, so that no blocked call outlives a peer that went quiet.
 *
 * @example
 * ```ts
 * import { Socket } from "./_socket.ts";
 * using listener = Socket.listen({ hostname: "127.0.0.1", port: 0 });
 * const [client, server] = await Promise.all([Socket.connect(listener.local), listener.accept()]);
 * const out = new Uint8Array([1, 2, 3]), got = new Uint8Array(3);
 * await client.sendAsync(Socket.addressOf(out), 3);
 * await server.recvAsync(Socket.addressOf(got), 3);
 * console.log(got); // Uint8Array(3) [ 1, 2, 3 ]
 * client.close();
 * server.close();
 * ```
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { PollSet } from "../ffi/_pollset.ts";
import {
  AF_INET,
  AF_INET6,
  IPPROTO_TCP,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_WAITALL,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLOUT,
  SHUT_RDWR,
  SHUT_WR,
  SO_ERROR,
  SO_KEEPALIVE,
  SO_REUSEADDR,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_NODELAY,
} from "../ffi/linux.ts";
import { ERRNO, errnoName, failure } from "../kernel/errors.ts";

/** A TCP endpoint: an IPv4 or IPv6 literal (or `localhost`) and a port. */
export interface Endpoint {
  /** `127.0.0.1`, `10.0.0.2`, `::1`, `localhost`… (names other than `localhost` are not resolved). */
  readonly hostname: string;
  /** The port (0 to listen on any free one). */
  readonly port: number;
}

/** Why a transfer stopped: the peer closed, reset, went silent, or this end shut the socket. */
export class LinkError extends Error {
  /** `closed`: an orderly end of stream; `reset`: an error on the connection; `timeout`: silence. */
  readonly kind: "closed" | "reset" | "timeout";
  /** The errno behind it (0 for an orderly close). */
  readonly errno: number;
  /** Bytes of the transfer done before it stopped. */
  readonly done: number;

  /** An error of `kind` after `done` bytes. */
  constructor(kind: "closed" | "reset" | "timeout", errno: number, done: number) {
    super(
      kind === "closed"
        ? `the peer closed the connection${done > 0 ? ` after ${done} bytes of the transfer` : ""}`
        : kind === "timeout"
        ? "the peer stayed silent past the timeout"
        : `the connection failed: ${errnoName(errno)}`,
    );
    this.name = "LinkError";
    this.kind = kind;
    this.errno = errno;
    this.done = done;
  }
}

const SO_RCVTIMEO = 20;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
/** Transfers up to this size are tried on the calling thread first (`MSG_DONTWAIT`). */
const INLINE_BYTES = 64 * 1024;
const SO_SNDTIMEO = 21;
const EAGAIN = ERRNO.EAGAIN!;
const EINTR = ERRNO.EINTR!;
const EINPROGRESS = ERRNO.EINPROGRESS!;
const ECONNREFUSED = ERRNO.ECONNREFUSED!;

/** Parses an IPv4 literal, or `undefined`. */
function ipv4(text: string): number[] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const bytes = parts.map((p) => /^\d{1,3}$/.test(p) ? Number(p) : NaN);
  return bytes.every((b) => b >= 0 && b <= 255) ? bytes : undefined;
}

/** Parses an IPv6 literal (with or without brackets), or `undefined`. */
function ipv6(text: string): number[] | undefined {
  const t = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (!t.includes(":") || !/^[0-9a-fA-F:.]+$/.test(t)) return undefined;
  const [head, tail, extra] = t.split("::");
  if (extra !== undefined) return undefined;
  const groups = (s: string | undefined): number[] | undefined => {
    if (s === undefined || s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (g.includes(".")) {
        const v4 = ipv4(g);
        if (!v4) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(g)) out.push(parseInt(g, 16));
      else return undefined;
    }
    return out;
  };
  const a = groups(head), b = groups(tail);
  if (!a || !b) return undefined;
  const fill = tail === undefined ? 0 : 8 - a.length - b.length;
  if (fill < 0 || (tail === undefined && a.length !== 8)) return undefined;
  const words = [...a, ...new Array(fill).fill(0), ...b];
  return words.flatMap((w) => [w >> 8, w & 0xff]);
}

/**
 * The `struct sockaddr_in` or `sockaddr_in6` of an endpoint.
 *
 * @throws {TypeError} For a hostname that is not an IP literal or `localhost`, or a bad port.
 */
export function sockaddr(endpoint: Endpoint): { family: number; bytes: Uint8Array } {
  const { hostname, port } = endpoint;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TypeError(`bad port ${String(port)}: an integer from 0 to 65535`);
  }
  const name = hostname === "localhost" ? "127.0.0.1" : hostname;
  const v4 = typeof name === "string" ? ipv4(name) : undefined;
  if (v4) {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setUint16(0, AF_INET, true);
    new DataView(bytes.buffer).setUint16(2, port, false);
    bytes.set(v4, 4);
    return { family: AF_INET, bytes };
  }
  const v6 = typeof name === "string" ? ipv6(name) : undefined;
  if (v6) {
    const bytes = new Uint8Array(28);
    new DataView(bytes.buffer).setUint16(0, AF_INET6, true);
    new DataView(bytes.buffer).setUint16(2, port, false);
    bytes.set(v6, 8);
    return { family: AF_INET6, bytes };
  }
  throw new TypeError(
    `hostname ${JSON.stringify(hostname)} is not an IPv4 or IPv6 address (or localhost): names are not resolved here`,
  );
}

/** The endpoint a `struct sockaddr_in`/`_in6` holds. */
function endpointOf(bytes: Uint8Array): Endpoint {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET) return { hostname: [...bytes.subarray(4, 8)].join("."), port };
  const words: string[] = [];
  for (let i = 0; i < 8; i++) words.push(view.getUint16(8 + 2 * i, false).toString(16));
  return { hostname: words.join(":").replace(/(^|:)0(:0)+(:|$)/, "::"), port };
}

function setTimeouts(fd: number, timeoutMs: number): void {
  const tv = new BigInt64Array(2);
  tv[0] = BigInt(Math.floor(timeoutMs / 1000));
  tv[1] = BigInt(Math.round((timeoutMs % 1000) * 1000));
  const bytes = new Uint8Array(tv.buffer);
  libc.setsockoptBytes(fd, SOL_SOCKET, SO_RCVTIMEO, bytes);
  libc.setsockoptBytes(fd, SOL_SOCKET, SO_SNDTIMEO, bytes);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What `connect` and `accept` take: how long to try, and a signal that stops them. */
export interface WaitOptions {
  /** Give up after this many milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Stops the wait. */
  signal?: AbortSignal;
}

/**
 * One TCP socket of this process (listening or connected). Not bound to a thread:
 * its `fd` may be passed to a Worker, which then uses the `*Sync` functions.
 *
 * @example
 * ```ts
 * import { Socket } from "./_socket.ts";
 * using listener = Socket.listen({ hostname: "127.0.0.1", port: 0 });
 * console.log(listener.local.port > 0); // true
 * ```
 */
export class Socket implements Disposable {
  /** The descriptor. */
  readonly fd: number;
  #closed = false;
  #silenceMs = 10_000;
  /** Set once this end shut the socket down (an abort): a failing transfer is then not the peer's doing. */
  shut = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** The address of a buffer's first byte, for the transfers. */
  static addressOf(bytes: Uint8Array): number {
    return Number(libc.addressOf(bytes));
  }

  /**
   * A listening socket on `endpoint` (`SO_REUSEADDR`; port 0 picks a free port: see `local`).
   *
   * @throws {UffdError} From `socket`, `bind` (`EADDRINUSE`…) or `listen`.
   */
  static listen(endpoint: Endpoint, backlog = 8): Socket {
    const { family, bytes } = sockaddr(endpoint);
    const fd = libc.socket(family, SOCK_STREAM | SOCK_CLOEXEC);
    if (fd < 0) throw failure("socket", fd);
    const socket = new Socket(fd);
    try {
      libc.setsockoptInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      let rc = libc.bind(fd, bytes);
      if (rc < 0) throw failure("bind", rc, { hostname: endpoint.hostname, port: endpoint.port });
      rc = libc.listen(fd, backlog);
      if (rc < 0) throw failure("listen", rc);
    } catch (e) {
      socket.close();
      throw e;
    }
    return socket;
  }

  /**
   * Connects to `endpoint`, retrying while it refuses (its listener may not be up
   * yet) until `timeoutMs` has passed.
   *
   * @throws {UffdError} The last `connect` error once the time is up (`ECONNREFUSED`, `ETIMEDOUT`, …).
   */
  static async connect(endpoint: Endpoint, options: WaitOptions & { silenceMs?: number } = {}): Promise<Socket> {
    const { family, bytes } = sockaddr(endpoint);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      options.signal?.throwIfAborted();
      const fd = libc.socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) throw failure("socket", fd);
      const socket = new Socket(fd);
      let rc = libc.connect(fd, bytes);
      if (rc === -EINPROGRESS) {
        const set = new PollSet([fd], POLLOUT);
        for (;;) {
          const left = deadline - performance.now();
          const ready = await set.pollOffThread(Math.max(0, Math.min(200, left)));
          if (ready > 0 || left <= 0 || options.signal?.aborted) break;
        }
        const err = libc.getsockoptInt(fd, SOL_SOCKET, SO_ERROR);
        rc = err < 0 ? err : -err;
        if (rc === 0 && (set.revents(0) & POLLOUT) === 0) rc = -ERRNO.ETIMEDOUT!;
      }
      if (rc === 0) {
        libc.setNonblocking(fd, false);
        socket.configure(options.silenceMs ?? 10_000);
        return socket;
      }
      socket.close();
      options.signal?.throwIfAborted();
      if (rc !== -ECONNREFUSED || performance.now() >= deadline) {
        throw failure("connect", rc, { hostname: endpoint.hostname, port: endpoint.port });
      }
      await sleep(Math.min(50, Math.max(0, deadline - performance.now())));
    }
  }

  /** Where a listening (or connected) socket is bound. */
  get local(): Endpoint {
    const bytes = new Uint8Array(28);
    const rc = libc.getsockname(this.fd, bytes);
    if (rc < 0) throw failure("getsockname", rc, { fd: this.fd });
    return endpointOf(bytes);
  }

  /**
   * Accepts one connection, waiting at most `timeoutMs`.
   *
   * @throws {UffdError} `ETIMEDOUT` when none came in time; `accept4`'s error.
   */
  async accept(options: WaitOptions & { silenceMs?: number } = {}): Promise<Socket> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = performance.now() + timeoutMs;
    const set = new PollSet([this.fd], POLLIN);
    for (;;) {
      options.signal?.throwIfAborted();
      const left = deadline - performance.now();
      if (left <= 0) {
        throw failure("accept", -ERRNO.ETIMEDOUT!, undefined, undefined, `no connection came within ${timeoutMs} ms`);
      }
      const ready = await set.pollOffThread(Math.min(200, left));
      if (this.#closed) throw failure("accept", -ERRNO.EBADF!, undefined, undefined, "the listener was closed");
      if (ready <= 0 || (set.revents(0) & POLLIN) === 0) continue;
      const fd = libc.accept4(this.fd, SOCK_CLOEXEC);
      if (fd === -EAGAIN || fd === -EINTR || fd === -ERRNO.ECONNABORTED!) continue;
      if (fd < 0) throw failure("accept4", fd);
      const socket = new Socket(fd);
      socket.configure(options.silenceMs ?? 10_000);
      return socket;
    }
  }

  /** `TCP_NODELAY`, and the silence timeout on both directions. */
  configure(silenceMs: number): void {
    this.#silenceMs = silenceMs;
    libc.setsockoptInt(this.fd, IPPROTO_TCP, TCP_NODELAY, 1);
    setTimeouts(this.fd, silenceMs);
    // A peer whose machine vanishes (no reset ever comes) is found by the kernel: probes after the silence timeout.
    libc.setsockoptInt(this.fd, SOL_SOCKET, SO_KEEPALIVE, 1);
    libc.setsockoptInt(this.fd, IPPROTO_TCP, TCP_KEEPIDLE, Math.max(1, Math.ceil(silenceMs / 1000)));
    libc.setsockoptInt(this.fd, IPPROTO_TCP, TCP_KEEPINTVL, 1);
    libc.setsockoptInt(this.fd, IPPROTO_TCP, TCP_KEEPCNT, 3);
  }

  /** The pending error of the connection (`SO_ERROR`), 0 when none. */
  pendingError(): number {
    const err = libc.getsockoptInt(this.fd, SOL_SOCKET, SO_ERROR);
    return err < 0 ? -err : err;
  }

  /**
   * Sends `length` bytes from `address`, on a blocking-pool thread.
   *
   * @throws {LinkError} When the connection fails or the peer stops reading for the silence timeout.
   */
  async sendAsync(address: number, length: number): Promise<void> {
    let done = 0;
    if (length <= INLINE_BYTES) {
      // A small frame usually fits the socket's buffer: sent on this thread, without a trip to the pool.
      const n = libc.sendAt(this.fd, address, length, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) done = n;
    }
    while (done < length) {
      const t0 = performance.now();
      const n = await libc.sendAtOffThread(this.fd, address + done, length - done, MSG_NOSIGNAL);
      if (n > 0) {
        done += n;
        continue;
      }
      throw this.#failed(n, done, performance.now() - t0);
    }
  }

  /**
   * Receives exactly `length` bytes into `address`, on a blocking-pool thread.
   *
   * @throws {LinkError} `closed` at the end of the stream, `timeout` after the silence timeout, else `reset`.
   */
  async recvAsync(address: number, length: number): Promise<void> {
    let done = 0;
    if (length <= INLINE_BYTES) {
      // What is already there is read on this thread: a wait goes to the pool only when something must come.
      const n = libc.recvAt(this.fd, address, length, MSG_DONTWAIT);
      if (n > 0) done = n;
      else if (n === 0) throw new LinkError("closed", 0, 0);
    }
    while (done < length) {
      const t0 = performance.now();
      const n = await libc.recvAtOffThread(this.fd, address + done, length - done, MSG_WAITALL);
      if (n > 0) {
        done += n;
        continue;
      }
      if (n === 0) throw new LinkError("closed", 0, done);
      throw this.#failed(n, done, performance.now() - t0);
    }
  }

  /** Whether bytes (or the end of the stream) wait to be read, now (`poll` with no wait, on this thread). */
  readable(): boolean {
    const set = new PollSet([this.fd], POLLIN);
    return set.poll(0) > 0 && (set.revents(0) & (POLLIN | POLLHUP | POLLERR)) !== 0;
  }

  /** Waits until bytes (or the end of the stream) can be read, at most `timeoutMs`, off this thread. */
  async waitReadable(timeoutMs: number): Promise<boolean> {
    const set = new PollSet([this.fd], POLLIN);
    const ready = await set.pollOffThread(Math.max(0, Math.round(timeoutMs)));
    return ready > 0 && (set.revents(0) & (POLLIN | POLLHUP | POLLERR)) !== 0;
  }

  /** `recv` without waiting (`MSG_DONTWAIT`) on this thread: bytes read, 0 at the end of the stream, or `-errno`. */
  recvNow(address: number, length: number): number {
    return libc.recvAt(this.fd, address, length, MSG_DONTWAIT);
  }

  /** Shuts the sending direction: the peer reads the end of the stream after what was sent. */
  shutdownWrite(): void {
    if (this.#closed) return;
    libc.shutdown(this.fd, SHUT_WR);
  }

  /** Shuts both directions down: every transfer in progress on any thread ends at once. Harmless twice. */
  shutdown(): void {
    if (this.#closed) return;
    this.shut = true;
    libc.shutdown(this.fd, SHUT_RDWR);
  }

  /** Closes the descriptor. Harmless twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * The error of a failed off-thread transfer. Its errno stayed on the other thread,
   * and the socket's pending error was consumed by the failing call: a call that
   * blocked for the whole silence timeout timed out, any other failed on the
   * connection (reset, or a peer that closed).
   */
  #failed(n: number, done: number, ms: number): LinkError {
    const err = this.pendingError();
    if (this.shut) return new LinkError("closed", 0, done);
    if (n === 0) return new LinkError("closed", 0, done);
    if (err === 0 && ms >= 0.9 * this.#silenceMs) return new LinkError("timeout", EAGAIN, done);
    return new LinkError("reset", err === 0 ? ERRNO.ECONNRESET! : err, done);
  }
}

/**
 * Sends `length` bytes from `address` on `fd`, blocking this thread (a Worker).
 *
 * @throws {LinkError} As {@linkcode Socket.sendAsync}.
 */
export function sendSync(fd: number, address: number, length: number): void {
  let done = 0;
  while (done < length) {
    const n = libc.sendAt(fd, address + done, length - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n === -EINTR) continue;
    if (n === -EAGAIN) throw new LinkError("timeout", EAGAIN, done);
    throw new LinkError(n === 0 ? "closed" : "reset", -n, done);
  }
}

/**
 * Receives exactly `length` bytes into `address` from `fd`, blocking this thread (a Worker).
 *
 * @throws {LinkError} As {@linkcode Socket.recvAsync}.
 */
export function recvSync(fd: number, address: number, length: number): void {
  let done = 0;
  while (done < length) {
    const n = libc.recvAt(fd, address + done, length - done, MSG_WAITALL);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n === -EINTR) continue;
    if (n === 0) throw new LinkError("closed", 0, done);
    if (n === -EAGAIN) throw new LinkError("timeout", EAGAIN, done);
    throw new LinkError("reset", -n, done);
  }
}
