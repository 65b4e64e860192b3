/**
 * The `UFFDIO_*` ioctls as functions of plain numbers, each encoding its struct
 * into a buffer allocated once per thread, so that a fault handler's hot path
 * allocates nothing. Results follow the kernel's convention: a non-negative
 * value, or `-errno`.
 *
 * For the ioctls that report progress (`COPY`, `ZEROPAGE`, `CONTINUE`, `POISON`,
 * `MOVE`) the result is the bytes done — which may be fewer than asked when the
 * kernel stopped early (`EAGAIN` with progress) — or `-errno` when nothing was
 * done. A negative count from the kernel is always an errno, never progress.
 *
 * @module
 */

import {
  UFFD_API,
  UFFDIO_API,
  UFFDIO_CONTINUE,
  UFFDIO_COPY,
  UFFDIO_MOVE,
  UFFDIO_POISON,
  UFFDIO_REGISTER,
  UFFDIO_UNREGISTER,
  UFFDIO_WAKE,
  UFFDIO_WRITEPROTECT,
  UFFDIO_ZEROPAGE,
  USERFAULTFD_IOC_NEW,
} from "./uapi.ts";
import { ioctl, ioctlValue, read } from "./_libc.ts";
import { decodeUffdioApi, type UffdioApi } from "./_structs.ts";

/** Five u64 words: the largest uffdio struct is 40 bytes. */
const words = new BigUint64Array(5);
const bytes = new Uint8Array(words.buffer);
const ints = new Int32Array(words.buffer);
const bytes16 = bytes.subarray(0, 16);
const bytes24 = bytes.subarray(0, 24);
const bytes32 = bytes.subarray(0, 32);

/** The `__s64` at word `index`, read without allocating a bigint. */
function s64(index: number): number {
  return ints[index * 2 + 1]! * 4294967296 + (ints[index * 2]! >>> 0);
}

/** The progress contract: bytes done, or `-errno` when none were done. */
function progress(rc: number, outWord: number): number {
  const done = s64(outWord);
  if (rc >= 0) return done;
  return done > 0 ? done : rc;
}

/** `UFFDIO_API`: the handshake; returns the result and the struct the kernel wrote back. */
export function uffdioApi(fd: number, features: bigint): { rc: number; api: UffdioApi } {
  words[0] = UFFD_API;
  words[1] = features;
  words[2] = 0n;
  const rc = ioctl(fd, UFFDIO_API, bytes24);
  return { rc, api: decodeUffdioApi(bytes24) };
}

/** `UFFDIO_REGISTER`: the result and the ioctls the range allows. */
export function uffdioRegister(fd: number, start: bigint, len: bigint, mode: bigint): { rc: number; ioctls: bigint } {
  words[0] = start;
  words[1] = len;
  words[2] = mode;
  words[3] = 0n;
  const rc = ioctl(fd, UFFDIO_REGISTER, bytes32);
  return { rc, ioctls: words[3]! };
}

/** `UFFDIO_UNREGISTER` */
export function uffdioUnregister(fd: number, start: bigint, len: bigint): number {
  words[0] = start;
  words[1] = len;
  return ioctl(fd, UFFDIO_UNREGISTER, bytes16);
}

/** `UFFDIO_WAKE` */
export function uffdioWake(fd: number, start: bigint, len: bigint): number {
  words[0] = start;
  words[1] = len;
  return ioctl(fd, UFFDIO_WAKE, bytes16);
}

/** `UFFDIO_WRITEPROTECT` with `UFFDIO_WRITEPROTECT_MODE_*` bits. */
export function uffdioWriteprotect(fd: number, start: bigint, len: bigint, mode: bigint): number {
  words[0] = start;
  words[1] = len;
  words[2] = mode;
  return ioctl(fd, UFFDIO_WRITEPROTECT, bytes24);
}

/** `UFFDIO_COPY`: bytes copied, or `-errno`. */
export function uffdioCopy(fd: number, dst: bigint, src: bigint, len: bigint, mode: bigint): number {
  words[0] = dst;
  words[1] = src;
  words[2] = len;
  words[3] = mode;
  words[4] = 0n;
  return progress(ioctl(fd, UFFDIO_COPY, bytes), 4);
}

/** `UFFDIO_MOVE`: bytes moved, or `-errno`. */
export function uffdioMove(fd: number, dst: bigint, src: bigint, len: bigint, mode: bigint): number {
  words[0] = dst;
  words[1] = src;
  words[2] = len;
  words[3] = mode;
  words[4] = 0n;
  return progress(ioctl(fd, UFFDIO_MOVE, bytes), 4);
}

function rangeOp(fd: number, request: bigint, start: bigint, len: bigint, mode: bigint): number {
  words[0] = start;
  words[1] = len;
  words[2] = mode;
  words[3] = 0n;
  return progress(ioctl(fd, request, bytes32), 3);
}

/** `UFFDIO_ZEROPAGE`: bytes mapped to the zero page, or `-errno`. */
export function uffdioZeropage(fd: number, start: bigint, len: bigint, mode: bigint): number {
  return rangeOp(fd, UFFDIO_ZEROPAGE, start, len, mode);
}

/** `UFFDIO_CONTINUE`: bytes mapped from the page cache, or `-errno`. */
export function uffdioContinue(fd: number, start: bigint, len: bigint, mode: bigint): number {
  return rangeOp(fd, UFFDIO_CONTINUE, start, len, mode);
}

/** `UFFDIO_POISON`: bytes poisoned, or `-errno`. */
export function uffdioPoison(fd: number, start: bigint, len: bigint, mode: bigint): number {
  return rangeOp(fd, UFFDIO_POISON, start, len, mode);
}

/** `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW, flags)`: a new userfaultfd, or `-errno`. */
export function userfaultfdIocNew(deviceFd: number, flags: number): number {
  return ioctlValue(deviceFd, USERFAULTFD_IOC_NEW, BigInt(flags));
}

/** `read(uffd, buf)`: bytes of `uffd_msg`s read (a multiple of 32), or `-errno`. */
export function readMessages(fd: number, buf: Uint8Array): number {
  return read(fd, buf, buf.byteLength);
}
