/**
 * Incremental checkpoints of memory: {@linkcode Checkpoint} watches a `Region`, an
 * `ArrayBuffer`, a typed array or a `WebAssembly.Memory` with a `WriteWatch`,
 * writes a base image first and then deltas that hold only the pages written since
 * the previous file, and restores any prefix of the chain into memory of the same
 * size. Files are streamed through one staging buffer, checksummed as copied, and
 * renamed into place complete. A consistent point-in-time image needs the writers
 * paused while `write()` runs (or a `LiveSnapshot`). The format and how files are
 * written: `docs/checkpoint-format.md`.
 *
 * @example
 * ```ts
 * import { Checkpoint, Region } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * using mem = Region.map(64 * Region.pageSize);
 * using ckpt = Checkpoint.start(mem);
 * mem.bytes.fill(1, 0, 10 * Region.pageSize);
 * console.log(ckpt.write(`${dir}/0.base`).entries); // 10
 * mem.bytes[20 * Region.pageSize] = 2;
 * console.log(ckpt.write(`${dir}/1.delta`).entries); // 1
 * using copy = Region.map(64 * Region.pageSize);
 * Checkpoint.restore(copy, ckpt.files);
 * console.log(copy.bytes[20 * Region.pageSize]); // 2
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { encodeCheckpointHeader, encodeCheckpointTable } from "./_format.ts";
import { CheckpointReader, isZero, type RestoreResult } from "./reader.ts";
import { crc32c, crc32cWords } from "./crc32c.ts";
import { ERRNO, UffdError } from "../kernel/errors.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { visitDataPages } from "../kernel/_page_contents.ts";
import { RunList } from "../watch/write_set.ts";
import { WriteWatch, type WriteWatchOptions } from "../watch/write_watch.ts";
import { imageBytes, type MemoryTarget, privateAnonymous } from "../kernel/target.ts";

/** Options of {@linkcode Checkpoint.start}: those of `WriteWatch.start`, and durability. */
export interface CheckpointOptions extends WriteWatchOptions {
  /** `fsync` each file before it is renamed into place (default `false`). */
  durable?: boolean;
}

/** What {@linkcode Checkpoint.write} wrote. */
export interface CheckpointWritten {
  /** The file. */
  readonly path: string;
  /** Base image or delta. */
  readonly kind: "base" | "delta";
  /** 0 for the base, k for the k-th delta. */
  readonly sequence: number;
  /** Pages listed (with data, or as zero pages). */
  readonly entries: number;
  /** Pages stored with their data. */
  readonly dataPages: number;
  /** Size of the file. */
  readonly bytes: number;
  /** Length of the image (the watched memory) in bytes. */
  readonly imageLength: number;
}

/** Pages copied per staging buffer: 1 MiB of 4 KiB pages. */
const STAGING_BYTES = 1 << 20;

/**
 * Writes a base image, then deltas of the pages written since the previous file:
 * see the module documentation.
 *
 * @example
 * ```ts
 * import { Checkpoint } from "@uffd/uffd";
 * const dir = Deno.makeTempDirSync();
 * const buffer = new ArrayBuffer(1 << 20);
 * using ckpt = Checkpoint.start(buffer);
 * new Uint8Array(buffer)[12345] = 7;
 * const base = ckpt.write(`${dir}/base`);
 * console.log(base.kind, base.sequence, ckpt.watch.backend); // base 0 async
 * Deno.removeSync(dir, { recursive: true });
 * ```
 */
export class Checkpoint implements Disposable {
  /** The write watch that finds the pages of each delta. */
  readonly watch: WriteWatch;
  /** The chain's random id, written into every file. */
  readonly chainId: bigint;
  readonly #target: MemoryTarget;
  readonly #durable: boolean;
  readonly #files: string[] = [];
  #parentCrc = 0;
  #staging: Uint8Array<ArrayBuffer> | undefined;
  /** The pages of a delta that failed to be written (a bad path, a full disk): kept for the next one. */
  #unwritten: Uint32Array | undefined;

  private constructor(target: MemoryTarget, watch: WriteWatch, durable: boolean) {
    this.#target = target;
    this.watch = watch;
    this.#durable = durable;
    const id = crypto.getRandomValues(new BigUint64Array(1))[0]!;
    this.chainId = id === 0n ? 1n : id;
  }

  /**
   * Starts watching `target` for writes; the first {@linkcode write} writes the
   * base image.
   *
   * @param target The memory to checkpoint.
   * @param options The write watch's options, and `durable` (fsync each file).
   * @returns A checkpoint with no file yet: the first `write()` writes the base.
   */
  static start(target: MemoryTarget, options: CheckpointOptions = {}): Checkpoint {
    const watch = WriteWatch.start(target, options);
    return new Checkpoint(target, watch, options.durable ?? false);
  }

  /**
   * Restores a chain (base first, then deltas in order; any prefix is a valid
   * checkpoint) into `target`, which must be at least as long as the image: a longer
   * one (a `WebAssembly.Memory` that grew since, and cannot shrink) gets the image in
   * its first bytes and zeros after it — a rollback in place. Everything is checked
   * before the target is touched.
   *
   * @param target Memory at least as long as the image.
   * @param paths The base, then the deltas in order.
   * @returns What was written (`CheckpointReader.restore`).
   * @throws {UffdError} For any file that does not check (nothing is written to the target then).
   *
   * @example
   * ```ts
   * import { Checkpoint } from "@uffd/uffd";
   * try { Checkpoint.restore(new ArrayBuffer(8), []); } catch (e) { console.log((e as Error).message); }
   * // checkpoint: EINVAL: no files: a chain starts with its base
   * ```
   */
  static restore(target: MemoryTarget, paths: readonly string[]): RestoreResult {
    using reader = CheckpointReader.open(paths);
    return reader.restore(target);
  }

  /** The files written so far, base first. */
  get files(): readonly string[] {
    return this.#files;
  }

  /** The sequence number the next file gets (0: the base comes next). */
  get sequence(): number {
    return this.#files.length;
  }

  /**
   * Writes the next file of the chain to `path`: the base image the first time,
   * then a delta of the pages written since the previous file. Fails without
   * writing anything when pages can no longer be watched (`WriteSet.lost`): start
   * a new chain then. A write that fails otherwise (a bad path, a full disk)
   * leaves the chain as it was: the next delta also holds the pages this one would have.
   */
  write(path: string): CheckpointWritten {
    if (typeof path !== "string" || path.length === 0) throw new TypeError("Checkpoint.write: path must be a string");
    const sequence = this.#files.length;
    const base = sequence === 0;
    const set = this.watch.collect();
    if (set.lostRuns.length > 0) {
      const lost = set.lost.map((r) => `${r.firstPage}..${r.firstPage + r.pages - 1}`).join(", ");
      throw new UffdError({
        errno: ERRNO.EIO,
        operation: "Checkpoint.write",
        args: { path },
        detail: `pages ${lost} can no longer be watched (unmapped or moved), so a delta would be wrong`,
        hint: "start a new chain with Checkpoint.start",
      });
    }
    let pages = base ? this.#basePages() : set.runs;
    if (!base && this.#unwritten) pages = mergeRuns(this.#unwritten, pages);
    let written: CheckpointWritten;
    try {
      written = this.#stream(path, sequence, pages, set.pageCount, set.head);
    } catch (e) {
      // The watch has forgotten these pages already: the next delta must include them.
      if (!base) this.#unwritten = pages;
      throw e;
    }
    this.#unwritten = undefined;
    this.#files.push(path);
    return written;
  }

  /** Stops watching. Harmless to call twice. */
  stop(): void {
    this.watch.stop();
    this.#staging = undefined;
  }

  /** Same as {@linkcode stop}. */
  [Symbol.dispose](): void {
    this.stop();
  }

  /**
   * The pages a base must look at, as runs: every page, except — for private
   * anonymous memory — pages the kernel says are untouched or the shared zero page
   * (they are zero; swapped-out pages are read when swap is on).
   */
  #basePages(): Uint32Array {
    const pages = this.watch.pageCount;
    const all = new Uint32Array([0, pages]);
    const span = { address: this.watch.address, length: pages * PAGE_SIZE };
    if (!privateAnonymous(this.#target, span.address, span.address + BigInt(span.length))) return all;
    const runs = new RunList();
    visitDataPages(span, (f, n) => runs.add(f, n));
    return runs.freeze();
  }

  #stream(path: string, sequence: number, runs: Uint32Array, imagePages: number, head: number): CheckpointWritten {
    const P = PAGE_SIZE;
    const base = sequence === 0;
    const staging = this.#staging ??= new Uint8Array(STAGING_BYTES);
    const words = new Uint32Array(staging.buffer);
    const perChunk = STAGING_BYTES / P;
    const image = imageBytes(this.#target);
    const imageLength = image.length;
    let total = 0;
    for (let i = 1; i < runs.length; i += 2) total += runs[i]!;
    const entryPages = new Uint32Array(total);
    const entryCrcs = new Uint32Array(total);
    const entryOffsets = new Float64Array(total);
    const zeroCrc = crc32c(new Uint8Array(P));
    let entries = 0;
    let slots = 0;
    const tmp = `${path}.tmp-${Deno.pid}-${sequence}`;
    const file = Deno.openSync(tmp, { write: true, create: true, truncate: true });
    let ok = false;
    try {
      writeAll(file, new Uint8Array(P)); // the header's page, filled in at the end
      for (let r = 0; r < runs.length; r += 2) {
        const end = runs[r]! + runs[r + 1]!;
        for (let first = runs[r]!; first < end; first += perChunk) {
          // One copy per batch of consecutive pages (a copy per page out of memory
          // the library does not own is several times slower), then each page is
          // checked for zeros and checksummed in the staging buffer, and the runs of
          // pages with data are written straight from it.
          const count = Math.min(perChunk, end - first);
          copyPages(image, first, count, head, staging);
          let writeFrom = -1;
          for (let k = 0; k < count; k++) {
            const page = first + k;
            if (isZero(staging.subarray(k * P, (k + 1) * P))) {
              if (writeFrom >= 0) writeAll(file, staging.subarray(writeFrom * P, k * P));
              writeFrom = -1;
              if (base) continue; // a base lists only pages with data: the rest are zero
              entryPages[entries] = page;
              entryCrcs[entries] = zeroCrc;
              entryOffsets[entries] = 0;
              entries++;
              continue;
            }
            if (writeFrom < 0) writeFrom = k;
            entryPages[entries] = page;
            entryCrcs[entries] = crc32cWords(words, (k * P) / 4, P / 4);
            entryOffsets[entries] = P * (1 + slots);
            entries++;
            slots++;
          }
          if (writeFrom >= 0) writeAll(file, staging.subarray(writeFrom * P, count * P));
        }
      }
      const tableOffset = P * (1 + slots);
      writeAll(
        file,
        encodeCheckpointTable({
          pages: entryPages.subarray(0, entries),
          crcs: entryCrcs.subarray(0, entries),
          offsets: entryOffsets.subarray(0, entries),
        }),
      );
      const header = encodeCheckpointHeader({
        kind: base ? "base" : "delta",
        pageSize: P,
        imageLength,
        head,
        imagePages,
        sequence,
        entries,
        chainId: this.chainId,
        tableOffset,
        parentCrc: this.#parentCrc,
      });
      file.seekSync(0, Deno.SeekMode.Start);
      writeAll(file, header);
      if (this.#durable) file.syncSync();
      file.close();
      Deno.renameSync(tmp, path);
      ok = true;
      this.#parentCrc = new DataView(header.buffer).getUint32(60, true);
      return {
        path,
        kind: base ? "base" : "delta",
        sequence,
        entries,
        dataPages: slots,
        bytes: tableOffset + entries * 16 + 8,
        imageLength,
      };
    } finally {
      if (!ok) {
        try {
          file.close();
        } catch { /* already closed */ }
        try {
          Deno.removeSync(tmp);
        } catch { /* never created or already renamed */ }
      }
    }
  }
}

/** The union of two run lists (`[first, count, …]`), sorted and merged. */
function mergeRuns(a: Uint32Array, b: Uint32Array): Uint32Array {
  const runs = new RunList();
  for (let i = 0; i < a.length; i += 2) runs.add(a[i]!, a[i + 1]!);
  for (let i = 0; i < b.length; i += 2) runs.add(b[i]!, b[i + 1]!);
  return runs.freeze();
}

/**
 * Copies `count` consecutive image pages from page `first` into `into` (one page per
 * `P` bytes) with a single copy; bytes outside the image are zero.
 */
function copyPages(image: Uint8Array, first: number, count: number, head: number, into: Uint8Array): void {
  const P = PAGE_SIZE;
  const from = Math.max(0, first * P - head);
  const to = Math.min(image.length, (first + count) * P - head);
  const at = first === 0 ? head : 0;
  if (at > 0) into.fill(0, 0, at);
  into.set(image.subarray(from, to), at);
  const filled = at + (to - from);
  if (filled < count * P) into.fill(0, filled, count * P);
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
}
