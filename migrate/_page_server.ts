/**
 * The source's page server for post-copy, run in its own Worker: it sleeps in
 * `poll()` on the fault connection (and an eventfd that stops it), and answers
 * each `REQ_` of the destination — a page some thread of the destination is
 * waiting for — at once with a `PAGE` frame, ahead of the background stream,
 * which the main isolate sends on the other connection. It marks every page it
 * sent (`served`, so that the stream can skip it) and records its CRC (for the
 * image digest). Internal; the protocol: `docs/migration-format.md`, the design:
 * `docs/live-migration.md`.
 *
 * @module
 */

import process from "node:process";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import * as libc from "../ffi/_libc.ts";
import { PollSet } from "../ffi/_pollset.ts";
import { POLLERR, POLLHUP, POLLIN } from "../ffi/linux.ts";
import { CrcArena } from "./_crc32c.ts";
import { LinkError, recvSync, sendSync } from "./_socket.ts";
import { BatchBuilder, checkFrame, HEADER_BYTES, NONE, readHeader, TAG, tagName, WireError } from "./_wire.ts";

/** What the page server's Worker is started with. */
export interface PageServerData {
  /** The fault connection. */
  faultFd: number;
  /** An eventfd: readable means stop. */
  wakeFd: number;
  /** The address of the image's first byte (the source's memory, paused). */
  address: number;
  /** Bytes of the image. */
  imageLength: number;
  /** The page size. */
  pageSize: number;
  /** Pages of the image. */
  imagePages: number;
  /** One byte per page: 1 once this server sent it. */
  served: SharedArrayBuffer;
  /** One u32 per page: the CRC-32C of what was sent. */
  crcs: SharedArrayBuffer;
  /** {@linkcode SERVER_STAT} counters. */
  stats: SharedArrayBuffer;
  /** {@linkcode SERVER_CTRL} words. */
  control: SharedArrayBuffer;
  /** Why it failed, UTF-8. */
  message: SharedArrayBuffer;
  /** The sequence number of the first frame it sends (the source sent `FCON` as 0). */
  sendSequence: number;
  /** The sequence number of the first request (the destination's `FCON` echo was 0). */
  recvSequence: number;
}

/** Slots of the server's counters (`Float64Array`). */
export const SERVER_STAT = {
  /** Requests answered. */
  requests: 0,
  /** Pages sent. */
  pages: 1,
  /** Bytes sent, headers included. */
  bytes: 2,
  /** Bytes received. */
  bytesIn: 3,
  /** Time spent from a request's arrival to its answer being sent, in ms, summed. */
  serviceMs: 4,
  /** Slots. */
  SIZE: 8,
} as const;

/** Slots of the server's control words (`Int32Array`). */
export const SERVER_CTRL = {
  /** {@linkcode SERVER_STATE}. */
  STATE: 0,
  /** Bytes of UTF-8 text in the message. */
  MESSAGE_LENGTH: 1,
  /** Set to 1 by the main isolate once it has read the destination's echo: the server may read the connection. */
  GO: 2,
  /** Slots. */
  SIZE: 4,
} as const;

/** Where the server is. */
export const SERVER_STATE = {
  STARTING: 0,
  RUNNING: 1,
  /** Stopped: told to, or the destination closed the connection. */
  STOPPED: 2,
  FAILED: 3,
} as const;

/** Bytes of the failure message. */
export const SERVER_MESSAGE_BYTES = 1024;

/** How long the server keeps looking for the next request after an answer before it sleeps (ms). */
const SPIN_MS = 0;

/** Runs the server until stopped; returns how it ended. */
export function servePages(data: PageServerData): "stopped" | "closed" {
  const P = data.pageSize;
  const served = new Uint8Array(data.served);
  const crcs = new Uint32Array(data.crcs);
  const stats = new Float64Array(data.stats);
  const arena = new CrcArena(64 * 1024 + 64 * (P + 16));
  const builder = new BatchBuilder(arena, arena.base + 64 * 1024, 64 * (P + 16), P);
  const memory = new Uint8Array(libc.bufferAt(BigInt(data.address), data.imageLength));
  const poll = new PollSet([data.faultFd, data.wakeFd]);
  const headerAt = arena.base;
  const payloadAt = arena.base + HEADER_BYTES;
  let received = data.recvSequence;
  let sent = data.sendSequence;
  const control = new Int32Array(data.control);
  while (Atomics.load(control, SERVER_CTRL.GO) === 0) {
    Atomics.wait(control, SERVER_CTRL.GO, 0, 100);
    if (poll.poll(0) > 0 && (poll.revents(1) & POLLIN)) return "stopped";
  }
  let spinUntil = 0;
  for (;;) {
    // After an answer, keep looking for the next request a little while (the destination's next fault
    // often follows within microseconds): no sleep, no wake-up. Then sleep in poll().
    const ready = poll.poll(performance.now() < spinUntil ? 0 : -1);
    if (ready < 0 && ready !== -4) throw new Error(`poll failed: errno ${-ready}`);
    if (poll.revents(1) & POLLIN) return "stopped";
    if ((poll.revents(0) & (POLLIN | POLLHUP | POLLERR)) === 0) continue;
    const t0 = performance.now();
    try {
      // A request is 24 bytes: its header and payload in one read.
      recvSync(data.faultFd, arena.address + headerAt, HEADER_BYTES + 8);
    } catch (e) {
      if (e instanceof LinkError && e.done === 0 && e.kind !== "timeout") return "closed"; // the destination is done
      throw e;
    }
    const header = readHeader(arena.bytes, headerAt);
    if (header.sequence !== received || header.tag !== TAG.REQ || header.length !== 8) {
      throw new WireError(
        "protocol",
        `the fault connection carried a ${tagName(header.tag)} frame ${header.sequence} of ${header.length} bytes ` +
          `where REQ_ ${received} was due`,
      );
    }
    received++;
    stats[SERVER_STAT.bytesIn] += HEADER_BYTES + 8;
    checkFrame(arena, headerAt, payloadAt, header);
    const view = new DataView(arena.bytes.buffer, payloadAt, 8);
    const first = view.getUint32(0, true);
    const count = view.getUint32(4, true);
    if (count === 0 || count > builder.capacity || first + count > data.imagePages) {
      throw new WireError("protocol", `REQ_ ${header.sequence}: pages ${first}+${count} are not in the image`);
    }
    builder.begin(NONE);
    for (let p = first; p < first + count; p++) {
      builder.add(p, memory.subarray(p * P, Math.min(data.imageLength, (p + 1) * P)), true);
    }
    const frame = builder.seal(sent++);
    sendSync(data.faultFd, arena.address + frame.at, frame.length);
    const sentCrcs = builder.crcs;
    for (let k = 0; k < count; k++) {
      crcs[first + k] = sentCrcs[k]!;
      Atomics.store(served, first + k, 1);
    }
    stats[SERVER_STAT.requests]++;
    stats[SERVER_STAT.pages] += count;
    stats[SERVER_STAT.bytes] += frame.length;
    const t1 = performance.now();
    stats[SERVER_STAT.serviceMs] += t1 - t0;
    spinUntil = t1 + SPIN_MS;
  }
}

// In a Worker started with a PageServerData, serve; imported anywhere else, nothing.
if (!isMainThread && workerData !== null && typeof workerData === "object" && "wakeFd" in workerData) {
  const data = workerData as PageServerData;
  const control = new Int32Array(data.control);
  const finish = (state: number, error?: unknown) => {
    if (error !== undefined) {
      const text = new TextEncoder().encode(error instanceof Error ? error.message : String(error));
      const cut = text.subarray(0, SERVER_MESSAGE_BYTES);
      new Uint8Array(data.message).set(cut);
      Atomics.store(control, SERVER_CTRL.MESSAGE_LENGTH, cut.length);
    }
    Atomics.store(control, SERVER_CTRL.STATE, state);
    Atomics.notify(control, SERVER_CTRL.STATE);
    parentPort!.postMessage({ state });
  };
  process.on("exit", () => {
    if (Atomics.load(control, SERVER_CTRL.STATE) <= SERVER_STATE.RUNNING) {
      finish(SERVER_STATE.FAILED, new Error("the page server's Worker exited"));
    }
  });
  Atomics.store(control, SERVER_CTRL.STATE, SERVER_STATE.RUNNING);
  Atomics.notify(control, SERVER_CTRL.STATE);
  parentPort!.postMessage({ state: SERVER_STATE.RUNNING });
  try {
    servePages(data);
    finish(SERVER_STATE.STOPPED);
  } catch (e) {
    finish(SERVER_STATE.FAILED, e);
  }
}
