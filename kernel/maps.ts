/**
 * The memory map of a process from `/proc/<pid>/maps`: one record per mapping
 * (VMA), and a check that a range is mapped from end to end.
 *
 * @example
 * ```ts
 * import { readMaps, Region } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * const vma = readMaps().find((m) => m.start <= mem.address && mem.address < m.end);
 * console.log(vma?.perms); // "rw-p"
 * ```
 *
 * @module
 */

import { ERRNO, invalid, UffdError } from "./errors.ts";
import { readTextFile } from "../ffi/_libc.ts";

/** One line of `/proc/<pid>/maps`. */
export interface Mapping {
  /** Start address. */
  readonly start: bigint;
  /** End address (exclusive). */
  readonly end: bigint;
  /** Permissions, e.g. `"rw-p"` (`p` private, `s` shared). */
  readonly perms: string;
  /** Offset into the file. */
  readonly offset: bigint;
  /** Device `major:minor`. */
  readonly device: string;
  /** Inode of the file (0 for anonymous memory). */
  readonly inode: number;
  /** Path or pseudo-path (`[heap]`, `[stack]`, `/memfd:uffd (deleted)`), or `""`. */
  readonly path: string;
}

/**
 * Parses `/proc/<pid>/maps` (default: this process).
 *
 * @param pid The process (default: this one).
 * @returns One record per mapping, in address order.
 * @throws {UffdError} `ESRCH` when there is no such process; `EACCES` without access to its maps.
 *
 * @example
 * ```ts
 * import { readMaps } from "@uffd/uffd";
 * console.log(readMaps().length > 0); // true
 * ```
 */
export function readMaps(pid: number | "self" = "self"): Mapping[] {
  if (pid !== "self" && (!Number.isSafeInteger(pid) || pid <= 0)) {
    throw invalid("readMaps", 'pid must be a positive integer or "self"', { pid }, ERRNO.ESRCH);
  }
  const text = readTextFile(`/proc/${pid}/maps`);
  if (typeof text === "number") {
    throw new UffdError({
      errno: text === -ERRNO.ENOENT ? ERRNO.ESRCH : -text,
      operation: "readMaps",
      args: { path: `/proc/${pid}/maps` },
      hint: text === -ERRNO.ENOENT ? `no process ${pid}` : undefined,
    });
  }
  return parseMaps(text);
}

/**
 * Parses the text of a maps file.
 *
 * @example
 * ```ts
 * import { parseMaps } from "@uffd/uffd";
 * const [m] = parseMaps("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n");
 * console.log(m.end - m.start); // 4096n
 * ```
 */
export function parseMaps(text: string): Mapping[] {
  if (typeof text !== "string") throw new TypeError(`parseMaps: text must be a string, not ${typeof text}`);
  const out: Mapping[] = [];
  for (const line of text.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      start: BigInt(`0x${m[1]}`),
      end: BigInt(`0x${m[2]}`),
      perms: m[3]!,
      offset: BigInt(`0x${m[4]}`),
      device: m[5]!,
      inode: Number(m[6]),
      path: m[7]!.trim(),
    });
  }
  return out;
}

/**
 * The parts of `[start, end)` that no mapping covers, from this process's maps
 * (`undefined` when the maps cannot be read).
 *
 * @example
 * ```ts
 * import { Region } from "@uffd/uffd";
 * import { unmappedParts } from "./maps.ts";
 * using mem = Region.map(Region.pageSize);
 * console.log(unmappedParts(mem.address, mem.address + 4096n)); // []
 * ```
 */
export function unmappedParts(start: bigint, end: bigint): { start: bigint; end: bigint }[] | undefined {
  if (typeof start !== "bigint" || typeof end !== "bigint") {
    throw new TypeError("unmappedParts: start and end must be bigints");
  }
  let maps: Mapping[];
  try {
    maps = readMaps();
  } catch {
    return undefined;
  }
  const holes: { start: bigint; end: bigint }[] = [];
  let at = start;
  for (const m of maps) {
    if (m.end <= at) continue;
    if (m.start >= end) break;
    if (m.start > at) holes.push({ start: at, end: m.start });
    at = m.end;
    if (at >= end) break;
  }
  if (at < end) holes.push({ start: at, end });
  return holes;
}

/**
 * How many bytes of `[start, start + length)` lie in the one mapping that holds
 * `start` — what a `UFFDIO_COPY`, `ZEROPAGE`, `MOVE`, `CONTINUE` or `POISON` (and,
 * before Linux 6.4, `WRITEPROTECT`) may cover in one call, since the kernel refuses
 * a range that runs into the next mapping with `ENOENT`. 0 when `start` is not
 * mapped at all; `length` when the maps cannot be read (nothing to split by).
 *
 * A memory can be one range to its owner and several mappings to the kernel: a
 * `WebAssembly.Memory` that grew while registered keeps its grown part as a mapping
 * of its own, and `madvise`/`mprotect` of part of a range splits it. Callers use this
 * on `ENOENT` to tell "runs into the next mapping" (split and go on) from "gone".
 *
 * @example
 * ```ts
 * import { MADV_NOHUGEPAGE, Region } from "@uffd/uffd";
 * import { mappedExtent } from "./maps.ts";
 * using mem = Region.map(4 * Region.pageSize);
 * mem.advise(MADV_NOHUGEPAGE, mem.pages(2, 2)); // now two mappings
 * console.log(mappedExtent(mem.address, mem.length) === 2 * Region.pageSize); // true
 * ```
 */
export function mappedExtent(start: number | bigint, length: number): number {
  const at = BigInt(start);
  let maps: Mapping[];
  try {
    maps = readMaps();
  } catch {
    return length;
  }
  const m = maps.find((m) => m.start <= at && at < m.end);
  if (m === undefined) return 0;
  return Math.min(length, Number(m.end - at));
}

/**
 * Runs a range operation one mapping at a time — for an ioctl that the kernel
 * refused with `ENOENT` because the range runs into the next mapping (see
 * {@linkcode mappedExtent}). `op(start, length)` returns bytes done (or 0 for an
 * ioctl without a count: the whole piece is then done) or `-errno`.
 *
 * @returns the bytes done in all (a short count where a piece stopped early), or
 *   `-errno` when the first piece failed (`-ENOENT` where nothing is mapped).
 *
 * @example
 * ```ts
 * import { MADV_NOHUGEPAGE, Region } from "@uffd/uffd";
 * import { byMapping } from "./maps.ts";
 * using mem = Region.map(4 * Region.pageSize);
 * mem.advise(MADV_NOHUGEPAGE, mem.pages(1, 1));
 * const pieces: number[] = [];
 * byMapping(Number(mem.address), mem.length, (_, n) => (pieces.push(n / Region.pageSize), 0));
 * console.log(pieces); // [1, 1, 2]
 * ```
 */
export function byMapping(start: number, length: number, op: (start: number, length: number) => number): number {
  let done = 0;
  while (done < length) {
    const at = start + done;
    const piece = mappedExtent(at, length - done);
    if (piece === 0) return done > 0 ? done : -ERRNO.ENOENT!;
    const rc = op(at, piece);
    if (rc < 0) return done > 0 ? done : rc;
    const did = rc === 0 ? piece : rc;
    done += did;
    if (did < piece) break;
  }
  return done;
}
