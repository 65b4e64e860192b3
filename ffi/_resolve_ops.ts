/**
 * The ioctls that resolve faults — `UFFDIO_WRITEPROTECT`, `ZEROPAGE`, `COPY`,
 * `CONTINUE`, `MOVE`, `POISON`, `WAKE` — taking addresses and lengths as numbers, for a fault
 * handler's hot path: the struct is written into one buffer allocated per thread
 * as two 32-bit halves per field, so a call allocates nothing and converts no
 * number to a bigint. Addresses must be below 2^53 (every user-space address is).
 *
 * Results follow `uffd_ioctls.ts`: 0 (or bytes done) on success, `-errno` on
 * failure; for the ioctls with an `__s64` out field a partial success returns the
 * bytes done.
 *
 * @module
 */

import {
  UFFDIO_CONTINUE,
  UFFDIO_COPY,
  UFFDIO_MOVE,
  UFFDIO_POISON,
  UFFDIO_WAKE,
  UFFDIO_WRITEPROTECT,
  UFFDIO_ZEROPAGE,
} from "./uapi.ts";
import { ioctl } from "./_libc.ts";

const TWO_32 = 4294967296;
/** Five u64 words as ten u32 halves (little-endian): the largest struct here is `uffdio_copy` (40 bytes). */
const halves = new Uint32Array(10);
const ints = new Int32Array(halves.buffer);
const bytes = new Uint8Array(halves.buffer);
const bytes16 = bytes.subarray(0, 16);
const bytes24 = bytes.subarray(0, 24);
const bytes32 = bytes.subarray(0, 32);

function put(word: number, value: number): void {
  halves[word * 2] = value >>> 0;
  halves[word * 2 + 1] = (value / TWO_32) >>> 0;
}

/** The `__s64` out field at `word`. */
function s64(word: number): number {
  return ints[word * 2 + 1]! * TWO_32 + halves[word * 2]!;
}

function progress(rc: number, word: number): number {
  const done = s64(word);
  if (rc >= 0) return done;
  return done > 0 ? done : rc;
}

/** `UFFDIO_WRITEPROTECT` over `[start, start + len)` with `UFFDIO_WRITEPROTECT_MODE_*` bits: 0 or `-errno`. */
export function writeprotect(fd: number, start: number, len: number, mode: number): number {
  put(0, start);
  put(1, len);
  put(2, mode);
  return ioctl(fd, UFFDIO_WRITEPROTECT, bytes24);
}

/** `UFFDIO_ZEROPAGE`: bytes mapped, or `-errno`. */
export function zeropage(fd: number, start: number, len: number, mode: number): number {
  put(0, start);
  put(1, len);
  put(2, mode);
  put(3, 0);
  return progress(ioctl(fd, UFFDIO_ZEROPAGE, bytes32), 3);
}

/** `UFFDIO_CONTINUE`: bytes mapped, or `-errno`. */
export function continuePages(fd: number, start: number, len: number, mode: number): number {
  put(0, start);
  put(1, len);
  put(2, mode);
  put(3, 0);
  return progress(ioctl(fd, UFFDIO_CONTINUE, bytes32), 3);
}

/** `UFFDIO_COPY` of `len` bytes from `src` to `dst`: bytes copied, or `-errno`. */
export function copy(fd: number, dst: number, src: number, len: number, mode: number): number {
  put(0, dst);
  put(1, src);
  put(2, len);
  put(3, mode);
  put(4, 0);
  return progress(ioctl(fd, UFFDIO_COPY, bytes), 4);
}

/** `UFFDIO_MOVE` of `len` bytes of pages from `src` to `dst` (`UFFDIO_MOVE_MODE_*` bits): bytes moved, or `-errno`. */
export function move(fd: number, dst: number, src: number, len: number, mode: number): number {
  put(0, dst);
  put(1, src);
  put(2, len);
  put(3, mode);
  put(4, 0);
  return progress(ioctl(fd, UFFDIO_MOVE, bytes), 4);
}

/** `UFFDIO_POISON` over `[start, start + len)`: bytes poisoned, or `-errno`. */
export function poison(fd: number, start: number, len: number, mode: number): number {
  put(0, start);
  put(1, len);
  put(2, mode);
  put(3, 0);
  return progress(ioctl(fd, UFFDIO_POISON, bytes32), 3);
}

/** `UFFDIO_WAKE` over `[start, start + len)`: 0 or `-errno`. */
export function wake(fd: number, start: number, len: number): number {
  put(0, start);
  put(1, len);
  return ioctl(fd, UFFDIO_WAKE, bytes16);
}
