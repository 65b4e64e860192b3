/**
 * Reading checkpoint chains (a base image and the deltas after it, in the format
 * of `_format.ts`): {@linkcode CheckpointReader} opens the files, checks
 * every header and page table and how the files chain together, and indexes which
 * file holds the newest copy of each page — without reading any page data. Then it
 * can return one page's bytes on demand (what a lazy restore serving faults needs),
 * verify every page checksum, or restore the whole image into memory.
 *
 * A restore validates everything first — headers, tables, chain links and the
 * checksum of every page of every file — and only then writes to the target: a
 * corrupted or truncated file, a file from another chain, a missing or reordered
 * delta, or a target of the wrong size is refused with a `UffdError` naming the file
 * and the problem, and the target is left untouched.
 *
 * @example
 * ```ts
 * import { Checkpoint, CheckpointReader, Region } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * using mem = Region.map(4 * Region.pageSize);
 * using ckpt = Checkpoint.start(mem);
 * mem.bytes[0] = 1;
 * ckpt.write(`${dir}/base`);
 * mem.bytes[Region.pageSize] = 2;
 * ckpt.write(`${dir}/delta-1`);
 * using reader = CheckpointReader.open([`${dir}/base`, `${dir}/delta-1`]);
 * console.log(reader.readPage(1)[0], reader.source(2)); // 2 undefined (page 2 is all zeros)
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @module
 */

import {
  CHECKPOINT_ENTRY_SIZE,
  CHECKPOINT_HEADER_SIZE,
  CHECKPOINT_TRAILER_SIZE,
  checkpointFileLength,
  type CheckpointHeader,
  type CheckpointKind,
  type CheckpointTable,
  decodeCheckpointHeader,
  decodeCheckpointTable,
} from "./_format.ts";
import { crc32c, crc32cWords } from "./crc32c.ts";
import { ERRNO, failure, UffdError } from "../kernel/errors.ts";
import * as libc from "../ffi/_libc.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";
import { imageBytes, type MemoryTarget, restoreRoom } from "../kernel/target.ts";

export type { CheckpointKind } from "./_format.ts";

/** One file of a chain, as its header describes it. */
export interface CheckpointFileInfo {
  /** Where it is. */
  readonly path: string;
  /** Base image or delta. */
  readonly kind: CheckpointKind;
  /** 0 for the base, k for the k-th delta. */
  readonly sequence: number;
  /** Pages listed in it. */
  readonly entries: number;
  /** Pages with data stored (the others are zero pages). */
  readonly dataPages: number;
  /** Length of the image when it was written. */
  readonly imageLength: number;
  /** Size of the file. */
  readonly bytes: number;
  /** The chain it belongs to. */
  readonly chainId: bigint;
  /** Its header CRC (the next file's parent CRC). */
  readonly headerCrc: number;
}

/** Where the newest copy of a page is. */
export interface PageSource {
  /** Index of the file in the chain (0: the base). */
  readonly file: number;
  /** Offset of the page's slot in that file. */
  readonly offset: number;
  /** CRC-32C of the slot. */
  readonly crc: number;
}

/** Bytes read per `pread` while verifying or restoring: 256 pages of 4 KiB. */
const CHUNK_BYTES = 1 << 20;

interface OpenFile {
  info: CheckpointFileInfo;
  header: CheckpointHeader;
  table: CheckpointTable;
  fd: number;
}

function fileError(path: string, sequence: number | undefined, detail: string, errno = ERRNO.EIO): UffdError {
  const which = sequence === undefined ? "" : sequence === 0 ? "base" : `delta ${sequence}`;
  return new UffdError({
    errno,
    operation: "checkpoint",
    args: { path },
    detail: `${which ? `${which}: ` : ""}${detail}`,
    hint: errno === ERRNO.EIO ? "the file is damaged or truncated; nothing was written to the target" : undefined,
  });
}

function preadAll(fd: number, into: Uint8Array, offset: number, path: string, sequence: number): void {
  let done = 0;
  while (done < into.length) {
    const got = libc.pread(fd, into.subarray(done), into.length - done, BigInt(offset + done));
    if (got < 0) throw failure("pread", got, { path, offset: offset + done });
    if (got === 0) throw fileError(path, sequence, `unexpected end of file at ${offset + done}`);
    done += got;
  }
}

/** What {@linkcode CheckpointReader.restore} (and `Checkpoint.restore`) did. */
export interface RestoreResult {
  /** Pages of the image written (pages already holding the right zeros are not). */
  readonly pagesWritten: number;
  /** The image's length in bytes. */
  readonly imageLength: number;
  /** The target's length in bytes (at least the image's). */
  readonly targetLength: number;
  /** Bytes of the target after the image, which the restore made zero (`targetLength - imageLength`). */
  readonly tail: number;
  /** Of those, the bytes that were not zero already and were written. */
  readonly tailZeroed: number;
}

/**
 * A chain of checkpoint files opened for reading: see the module documentation.
 *
 * @example
 * ```ts
 * import { Checkpoint, CheckpointReader } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * const memory = new WebAssembly.Memory({ initial: 1 });
 * using ckpt = Checkpoint.start(memory);
 * new Uint8Array(memory.buffer)[100] = 42;
 * ckpt.write(`${dir}/base`);
 * using reader = CheckpointReader.open([`${dir}/base`]);
 * const copy = new WebAssembly.Memory({ initial: 1 });
 * reader.restore(copy);
 * console.log(new Uint8Array(copy.buffer)[100]); // 42
 * Deno.removeSync(dir, { recursive: true });
 * ```
 */
export class CheckpointReader implements Disposable {
  /** The files, base first. */
  readonly files: readonly CheckpointFileInfo[];
  /** Page size of the image. */
  readonly pageSize: number;
  /** Length of the image in bytes (as of the last file). */
  readonly imageLength: number;
  /** Offset of the image's first byte inside its first page. */
  readonly head: number;
  /** Pages covering the image (as of the last file). */
  readonly pageCount: number;
  /** The chain's id. */
  readonly chainId: bigint;
  readonly #files: OpenFile[];
  /** Per page: index of the file holding its newest copy, or -1 (a page no file lists: zeros). */
  readonly #owner: Int32Array;
  /** Per page: entry index in that file. */
  readonly #entry: Int32Array;
  readonly #zeroCrc: number;
  #closed = false;

  private constructor(files: OpenFile[]) {
    this.#files = files;
    this.files = files.map((f) => f.info);
    const last = files[files.length - 1]!.header;
    this.pageSize = last.pageSize;
    this.imageLength = last.imageLength;
    this.head = last.head;
    this.pageCount = last.imagePages;
    this.chainId = last.chainId;
    this.#owner = new Int32Array(this.pageCount).fill(-1);
    this.#entry = new Int32Array(this.pageCount);
    files.forEach((f, i) => {
      const pages = f.table.pages;
      for (let e = 0; e < pages.length; e++) {
        this.#owner[pages[e]!] = i;
        this.#entry[pages[e]!] = e;
      }
    });
    this.#zeroCrc = crc32c(new Uint8Array(this.pageSize));
  }

  /**
   * Opens a chain — the base first, then its deltas in order (any prefix of a chain
   * is a valid checkpoint) — and checks headers, tables and links. Reads no page data.
   *
   * @param paths The base, then the deltas in order.
   * @returns A reader with every header and table checked and the chain indexed.
   * @throws {UffdError} `EIO` for a corrupted, truncated or foreign file, or a missing or reordered delta; the open's
   *   errno otherwise.
   */
  static open(paths: readonly string[]): CheckpointReader {
    if (!Array.isArray(paths) || paths.some((p) => typeof p !== "string")) {
      throw new TypeError("CheckpointReader.open: expected an array of paths, the base first");
    }
    if (paths.length === 0) {
      throw new UffdError({
        errno: ERRNO.EINVAL,
        operation: "checkpoint",
        detail: "no files: a chain starts with its base",
        beforeSyscall: true,
      });
    }
    const files: OpenFile[] = [];
    try {
      for (const path of paths) {
        const file = openFile(path);
        files.push(file);
        const i = files.length - 1;
        const h = file.header;
        if (h.sequence !== i) {
          throw fileError(
            path,
            h.sequence,
            i === 0
              ? "the chain must start with its base"
              : `is ${h.kind === "base" ? "a base" : `delta ${h.sequence}`} where delta ${i} belongs`,
            ERRNO.EINVAL,
          );
        }
        if (i > 0) {
          const prev = files[i - 1]!.header;
          if (h.chainId !== prev.chainId) {
            throw fileError(path, h.sequence, "belongs to another chain (chain ids differ)", ERRNO.EINVAL);
          }
          if (h.parentCrc !== prev.headerCrc) {
            throw fileError(
              path,
              h.sequence,
              `was not written after ${paths[i - 1]} (parent link differs)`,
              ERRNO.EINVAL,
            );
          }
          if (h.pageSize !== prev.pageSize || h.head !== prev.head || h.imageLength < prev.imageLength) {
            throw fileError(path, h.sequence, "page size, alignment or a shrinking image differ from the chain");
          }
        }
      }
      return new CheckpointReader(files);
    } catch (e) {
      for (const f of files) libc.close(f.fd);
      throw e;
    }
  }

  /**
   * Where the newest copy of page `index` is, or `undefined` when the page is all
   * zeros (listed by no file, or listed as a zero page).
   */
  source(index: number): PageSource | undefined {
    this.#checkIndex(index);
    const owner = this.#owner[index]!;
    if (owner < 0) return undefined;
    const f = this.#files[owner]!;
    const e = this.#entry[index]!;
    const offset = f.table.offsets[e]!;
    if (offset === 0) return undefined;
    return { file: owner, offset, crc: f.table.crcs[e]! };
  }

  /**
   * The bytes of page `index` of the image (a whole page: in the first and last
   * pages, bytes outside the image are zero), read from the newest file that holds
   * it and checked against its checksum. Reads into `into` when given.
   */
  readPage(index: number, into: Uint8Array = new Uint8Array(this.pageSize)): Uint8Array {
    this.#check();
    if (!(into instanceof Uint8Array) || into.length < this.pageSize) {
      throw new TypeError(`readPage: into must be a Uint8Array of at least ${this.pageSize} bytes`);
    }
    const slot = into.subarray(0, this.pageSize);
    const source = this.source(index);
    if (source === undefined) {
      slot.fill(0);
      return slot;
    }
    const f = this.#files[source.file]!;
    preadAll(f.fd, slot, source.offset, f.info.path, f.info.sequence);
    const crc = crc32c(slot);
    if (crc !== source.crc) {
      throw fileError(
        f.info.path,
        f.info.sequence,
        `page ${index}: checksum mismatch (stored ${hex(source.crc)}, ${hex(crc)} read)`,
      );
    }
    return slot;
  }

  /** Checks the checksum of every page slot of every file (reads them all once, sequentially). */
  verify(): void {
    this.#check();
    const bounce = new Uint8Array(Math.max(CHUNK_BYTES, this.pageSize));
    const words = new Uint32Array(bounce.buffer);
    const P = this.pageSize;
    const perChunk = bounce.length / P;
    for (const f of this.#files) {
      const { pages, crcs, offsets } = f.table;
      // Slots are contiguous in table order: walk the data entries in chunks.
      const data: number[] = [];
      for (let e = 0; e < pages.length; e++) {
        if (offsets[e] === 0) {
          if (crcs[e] !== this.#zeroCrc) {
            throw fileError(f.info.path, f.info.sequence, `page ${pages[e]}: zero page with a wrong checksum`);
          }
        } else data.push(e);
      }
      for (let k = 0; k < data.length; k += perChunk) {
        const count = Math.min(perChunk, data.length - k);
        preadAll(f.fd, bounce.subarray(0, count * P), offsets[data[k]!]!, f.info.path, f.info.sequence);
        for (let j = 0; j < count; j++) {
          const e = data[k + j]!;
          const crc = crc32cWords(words, (j * P) / 4, P / 4);
          if (crc !== crcs[e]) {
            throw fileError(
              f.info.path,
              f.info.sequence,
              `page ${pages[e]}: checksum mismatch (stored ${hex(crcs[e]!)}, ${hex(crc)} read)`,
            );
          }
        }
      }
    }
  }

  /**
   * Restores the image into `target` (a `Region`, `ArrayBuffer`, typed array or
   * `WebAssembly.Memory` at least `imageLength` bytes long): verifies everything
   * first, then writes each page once, from the newest file holding it. Pages that
   * are zero in the image are written only where the target is not already zero (so
   * a fresh target stays unpopulated there). A longer target — a memory that grew
   * since the image was taken — gets the image in its first bytes and zeros after
   * it (the state it had when it was that long); the result says how many bytes.
   *
   * @param target Memory at least as long as the image.
   * @returns What was written: pages, and the bytes zeroed after the image.
   * @throws {UffdError} `EINVAL` for a shorter target; `EIO` for a file that does not check (nothing is written then).
   */
  restore(target: MemoryTarget): RestoreResult {
    this.#check();
    const whole = imageBytes(target);
    const tail = restoreRoom("checkpoint restore", target, whole.length, this.imageLength);
    const bytes = whole.subarray(0, this.imageLength);
    this.verify();
    const P = this.pageSize;
    const bounce = new Uint8Array(Math.max(CHUNK_BYTES, P));
    const perChunk = bounce.length / P;
    let written = 0;
    for (let i = 0; i < this.#files.length; i++) {
      const f = this.#files[i]!;
      const { pages, offsets } = f.table;
      // The entries whose page this file holds the newest copy of, in slot order.
      let run: number[] = [];
      const flush = () => {
        if (run.length === 0) return;
        preadAll(f.fd, bounce.subarray(0, run.length * P), offsets[run[0]!]!, f.info.path, f.info.sequence);
        // One copy per run of consecutive pages (their image bytes are contiguous too).
        for (let j = 0; j < run.length;) {
          let k = j + 1;
          while (k < run.length && pages[run[k]!] === pages[run[k - 1]!]! + 1) k++;
          this.#place(bytes, pages[run[j]!]!, k - j, bounce.subarray(j * P, k * P));
          j = k;
        }
        written += run.length;
        run = [];
      };
      for (let e = 0; e < pages.length; e++) {
        const page = pages[e]!;
        if (this.#owner[page] !== i || offsets[e] === 0) continue;
        // Only consecutive slots can share one read.
        if (run.length > 0 && (run.length === perChunk || offsets[e] !== offsets[run[run.length - 1]!]! + P)) flush();
        run.push(e);
      }
      flush();
    }
    for (let page = 0; page < this.pageCount; page++) {
      if (this.source(page) !== undefined) continue;
      const [from, to] = this.#imageRange(page);
      const part = bytes.subarray(from, to);
      if (!isZero(part)) {
        part.fill(0);
        written++;
      }
    }
    // After the image: zeros, written only where the memory is not zero already (a fresh tail stays untouched).
    let tailZeroed = 0;
    for (let from = this.imageLength; from < whole.length; from += P) {
      const part = whole.subarray(from, Math.min(whole.length, from + P));
      if (!isZero(part)) {
        part.fill(0);
        tailZeroed += part.length;
      }
    }
    return { pagesWritten: written, imageLength: this.imageLength, targetLength: whole.length, tail, tailZeroed };
  }

  /** Closes the files. Harmless to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const f of this.#files) libc.close(f.fd);
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Image byte range `[from, to)` that page `page` covers. */
  #imageRange(page: number): [number, number] {
    const from = Math.max(0, page * this.pageSize - this.head);
    const to = Math.min(this.imageLength, (page + 1) * this.pageSize - this.head);
    return [from, to];
  }

  /** Copies `count` consecutive page slots, from page `page` on, to their image bytes. */
  #place(bytes: Uint8Array, page: number, count: number, slots: Uint8Array): void {
    const from = this.#imageRange(page)[0];
    const to = this.#imageRange(page + count - 1)[1];
    const skip = page === 0 ? this.head : 0;
    bytes.set(slots.subarray(skip, skip + (to - from)), from);
  }

  #checkIndex(index: number): void {
    this.#check();
    if (typeof index !== "number") {
      throw new TypeError(
        `CheckpointReader: a page index must be a number, not ${index === null ? "null" : typeof index}`,
      );
    }
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) {
      throw new RangeError(`page index ${index} is outside [0, ${this.pageCount})`);
    }
  }

  #check(): void {
    if (this.#closed) {
      throw new UffdError({ errno: ERRNO.EBADF, operation: "checkpoint", detail: "the reader is closed" });
    }
  }
}

/** Opens one file and checks its header, length and table. */
function openFile(path: string): OpenFile {
  const fd = libc.open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw failure("open", fd, { path });
  try {
    let size: number;
    try {
      size = Deno.statSync(path).size;
    } catch {
      size = -1;
    }
    const head = new Uint8Array(CHECKPOINT_HEADER_SIZE);
    const got = libc.pread(fd, head, head.length, 0n);
    if (got < 0) throw failure("pread", got, { path });
    let header: CheckpointHeader;
    try {
      header = decodeCheckpointHeader(head.subarray(0, got));
    } catch (e) {
      throw fileError(path, undefined, (e as Error).message);
    }
    const expected = checkpointFileLength(header);
    if (size >= 0 && size !== expected) {
      throw fileError(path, header.sequence, `the file has ${size} bytes; its header says ${expected}`);
    }
    const tableBytes = new Uint8Array(header.entries * CHECKPOINT_ENTRY_SIZE + CHECKPOINT_TRAILER_SIZE);
    preadAll(fd, tableBytes, header.tableOffset, path, header.sequence);
    let table: CheckpointTable;
    try {
      table = decodeCheckpointTable(tableBytes, header.entries, header.pageSize, header.tableOffset, header.imagePages);
    } catch (e) {
      throw fileError(path, header.sequence, (e as Error).message);
    }
    let dataPages = 0;
    for (let e = 0; e < table.offsets.length; e++) if (table.offsets[e] !== 0) dataPages++;
    return {
      fd,
      header,
      table,
      info: {
        path,
        kind: header.kind,
        sequence: header.sequence,
        entries: header.entries,
        dataPages,
        imageLength: header.imageLength,
        bytes: expected,
        chainId: header.chainId,
        headerCrc: header.headerCrc,
      },
    };
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/**
 * Whether every byte is zero (4 bytes at a time where aligned).
 *
 * @example
 * ```ts
 * import { isZero } from "./reader.ts";
 * console.log(isZero(new Uint8Array(4096)), isZero(new Uint8Array([0, 0, 1]))); // true false
 * ```
 */
export function isZero(bytes: Uint8Array): boolean {
  let i = 0;
  const n = bytes.length;
  while (i < n && ((bytes.byteOffset + i) & 3) !== 0) if (bytes[i++] !== 0) return false;
  const count = (n - i) >>> 2;
  if (count > 0) {
    const words = new Int32Array(bytes.buffer, bytes.byteOffset + i, count);
    for (let j = 0; j < count; j++) if (words[j] !== 0) return false;
    i += count * 4;
  }
  while (i < n) if (bytes[i++] !== 0) return false;
  return true;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}
