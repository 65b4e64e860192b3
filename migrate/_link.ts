/**
 * One connection of a migration as the main isolate uses it: frames out (small
 * ones built here, `PAGE` frames built in place by a `BatchBuilder`) and frames
 * in (header, sequence number and CRC checked before the payload is used), and
 * the one conversion of what can go wrong — a `LinkError` of the socket, a
 * `WireError` of a frame — into a {@linkcode MigrationError} that says which end,
 * which frame and which page. A failing end tells its peer with a `FAIL` frame
 * and then lingers until the peer closes (a close with unread data would reset
 * the connection, and the peer could lose the `FAIL`).
 *
 * @example
 * ```ts
 * import { CrcArena } from "./_crc32c.ts";
 * import { Link } from "./_link.ts";
 * import { Socket } from "./_socket.ts";
 * import { TAG } from "./_wire.ts";
 * using listener = Socket.listen({ hostname: "127.0.0.1", port: 0 });
 * const [a, b] = await Promise.all([Socket.connect(listener.local), listener.accept()]);
 * const left = new Link(a, new CrcArena(1 << 16), "source"), right = new Link(b, new CrcArena(1 << 16), "destination");
 * await left.send(TAG.CONF, new Uint8Array([1, 2, 3, 4]));
 * const frame = await right.receive();
 * console.log(frame.tag === TAG.CONF, right.payload(frame)); // true Uint8Array(4) [ 1, 2, 3, 4 ]
 * left.close();
 * right.close();
 * ```
 *
 * @module
 */

import type { CrcArena } from "./_crc32c.ts";
import { LinkError, type Socket } from "./_socket.ts";
import {
  checkFrame,
  decodeFailure,
  encodeFailure,
  type Header,
  HEADER_BYTES,
  NONE,
  readHeader,
  sealFrame,
  TAG,
  tagName,
  WireError,
  writeHeader,
} from "./_wire.ts";
import { MigrationError, type MigrationErrorCode } from "./migration_error.ts";

/** Bytes at the start of a link's arena region kept for headers and small frames. */
export const SMALL_BYTES = 64 * 1024;

/** A frame received: its header, and where its payload is in the arena. */
export interface Received extends Header {
  /** Offset of the payload in the arena's bytes. */
  readonly at: number;
}

/**
 * Frames over one connection, from the main isolate: see the module documentation.
 * The arena region `[start, start + SMALL_BYTES)` is the link's own (headers, small
 * frames); big payloads go where the caller says.
 */
export class Link {
  /** The connection. */
  readonly socket: Socket;
  /** The arena frames are built and checked in. */
  readonly arena: CrcArena;
  /** This end. */
  readonly side: "source" | "destination";
  /** Frames sent so far (the next one's sequence number). */
  sent = 0;
  /** Frames received so far (the next one's expected sequence number). */
  received = 0;
  /** Bytes sent and received, headers included. */
  bytesSent = 0;
  /** Bytes received, headers included. */
  bytesReceived = 0;
  readonly #start: number;
  #closed = false;

  /** A link over `socket`, using the arena's bytes from `start` (default: its base) for small frames. */
  constructor(socket: Socket, arena: CrcArena, side: "source" | "destination", start = arena.base) {
    this.socket = socket;
    this.arena = arena;
    this.side = side;
    this.#start = start;
  }

  /** The sequence number the next frame sent gets (for frames built elsewhere). */
  nextSequence(): number {
    return this.sent;
  }

  /** Sends a small frame (payload up to 60 KiB). */
  async send(tag: number, payload: Uint8Array): Promise<void> {
    if (payload.length > SMALL_BYTES - 2 * HEADER_BYTES) throw new RangeError(`Link.send: ${payload.length} bytes`);
    const at = this.#start + HEADER_BYTES; // the first 16 bytes are the receive header's
    writeHeader(this.arena.bytes, at, tag, payload.length, this.sent);
    this.arena.bytes.set(payload, at + HEADER_BYTES);
    sealFrame(this.arena, at);
    await this.sendBuilt(at, HEADER_BYTES + payload.length);
  }

  /** Sends several small frames in one go (one system call where one is enough): `[tag, payload]` pairs. */
  async sendMany(frames: readonly (readonly [number, Uint8Array])[]): Promise<void> {
    const start = this.#start + HEADER_BYTES;
    let at = start;
    for (const [tag, payload] of frames) {
      if (at + HEADER_BYTES + payload.length > this.#start + SMALL_BYTES) {
        throw new RangeError("Link.sendMany: too big");
      }
      writeHeader(this.arena.bytes, at, tag, payload.length, this.sent);
      this.arena.bytes.set(payload, at + HEADER_BYTES);
      sealFrame(this.arena, at);
      this.sent++;
      at += HEADER_BYTES + payload.length;
    }
    try {
      await this.socket.sendAsync(this.arena.address + start, at - start);
    } catch (e) {
      throw this.error(e, "sending");
    }
    this.bytesSent += at - start;
  }

  /** Sends a frame already sealed in the arena at `at` (its sequence number must be {@linkcode nextSequence}). */
  async sendBuilt(at: number, length: number): Promise<void> {
    this.sent++;
    try {
      await this.socket.sendAsync(this.arena.address + at, length);
    } catch (e) {
      throw this.error(e, "sending");
    }
    this.bytesSent += length;
  }

  /**
   * Receives the next frame: its payload goes to `payloadAt` (default: the small
   * area, for frames up to 60 KiB) and may be at most `room` bytes. Checks the
   * sequence number and the CRC; a `FAIL` from the peer becomes its error.
   *
   * @throws {MigrationError} For every problem, named.
   */
  async receive(payloadAt?: number, room?: number): Promise<Received> {
    const headerAt = this.#start;
    const at = payloadAt ?? this.#start + 2 * HEADER_BYTES;
    const space = room ?? SMALL_BYTES - 2 * HEADER_BYTES;
    let header: Header;
    try {
      await this.socket.recvAsync(this.arena.address + headerAt, HEADER_BYTES);
      header = readHeader(this.arena.bytes, headerAt);
    } catch (e) {
      throw this.error(e, "between frames");
    }
    const where = { tag: tagName(header.tag), sequence: header.sequence };
    if (header.sequence !== this.received) {
      throw this.error(
        new WireError(
          "protocol",
          `frame ${header.sequence} (${where.tag}) arrived where frame ${this.received} was due`,
        ),
        "",
        where,
      );
    }
    if (header.length > space) {
      throw this.error(
        new WireError("protocol", `a ${where.tag} frame of ${header.length} bytes (at most ${space} expected here)`),
        "",
        where,
      );
    }
    try {
      await this.socket.recvAsync(this.arena.address + at, header.length);
    } catch (e) {
      throw this.error(
        e,
        `inside the ${where.tag} frame ${header.sequence} (${header.length} bytes of payload)`,
        where,
      );
    }
    this.received++;
    this.bytesReceived += HEADER_BYTES + header.length;
    try {
      checkFrame(this.arena, headerAt, at, header);
    } catch (e) {
      throw this.error(e, "", where);
    }
    if (header.tag === TAG.FAIL) {
      const f = decodeFailure(this.arena.bytes.subarray(at, at + header.length));
      throw new MigrationError({
        code: f.code,
        side: this.side,
        detail: f.message,
        remote: true,
        frame: f.sequence === NONE ? undefined : { tag: "", sequence: f.sequence },
        page: f.page === NONE ? undefined : f.page,
      });
    }
    return { ...header, at };
  }

  /** The payload of a received frame (a view into the arena, valid until the next receive into that place). */
  payload(frame: Received): Uint8Array {
    return this.arena.bytes.subarray(frame.at, frame.at + frame.length);
  }

  /**
   * Tells the peer why this end stops (a `FAIL` frame, best effort), shuts its
   * side of the connection and waits (at most `lingerMs`) for the peer to close,
   * so that the `FAIL` is not lost to a reset; then closes.
   */
  async fail(error: MigrationError, lingerMs = 2000): Promise<void> {
    if (this.#closed) return;
    if (!error.remote && !this.socket.shut) {
      try {
        await this.send(
          TAG.FAIL,
          encodeFailure({
            code: error.code,
            sequence: error.frame?.sequence ?? NONE,
            page: error.page ?? NONE,
            message: error.detail,
          }),
        );
      } catch { /* the peer is gone already */ }
    }
    await this.linger(lingerMs);
  }

  /** Shuts the sending side, reads and drops whatever comes until the peer closes (at most `lingerMs`), closes. */
  async linger(lingerMs = 2000): Promise<void> {
    if (this.#closed) return;
    try {
      this.socket.shutdownWrite();
      const deadline = performance.now() + lingerMs;
      const sink = this.#start;
      while (performance.now() < deadline) {
        if (!(await this.socket.waitReadable(Math.min(100, deadline - performance.now())))) continue;
        const n = this.socket.recvNow(this.arena.address + sink, SMALL_BYTES);
        if (n === 0 || n < 0 && n !== -11) break;
      }
    } catch { /* closing anyway */ }
    this.close();
  }

  /** Closes the connection. Harmless twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.close();
  }

  /** Whether {@linkcode close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The {@linkcode MigrationError} for what went wrong on this link (a
   * `MigrationError` passes through unchanged).
   */
  error(e: unknown, context: string, frame?: { tag: string; sequence: number }): MigrationError {
    if (e instanceof MigrationError) return e;
    if (e instanceof WireError) {
      return new MigrationError({ code: e.code, side: this.side, detail: e.message, frame, page: e.page, cause: e });
    }
    if (e instanceof LinkError) {
      let code: MigrationErrorCode = e.kind === "timeout" ? "timeout" : "peer-gone";
      if (e.kind === "closed" && this.socket.shut) code = "aborted";
      else if (e.kind === "closed" && (e.done > 0 || context.startsWith("inside"))) code = "truncated";
      const what = code === "truncated"
        ? `the stream ended ${context}, ${e.done} bytes in`
        : code === "timeout"
        ? `the peer stayed silent ${context || "past the timeout"}`
        : code === "aborted"
        ? "aborted"
        : `${e.message}${context ? ` (${context})` : ""}`;
      return new MigrationError({ code, side: this.side, detail: what, frame, cause: e });
    }
    return new MigrationError({
      code: "protocol",
      side: this.side,
      detail: e instanceof Error ? e.message : String(e),
      frame,
      cause: e,
    });
  }
}
