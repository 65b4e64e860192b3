/**
 * Where a `LiveSnapshot`'s Worker puts the pages it saves: straight into memory
 * of the image's length (a `Uint8Array` sink), into a checkpoint base image file,
 * or into a staging mapping from which the main side delivers them to a
 * callback. Internal; runs in the snapshot's Worker.
 *
 * Every read of the target goes through `copyOwnMemory` (`process_vm_readv` on
 * this process): if the program unmaps the target under the snapshot, the read
 * fails with `EFAULT` and the snapshot fails with a clear error, instead of the
 * whole process dying of `SIGSEGV`.
 *
 * The checkpoint file's layout is fixed when the snapshot starts: the pages
 * holding data then (the others are zero in the snapshot whatever happens later,
 * and a base leaves zero pages out) get slots in page order, so a page saved out
 * of order — by a fault, before the copier reached it — is written straight to its
 * slot, and the file is complete when the last page is saved. Each slot's CRC-32C
 * is computed on the copy in the staging buffer, the bytes that are written.
 *
 * @module
 */

import { encodeCheckpointHeader, encodeCheckpointTable } from "./checkpoint_format.ts";
import { crc32cWords } from "./crc32c.ts";
import { ERRNO, UffdError } from "./errors.ts";
import * as libc from "./ffi/libc.ts";
import { copyOwnMemory } from "./ffi/own_memory.ts";
import { type FileWritten, SNAP_CTRL, type WorkerSinkSpec } from "./snapshot_protocol.ts";

const P = libc.PAGE_SIZE;

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
   * Told, once the target is protected and sorted, which pages hold data (`dataPages`,
   * ascending) and each one's rank among them (`ranks[page]`): a file's slot layout.
   */
  layout(dataPages: Uint32Array<ArrayBuffer>, ranks: Int32Array<ArrayBuffer>): void;
  /** Completes the sink after the last page (writes a file's table and header, and renames it). */
  finish(): FileWritten | undefined;
  /** Gives up: removes a partly written file. Never throws. */
  discard(): void;
}

/** `count` pages of the target from page `first` could not be read: it was unmapped. */
function unreadable(first: number, count: number, rc: number): UffdError {
  return new UffdError({
    errno: rc < 0 ? -rc : ERRNO.EFAULT,
    operation: "LiveSnapshot",
    detail: `pages ${first}..${first + count - 1} of the target could not be read: ` +
      `it was unmapped (or moved) while the snapshot ran`,
    hint: "do not munmap or mremap memory while a snapshot of it runs",
  });
}

/** Copies `length` bytes from `source` (the target) to `destination`, or throws. */
function read(destination: number, source: number, length: number, first: number, count: number): void {
  const rc = copyOwnMemory(destination, source, length);
  if (rc !== length) throw unreadable(first, count, rc);
}

/** Builds the Worker's sink from its spec (a file is created here, before the target is protected). */
export function openSink(
  spec: WorkerSinkSpec,
  g: SinkGeometry,
  chunkPages: number,
  control: Int32Array,
  queue: Int32Array | undefined,
): PageSink {
  switch (spec.kind) {
    case "bytes":
      return bytesSink(spec.address, g);
    case "file":
      return fileSink(spec, g, chunkPages);
    case "staging":
      return stagingSink(spec.address, spec.limit, g, control, queue!);
  }
}

/** The image bytes `[from, to)` that pages `[first, first + count)` hold. */
function imageSlice(g: SinkGeometry, first: number, count: number): [number, number] {
  return [Math.max(0, first * P - g.head), Math.min(g.length, (first + count) * P - g.head)];
}

function bytesSink(address: number, g: SinkGeometry): PageSink {
  const view = new Uint8Array(libc.bufferAt(BigInt(address), g.length));
  const image = g.base + g.head;
  return {
    copy(first, count) {
      const [from, to] = imageSlice(g, first, count);
      read(address + from, image + from, to - from, first, count);
    },
    commit() {},
    zero(first, count) {
      const [from, to] = imageSlice(g, first, count);
      view.fill(0, from, to);
    },
    layout() {},
    throttled: () => false,
    finish: () => undefined,
    discard() {},
  };
}

function stagingSink(
  address: number,
  limit: number,
  g: SinkGeometry,
  control: Int32Array,
  queue: Int32Array,
): PageSink {
  let published = 0;
  const publish = () => {
    Atomics.store(control, SNAP_CTRL.PUBLISHED, published);
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
  };
  return {
    copy(first, count) {
      read(address + first * P, g.base + first * P, count * P, first, count);
    },
    commit(first, count) {
      for (let i = first; i < first + count; i++) queue[published++] = i;
      publish();
    },
    zero(first, count) {
      for (let i = first; i < first + count; i++) queue[published++] = -1 - i;
      publish();
    },
    layout() {},
    throttled: () => published - Atomics.load(control, SNAP_CTRL.DELIVERED) >= limit,
    finish: () => undefined,
    discard() {},
  };
}

function fileSink(
  spec: Extract<WorkerSinkSpec, { kind: "file" }>,
  g: SinkGeometry,
  chunkPages: number,
): PageSink {
  let dataPages: Uint32Array<ArrayBuffer> = new Uint32Array(0);
  let ranks: Int32Array<ArrayBuffer> = new Int32Array(0);
  let crcs = new Uint32Array(0);
  const stagingPages = Math.max(16, Math.min(chunkPages, 256));
  const staging = new Uint8Array(stagingPages * P);
  const words = new Uint32Array(staging.buffer);
  const stagingAddress = Number(libc.addressOf(staging));
  const imageEnd = g.head + g.length; // offset of the image's end from the span's start
  const file = Deno.openSync(spec.tmp, { write: true, create: true, truncate: true });
  let open = true;
  const writeAt = (offset: number, bytes: Uint8Array) => {
    file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
  };
  return {
    copy(first, count) {
      for (let at = first; at < first + count; at += stagingPages) {
        const n = Math.min(stagingPages, first + count - at);
        read(stagingAddress, g.base + at * P, n * P, at, n);
        // Bytes of the span outside the image are stored as zeros.
        if (at === 0 && g.head > 0) staging.fill(0, 0, g.head);
        const end = imageEnd - at * P;
        if (end < n * P) staging.fill(0, end, n * P);
        const rank = ranks[at]!;
        for (let k = 0; k < n; k++) crcs[rank + k] = crc32cWords(words, (k * P) / 4, P / 4);
        writeAt(P * (1 + rank), staging.subarray(0, n * P));
      }
    },
    commit() {},
    zero() {},
    layout(pages, pageRanks) {
      dataPages = pages;
      ranks = pageRanks;
      crcs = new Uint32Array(pages.length);
    },
    throttled: () => false,
    finish() {
      const slots = dataPages.length;
      const tableOffset = P * (1 + slots);
      const offsets = new Float64Array(slots);
      for (let j = 0; j < slots; j++) offsets[j] = P * (1 + j);
      writeAt(tableOffset, encodeCheckpointTable({ pages: dataPages, crcs, offsets }));
      writeAt(
        0,
        encodeCheckpointHeader({
          kind: "base",
          pageSize: P,
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
      file.close();
      open = false;
      Deno.renameSync(spec.tmp, spec.path);
      return { path: spec.path, bytes: tableOffset + slots * 16 + 8, entries: slots, dataPages: slots };
    },
    discard() {
      try {
        if (open) file.close();
      } catch { /* already closed */ }
      open = false;
      try {
        Deno.removeSync(spec.tmp);
      } catch { /* never created, or already renamed */ }
    },
  };
}
