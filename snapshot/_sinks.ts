/**
 * Where a `LiveSnapshot`'s Workers put the pages they save: straight into memory
 * of the image's length (a `Uint8Array` sink), into a checkpoint base image file,
 * or into a staging mapping from which the main side delivers them to a
 * callback. Each Worker (the fault handler and the copier) opens its own sink
 * over the same destination and writes the pages it claimed — distinct pages,
 * so distinct bytes. Internal.
 *
 * Every read of the target goes through `copyOwnMemory` (`process_vm_writev` on
 * this process): if the program unmaps the target under the snapshot, the read
 * fails with `EFAULT` and the snapshot fails with a clear error, instead of the
 * whole process dying of `SIGSEGV`.
 *
 * The checkpoint file's layout is fixed when the snapshot starts: the pages
 * holding data then (the others are zero in the snapshot whatever happens later,
 * and a base leaves zero pages out) get slots in page order, so a page saved out
 * of order — by a fault, before the copier reached it — is written straight to its
 * slot (each Worker through its own file descriptor), and the file is complete
 * when the last page is saved. Each slot's CRC-32C is computed on the copy in the
 * staging buffer, the bytes that are written, into an array both Workers share.
 *
 * @module
 */

import { encodeCheckpointHeader, encodeCheckpointTable } from "../checkpoint/_format.ts";
import { crc32cWords } from "../checkpoint/crc32c.ts";
import { ERRNO, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { copyOwnMemory } from "../ffi/_own_memory.ts";
import { Region } from "../kernel/region.ts";
import { type FileWritten, QUEUE_EMPTY, SNAP_CTRL, type WorkerSinkSpec } from "./_protocol.ts";

/** Pages of zeros a `Uint8Array` sink copies from at a time. */
const ZERO_PAGES = 256;

/** The part of the target a sink writes: the span's pages and the image inside them. */
export interface SinkGeometry {
  /** Address of the span's first page. */
  base: number;
  /** Pages in the span. */
  pages: number;
  /** Offset of the image's first byte in the first page. */
  head: number;
  /** Image length in bytes. */
  length: number;
}

/** A sink, as the Worker's loop drives it. Page numbers are the span's. */
export interface PageSink {
  /** Copies pages `[first, first + count)` of the target (pages that hold data) into the sink. */
  copy(first: number, count: number): void;
  /** Makes copied pages final (a callback sink publishes them for delivery). */
  commit(first: number, count: number): void;
  /** Saves pages `[first, first + count)` as zeros (final at once). */
  zero(first: number, count: number): void;
  /** `true` while the copier should wait for the consumer (a callback sink's staging is full). */
  throttled(): boolean;
  /**
   * The fault Worker, once the target is protected and sorted: which pages hold data
   * (`dataPages`, ascending) — a file's table. Their slots (`ranks`) are shared.
   */
  layout(dataPages: Uint32Array<ArrayBuffer>): void;
  /** The fault Worker, after the last page (and after the copier closed its sink): completes a file and renames it. */
  finish(): FileWritten | undefined;
  /** The copier, when it ends: closes its file descriptor. */
  close(): void;
  /** Gives up: closes, and (fault Worker) removes a partly written file. Never throws. */
  discard(): void;
}

/** `count` pages of the target from page `first` could not be read: it was unmapped. */
function unreadable(first: number, count: number, rc: number): UffdError {
  return new UffdError({
    errno: rc < 0 ? -rc : ERRNO.EFAULT,
    operation: "LiveSnapshot",
    detail: `pages ${first}..${first + count - 1} could not be copied: ` +
      `the target (or the sink's memory) was unmapped or moved while the snapshot ran`,
    hint: "do not munmap or mremap the target, or free the sink, while a snapshot runs",
  });
}

/** Copies `length` bytes from `source` (the target) to `destination`, or throws. */
function read(destination: number, source: number, length: number, first: number, count: number): void {
  const rc = copyOwnMemory(destination, source, length);
  if (rc !== length) throw unreadable(first, count, rc);
}

/**
 * A Worker's sink over the destination in `spec`. The fault Worker (`owner`)
 * creates a file sink's file, before the target is protected; the copier opens it.
 */
export function openSink(
  spec: WorkerSinkSpec,
  g: SinkGeometry,
  chunkPages: number,
  control: Int32Array,
  owner: boolean,
): PageSink {
  switch (spec.kind) {
    case "bytes":
      return bytesSink(spec.address, g);
    case "file":
      return fileSink(spec, g, chunkPages, owner);
    case "staging":
      return stagingSink(spec.address, spec.limit, g, control, new Int32Array(spec.queue));
  }
}

/** The image bytes `[from, to)` that pages `[first, first + count)` hold. */
function imageSlice(g: SinkGeometry, first: number, count: number): [number, number] {
  return [Math.max(0, first * PAGE_SIZE - g.head), Math.min(g.length, (first + count) * PAGE_SIZE - g.head)];
}

/**
 * Straight into the caller's memory — through `process_vm_writev` both ways, zeros
 * included (copied from a mapping of our own that is never written), so that a
 * sink unmapped under the snapshot fails it with EFAULT instead of crashing.
 */
function bytesSink(address: number, g: SinkGeometry): PageSink {
  const image = g.base + g.head;
  let zeros: Region | undefined;
  const release = () => {
    zeros?.unmap();
    zeros = undefined;
  };
  return {
    copy(first, count) {
      const [from, to] = imageSlice(g, first, count);
      read(address + from, image + from, to - from, first, count);
    },
    commit() {},
    zero(first, count) {
      zeros ??= Region.map(ZERO_PAGES * PAGE_SIZE);
      const source = Number(zeros.address);
      for (let at = first; at < first + count; at += ZERO_PAGES) {
        const n = Math.min(ZERO_PAGES, first + count - at);
        const [from, to] = imageSlice(g, at, n);
        read(address + from, source, to - from, at, n);
      }
    },
    layout() {},
    throttled: () => false,
    finish() {
      release();
      return undefined;
    },
    close: release,
    discard: release,
  };
}

function stagingSink(
  address: number,
  limit: number,
  g: SinkGeometry,
  control: Int32Array,
  queue: Int32Array,
): PageSink {
  // Two producers: reserve slots, fill them, then publish; the consumer delivers a slot once it is filled.
  const publish = (entry: (i: number) => number, first: number, count: number) => {
    const slot = Atomics.add(control, SNAP_CTRL.RESERVED, count);
    for (let k = 0; k < count; k++) Atomics.store(queue, slot + k, entry(first + k));
    Atomics.add(control, SNAP_CTRL.PUBLISHED, count);
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
  };
  const staged = (i: number) => i;
  const zero = (i: number) => -1 - i;
  return {
    copy(first, count) {
      read(address + first * PAGE_SIZE, g.base + first * PAGE_SIZE, count * PAGE_SIZE, first, count);
    },
    commit(first, count) {
      publish(staged, first, count);
    },
    zero(first, count) {
      publish(zero, first, count);
    },
    layout() {},
    throttled: () => Atomics.load(control, SNAP_CTRL.RESERVED) - Atomics.load(control, SNAP_CTRL.DELIVERED) >= limit,
    finish: () => undefined,
    close() {},
    discard() {},
  };
}

/** Fills a new queue: every slot empty. */
export function emptyQueue(pages: number): SharedArrayBuffer {
  const buffer = new SharedArrayBuffer(Math.max(4, pages * 4));
  new Int32Array(buffer).fill(QUEUE_EMPTY);
  return buffer;
}

function fileSink(
  spec: Extract<WorkerSinkSpec, { kind: "file" }>,
  g: SinkGeometry,
  chunkPages: number,
  owner: boolean,
): PageSink {
  let dataPages: Uint32Array<ArrayBuffer> = new Uint32Array(0);
  const ranks = new Int32Array(spec.ranks);
  const crcs = new Uint32Array(spec.crcs);
  const stagingPages = Math.max(16, Math.min(chunkPages, 256));
  const staging = new Uint8Array(stagingPages * PAGE_SIZE);
  const words = new Uint32Array(staging.buffer);
  const stagingAddress = Number(libc.addressOf(staging));
  const imageEnd = g.head + g.length; // offset of the image's end from the span's start
  const file = Deno.openSync(spec.tmp, owner ? { write: true, create: true, truncate: true } : { write: true });
  let open = true;
  const writeAt = (offset: number, bytes: Uint8Array) => {
    file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
  };
  const close = () => {
    if (!open) return;
    open = false;
    file.close();
  };
  return {
    copy(first, count) {
      for (let at = first; at < first + count; at += stagingPages) {
        const n = Math.min(stagingPages, first + count - at);
        read(stagingAddress, g.base + at * PAGE_SIZE, n * PAGE_SIZE, at, n);
        // Bytes of the span outside the image are stored as zeros.
        if (at === 0 && g.head > 0) staging.fill(0, 0, g.head);
        const end = imageEnd - at * PAGE_SIZE;
        if (end < n * PAGE_SIZE) staging.fill(0, end, n * PAGE_SIZE);
        const rank = ranks[at]!;
        for (let k = 0; k < n; k++) crcs[rank + k] = crc32cWords(words, (k * PAGE_SIZE) / 4, PAGE_SIZE / 4);
        writeAt(PAGE_SIZE * (1 + rank), staging.subarray(0, n * PAGE_SIZE));
      }
    },
    commit() {},
    zero() {},
    layout(pages) {
      dataPages = pages;
    },
    throttled: () => false,
    finish() {
      const slots = dataPages.length;
      const tableOffset = PAGE_SIZE * (1 + slots);
      const offsets = new Float64Array(slots);
      for (let j = 0; j < slots; j++) offsets[j] = PAGE_SIZE * (1 + j);
      const table = { pages: dataPages, crcs: new Uint32Array(crcs.subarray(0, slots)), offsets };
      writeAt(tableOffset, encodeCheckpointTable(table));
      writeAt(
        0,
        encodeCheckpointHeader({
          kind: "base",
          pageSize: PAGE_SIZE,
          imageLength: g.length,
          head: g.head,
          imagePages: g.pages,
          sequence: 0,
          entries: slots,
          chainId: spec.chainId,
          tableOffset,
          parentCrc: 0,
        }),
      );
      if (spec.durable) file.syncSync();
      close();
      Deno.renameSync(spec.tmp, spec.path);
      return { path: spec.path, bytes: tableOffset + slots * 16 + 8, entries: slots, dataPages: slots };
    },
    close,
    discard() {
      try {
        close();
      } catch { /* already closed */ }
      if (!owner) return;
      try {
        Deno.removeSync(spec.tmp);
      } catch { /* never created, or already renamed */ }
    },
  };
}
