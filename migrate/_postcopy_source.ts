/**
 * The destination's side of post-copy: a `LazyRegion` page source (a streaming
 * module source, run in the region's fault handler Worker) whose pages come from
 * the network. A fault on a page still to come sends a `REQ_` on the fault
 * connection and waits for the answer, which the source's page server sends
 * ahead of everything else; the prefetcher takes the background stream, which
 * the source pushes in page order on the main connection, batch by batch as it
 * arrives (`available()` says "not yet" while the next batch is on its way, and
 * waits for it polling the userfaultfd too, so that a fault is never kept
 * waiting behind the stream). Pages known to be zero are mapped as zeros, pages
 * the hybrid's pre-copy rounds brought are copied from the staging memory. A
 * source that vanishes — the connection reset or closed, or silent past the
 * timeout — fails every page still to come: the `LazyRegion` poisons each one
 * touched (or, without `UFFDIO_POISON`, stops), never a hang. Internal; the
 * design: `docs/live-migration.md`.
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { PollSet } from "../ffi/_pollset.ts";
import { MADV_DONTNEED, MSG_DONTWAIT, POLLERR, POLLHUP, POLLIN } from "../ffi/linux.ts";
import { ERRNO, UffdError } from "../kernel/errors.ts";
import type { LazySourceInfo, ModulePageSource } from "../lazy/lazy_region.ts";
import { CrcArena, zeroPageCrc } from "./_crc32c.ts";
import { LinkError, recvSync, sendSync } from "./_socket.ts";
import {
  type Batch,
  checkFrame,
  decodeBatch,
  decodeFailure,
  decodeRuns,
  type Header,
  HEADER_BYTES,
  MAX_PAYLOAD,
  readHeader,
  sealFrame,
  TAG,
  tagName,
  WireError,
  writeHeader,
} from "./_wire.ts";

/** Where each image page comes from, one byte per page. */
export const KIND = {
  /** All zero: mapped as zeros, nothing to fetch. */
  ZERO: 0,
  /** Brought by the hybrid's pre-copy rounds: in the staging memory. */
  STAGED: 1,
  /** Still to come from the source. */
  NETWORK: 2,
} as const;

/** Slots of the shared counters (`Float64Array`). */
export const POST_STAT = {
  /** Fault requests sent (`REQ_`). */
  requests: 0,
  /** Their round trips, summed (ms). */
  requestMs: 1,
  /** Pages taken from the background stream. */
  streamed: 2,
  /** Pages the stream's batches held (some a fault had fetched first). */
  framePages: 3,
  /** Bytes received on both connections. */
  bytes: 4,
  /** Pages copied from the staging memory. */
  staged: 5,
  /** Frames of the stream. */
  frames: 6,
  /** Slots. */
  SIZE: 8,
} as const;

/** Slots of the shared control words (`Int32Array`). */
export const POST_CTRL = {
  /** 1 once the main isolate has filled in the kinds: the source may start. */
  GO: 0,
  /** The sequence number of the next frame due on the main connection (the main isolate's, then this source's). */
  STREAM_SEQUENCE: 1,
  /** 1 once the source is gone; the reason is in the message. */
  GONE: 2,
  /** Bytes of the message. */
  MESSAGE_LENGTH: 3,
  /** 1 once this source read the `END_` frame (its payload is in `end`). */
  END_SEEN: 4,
  /** Slots. */
  SIZE: 8,
} as const;

/** The options the destination passes (structured-cloneable). */
export interface PostcopyOptions {
  /** The main connection (the background stream). */
  streamFd: number;
  /** The fault connection. */
  faultFd: number;
  /** The page size. */
  pageSize: number;
  /** Pages of the image (the region may be longer: the rest is zero). */
  imagePages: number;
  /** {@linkcode KIND} per image page. */
  kinds: SharedArrayBuffer;
  /** The staging memory of the hybrid's pre-copy rounds (address), or 0. */
  staging: number;
  /** Its length in bytes. */
  stagingLength: number;
  /** The CRC-32C of each image page as received. */
  crcs: SharedArrayBuffer;
  /** {@linkcode POST_STAT}. */
  stats: SharedArrayBuffer;
  /** {@linkcode POST_CTRL}. */
  control: SharedArrayBuffer;
  /** Why the source is gone (UTF-8). */
  message: SharedArrayBuffer;
  /** The `END_` payload, when this source read it. */
  end: SharedArrayBuffer;
  /** How long the source may stay silent (ms). */
  timeoutMs: number;
  /** The largest payload the source sends (its `HELO` says). */
  maxPayload: number;
}

/** Bytes of the shared message. */
export const POST_MESSAGE_BYTES = 1024;

const SMALL = 64 * 1024;
/** How long `available()` waits for the stream before it lets the handler look around. */
const WAIT_SLICE_MS = 20;
/**
 * Pages the prefetcher places per run: a fault that comes meanwhile waits for the
 * run to be placed (each page a fresh allocation), so runs are short — shorter
 * still while faults come ({@linkcode FAULT_RUN} for {@linkcode FAULT_WINDOW_MS}
 * after one).
 */
const STREAM_RUN = 32;
const FAULT_RUN = 1;
const FAULT_WINDOW_MS = 50;
/** How long a fault's request looks for its answer without sleeping (ms). */
const SPIN_MS = 0;

/**
 * The factory `LazyRegion` calls in its Worker (`{ module, export: "postcopySource" }`).
 *
 * @param options What the destination prepared.
 * @param info The region, and the userfaultfd to poll while waiting.
 * @returns The streaming page source.
 */
export function postcopySource(options: PostcopyOptions, info: LazySourceInfo): ModulePageSource {
  const P = options.pageSize;
  const N = options.imagePages;
  const kinds = new Uint8Array(options.kinds);
  const crcs = new Uint32Array(options.crcs);
  const stats = new Float64Array(options.stats);
  const control = new Int32Array(options.control);
  const zeroCrc = zeroPageCrc(P);
  const room = Math.min(MAX_PAYLOAD, Math.max(options.maxPayload, 64 * 1024));
  const arena = new CrcArena(SMALL + room + SMALL + 16 * P);
  const streamHeaderAt = arena.base;
  const streamPayloadAt = arena.base + SMALL;
  const faultAt = streamPayloadAt + room; // header, then payload
  const stagingBytes = options.staging === 0
    ? new Uint8Array(0)
    : new Uint8Array(libc.bufferAt(BigInt(options.staging), options.stagingLength));
  const poll = new PollSet([options.streamFd, info.faultFd]);
  const batchRoom = { pages: new Uint32Array(4096), crcs: new Uint32Array(4096) };
  let batch: Batch | undefined;
  let next = 0; // the first page of the batch not consumed
  let streamSeq = -1;
  let faultSent = 1; // the FCON echo was frame 0
  let faultReceived = 1; // the source sent FCON as frame 0
  // The frame being read from the stream: header, then payload, without waiting.
  let have = 0;
  let header: Header | undefined;
  let lastData = performance.now();
  let gone: string | undefined;
  let freedTo = 0;
  let lastFault = -Infinity;

  function started(): boolean {
    if (Atomics.load(control, POST_CTRL.GO) !== 1) return false;
    if (streamSeq < 0) streamSeq = Atomics.load(control, POST_CTRL.STREAM_SEQUENCE);
    return true;
  }

  /** A fault before the switch (nobody should touch the memory yet): wait for it, bounded. */
  function awaitStart(): void {
    const deadline = performance.now() + options.timeoutMs;
    while (!started()) {
      const left = deadline - performance.now();
      if (left <= 0) {
        vanish("the switch to post-copy never came");
        return;
      }
      Atomics.wait(control, POST_CTRL.GO, 0, Math.min(left, 100));
    }
  }

  function vanish(reason: string): void {
    if (gone !== undefined) return;
    gone = reason;
    const text = new TextEncoder().encode(reason).subarray(0, POST_MESSAGE_BYTES);
    new Uint8Array(options.message).set(text);
    Atomics.store(control, POST_CTRL.MESSAGE_LENGTH, text.length);
    Atomics.store(control, POST_CTRL.GONE, 1);
  }

  function goneError(page: number): UffdError {
    return new UffdError({
      errno: ERRNO.EIO!,
      operation: "migration",
      detail: `page ${page} never came: ${gone}`,
      args: { page },
    });
  }

  function linkReason(e: unknown, where: string): string {
    if (e instanceof LinkError) {
      return e.kind === "timeout"
        ? `the source stayed silent for ${options.timeoutMs} ms (${where})`
        : `the source is gone: ${e.message} (${where})`;
    }
    return `${e instanceof Error ? e.message : String(e)} (${where})`;
  }

  /**
   * Where page `first` is in the current batch, at or after `next`, or -1; `next`
   * does not move (a fault's page may lie ahead of the prefetcher's: the pages
   * between stay in the batch for the prefetcher).
   */
  function indexOf(first: number): number {
    if (batch === undefined) return -1;
    const pages = batch.pages;
    let lo = next, hi = batch.count; // the first index whose page is at least `first`
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pages[mid]! < first) lo = mid + 1;
      else hi = mid;
    }
    return lo < batch.count && pages[lo] === first ? lo : -1;
  }

  /** How many pages of the batch from index `i` (page `first`) follow each other, at most `max`. */
  function runAt(i: number, first: number, max: number): number {
    const pages = batch!.pages;
    let n = 1;
    while (n < max && i + n < batch!.count && pages[i + n] === first + n) n++;
    return n;
  }

  /**
   * For the prefetcher, whose cursor only moves forward: the run of pages from
   * `first` in the current batch, 0 when the batch is used up, -1 when `first` is
   * not in it. The batch's pages below `first` are consumed.
   */
  function inBatch(first: number, max: number): number {
    if (batch === undefined) return 0;
    const pages = batch.pages;
    while (next < batch.count && pages[next]! < first) next++;
    if (next >= batch.count) return 0;
    if (pages[next] !== first) return -1;
    let n = 1;
    while (n < max && next + n < batch.count && pages[next + n] === first + n) n++;
    return n;
  }

  /** A complete frame of the stream: a batch, zeros, or the end. */
  function dispatch(h: Header): void {
    checkFrame(arena, streamHeaderAt, streamPayloadAt, h);
    streamSeq++;
    Atomics.store(control, POST_CTRL.STREAM_SEQUENCE, streamSeq);
    stats[POST_STAT.frames]++;
    stats[POST_STAT.bytes] += HEADER_BYTES + h.length;
    const payload = arena.bytes.subarray(streamPayloadAt, streamPayloadAt + h.length);
    if (h.tag === TAG.PAGE) {
      batch = decodeBatch(arena, streamPayloadAt, h.length, P, N, batchRoom);
      next = 0;
      stats[POST_STAT.framePages] += batch.count;
    } else if (h.tag === TAG.ZERO) {
      const { runs } = decodeRuns(payload, N, "ZERO");
      for (let r = 0; r < runs.length; r += 2) {
        for (let p = runs[r]!; p < runs[r]! + runs[r + 1]!; p++) {
          if (kinds[p] === KIND.NETWORK) {
            kinds[p] = KIND.ZERO;
            crcs[p] = zeroCrc;
          }
        }
      }
    } else if (h.tag === TAG.END) {
      new Uint8Array(options.end).set(payload.subarray(0, 20));
      Atomics.store(control, POST_CTRL.END_SEEN, 1);
      vanish("the source ended the stream before sending every page");
    } else if (h.tag === TAG.FAIL) {
      vanish(`the source failed: ${decodeFailure(payload).message}`);
    } else {
      throw new WireError("protocol", `a ${tagName(h.tag)} frame in the post-copy stream`);
    }
  }

  /** Reads what the stream has without waiting; `true` when a frame was completed. */
  function pump(): boolean {
    const fd = options.streamFd;
    for (;;) {
      const want = header === undefined ? HEADER_BYTES - have : header.length - have;
      if (want > 0) {
        const at = header === undefined ? streamHeaderAt + have : streamPayloadAt + have;
        const n = libc.recvAt(fd, arena.address + at, want, MSG_DONTWAIT);
        if (n === -ERRNO.EAGAIN! || n === -ERRNO.EINTR!) return false;
        if (n === 0) throw new LinkError("closed", 0, have);
        if (n < 0) throw new LinkError("reset", -n, have);
        lastData = performance.now();
        have += n;
        if (n < want) continue;
      }
      if (header === undefined) {
        header = readHeader(arena.bytes, streamHeaderAt);
        if (header.sequence !== streamSeq) {
          throw new WireError("protocol", `stream frame ${header.sequence} arrived where ${streamSeq} was due`);
        }
        if (header.length > room) {
          throw new WireError("protocol", `a ${tagName(header.tag)} frame of ${header.length} bytes (at most ${room})`);
        }
        have = 0;
        if (header.length > 0) continue;
      }
      const h = header;
      header = undefined;
      have = 0;
      dispatch(h);
      return true;
    }
  }

  /** Fetches page `page` on the fault connection. */
  function request(page: number, into: Uint8Array, intoAt: number): void {
    const t0 = performance.now();
    const bytes = arena.bytes;
    writeHeader(bytes, faultAt, TAG.REQ, 8, faultSent++);
    const view = new DataView(bytes.buffer, faultAt + HEADER_BYTES, 8);
    view.setUint32(0, page, true);
    view.setUint32(4, 1, true);
    sealFrame(arena, faultAt);
    sendSync(options.faultFd, arena.address + faultAt, HEADER_BYTES + 8);
    // The answer: a PAGE frame with this one page (one run, one CRC), read in one go — looked for without
    // sleeping for a little while first (it comes within a round trip), then waited for.
    const answer = HEADER_BYTES + 8 + 8 + 4 + P;
    let got = 0;
    const spinUntil = performance.now() + SPIN_MS;
    while (got < answer && performance.now() < spinUntil) {
      const n = libc.recvAt(options.faultFd, arena.address + faultAt + got, answer - got, MSG_DONTWAIT);
      if (n > 0) got += n;
      else if (n !== -ERRNO.EAGAIN! && n !== -ERRNO.EINTR!) break;
    }
    if (got < HEADER_BYTES) {
      recvSync(options.faultFd, arena.address + faultAt + got, HEADER_BYTES - got);
      got = HEADER_BYTES;
    }
    const h = readHeader(bytes, faultAt);
    if (h.sequence !== faultReceived || (h.tag !== TAG.PAGE && h.tag !== TAG.FAIL) || h.length > 16 * P) {
      throw new WireError(
        "protocol",
        `the fault connection carried a ${tagName(h.tag)} frame ${h.sequence} where PAGE ${faultReceived} was due`,
      );
    }
    if (got > HEADER_BYTES + h.length) throw new WireError("protocol", "the answer to a request is too long");
    if (got < HEADER_BYTES + h.length) {
      recvSync(options.faultFd, arena.address + faultAt + got, HEADER_BYTES + h.length - got);
    }
    faultReceived++;
    checkFrame(arena, faultAt, faultAt + HEADER_BYTES, h);
    if (h.tag === TAG.FAIL) {
      throw new Error(
        `the source failed: ${decodeFailure(bytes.subarray(faultAt + 16, faultAt + 16 + h.length)).message}`,
      );
    }
    const batch = decodeBatch(arena, faultAt + HEADER_BYTES, h.length, P, N);
    if (batch.count !== 1 || batch.pages[0] !== page) {
      throw new WireError("protocol", `asked for page ${page}, got pages ${[...batch.pages].join(", ")}`);
    }
    into.set(bytes.subarray(batch.dataAt, batch.dataAt + P), intoAt);
    crcs[page] = batch.crcs[0]!;
    stats[POST_STAT.requests]++;
    stats[POST_STAT.requestMs] += performance.now() - t0;
    stats[POST_STAT.bytes] += 2 * HEADER_BYTES + 8 + h.length;
  }

  /** Releases the staging memory below `page` (every page below the prefetcher's cursor is settled). */
  function release(page: number): void {
    if (options.staging === 0 || page - freedTo < 512) return;
    const to = Math.min(page, N);
    libc.madvise(BigInt(options.staging + freedTo * P), BigInt((to - freedTo) * P), MADV_DONTNEED);
    freedTo = to;
  }

  function sameKind(first: number, max: number, kind: number): number {
    let n = 0;
    while (n < max && first + n < N && kinds[first + n] === kind) n++;
    return n;
  }

  return {
    zeroRun(first: number, max: number): number {
      if (!started()) awaitStart();
      if (first >= N) return max;
      return sameKind(first, max, KIND.ZERO);
    },
    dataRun(first: number, max: number): number {
      if (first >= N) return 1;
      const kind = kinds[first];
      if (kind === KIND.STAGED) return sameKind(first, max, KIND.STAGED);
      const i = indexOf(first);
      return i >= 0 ? runAt(i, first, max) : 1;
    },
    available(first: number, max: number): number {
      if (!started()) {
        Atomics.wait(control, POST_CTRL.GO, 0, WAIT_SLICE_MS);
        return 0;
      }
      release(first);
      max = Math.min(max, performance.now() - lastFault < FAULT_WINDOW_MS ? FAULT_RUN : STREAM_RUN);
      if (first >= N) return max;
      const kind = kinds[first];
      if (kind !== KIND.NETWORK) return sameKind(first, max, kind!);
      for (;;) {
        if (gone !== undefined) return max; // every read fails now: the pages are poisoned
        const n = inBatch(first, max);
        if (n !== 0) return n > 0 ? n : 1; // -1: not in the stream (a fault's read fetches it)
        try {
          if (pump()) continue;
        } catch (e) {
          if (e instanceof WireError) throw e;
          vanish(linkReason(e, "background stream"));
          continue;
        }
        if (kinds[first] !== KIND.NETWORK) return 0; // a ZERO frame changed it: look again
        const ready = poll.poll(WAIT_SLICE_MS);
        if (ready > 0 && (poll.revents(1) & POLLIN) !== 0) return 0; // a fault waits: it goes first
        if (ready > 0 && (poll.revents(0) & (POLLIN | POLLHUP | POLLERR)) !== 0) continue;
        if (performance.now() - lastData > options.timeoutMs) {
          vanish(`the source stayed silent for ${options.timeoutMs} ms (background stream)`);
          continue;
        }
        return 0;
      }
    },
    read(first: number, into: Uint8Array, count = 1): void {
      if (first >= N) {
        into.fill(0, 0, count * P);
        return;
      }
      const kind = kinds[first];
      if (kind === KIND.ZERO) {
        into.fill(0, 0, count * P);
        return;
      }
      if (kind === KIND.STAGED) {
        into.set(stagingBytes.subarray(first * P, (first + count) * P));
        stats[POST_STAT.staged] += count;
        return;
      }
      if (gone !== undefined) throw goneError(first);
      const i = indexOf(first);
      if (i >= 0 && runAt(i, first, count) >= count) {
        const b = batch!;
        const from = b.dataAt + i * P;
        into.set(arena.bytes.subarray(from, from + count * P));
        for (let k = 0; k < count; k++) crcs[first + k] = b.crcs[i + k]!;
        // `next` stays: a run the handler could not place whole (EAGAIN) is read again from the batch, and a
        // fault's page ahead of the prefetcher leaves the pages before it to the prefetcher.
        stats[POST_STAT.streamed] += count;
        return;
      }
      lastFault = performance.now();
      for (let k = 0; k < count; k++) {
        try {
          request(first + k, into, k * P);
        } catch (e) {
          if (e instanceof WireError && e.code === "corrupt") throw e;
          vanish(linkReason(e, `fault request for page ${first + k}`));
          throw goneError(first + k);
        }
      }
    },
    close(): void {},
  };
}
