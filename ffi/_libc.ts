/**
 * The one libc symbol table of the library, and thin wrappers around it.
 *
 * This is the only module that calls `Deno.dlopen`. Every wrapper returns the
 * kernel's convention instead of throwing: a non-negative result, or `-errno`.
 * errno is read through a cached view of `__errno_location()` inside the same
 * expression as the failing call (see {@linkcode orErrno}), before anything can
 * allocate, call into libc again or `await`. Callers above `ffi/` turn negative
 * results into typed errors.
 *
 * 64-bit arguments are `bigint` (V8's fast path); variadic slots (`ioctl`'s
 * argument, `open`'s mode, `mremap`'s new address) are declared 64 bits wide.
 *
 * @module
 */

import { MAP_FAILED_ADDRESS } from "./linux.ts";

if (Deno.build.os !== "linux") {
  throw new Error(`uffd drives Linux userfaultfd; this is ${Deno.build.os}`);
}

const symbols = {
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], result: "i64" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  ioctl_value: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  poll_nonblocking: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
  open: { parameters: ["buffer", "i32", "u64"], result: "i32" },
  dup: { parameters: ["i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i64"], result: "i32" },
  mmap: { parameters: ["u64", "usize", "i32", "i32", "i32", "i64"], result: "u64" },
  munmap: { parameters: ["u64", "usize"], result: "i32" },
  madvise: { parameters: ["u64", "usize", "i32"], result: "i32" },
  msync: { parameters: ["u64", "usize", "i32"], result: "i32" },
  mprotect: { parameters: ["u64", "usize", "i32"], result: "i32" },
  mremap: { parameters: ["u64", "usize", "usize", "i32", "u64"], result: "u64" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  sysconf: { parameters: ["i32"], result: "i64" },
  getpid: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  fork: { parameters: [], result: "i32" },
  _exit: { parameters: ["i32"], result: "void" },
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  memcpy: { parameters: ["u64", "u64", "usize"], result: "u64" },
  process_vm_readv: { parameters: ["i32", "buffer", "u64", "buffer", "u64", "u64"], result: "isize" },
  process_vm_writev: { parameters: ["i32", "buffer", "u64", "buffer", "u64", "u64"], result: "isize" },
  memset_nonblocking: { name: "memset", parameters: ["u64", "i32", "usize"], result: "u64", nonblocking: true },
  memcpy_nonblocking: { name: "memcpy", parameters: ["u64", "u64", "usize"], result: "u64", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
  // TCP sockets, for the live migration (buffers by address: pages go out of and into any memory).
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  send: { parameters: ["i32", "usize", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "usize", "usize", "i32"], result: "isize" },
  send_nonblocking: { name: "send", parameters: ["i32", "usize", "usize", "i32"], result: "isize", nonblocking: true },
  recv_nonblocking: { name: "recv", parameters: ["i32", "usize", "usize", "i32"], result: "isize", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

const libc = Deno.dlopen("libc.so.6", symbols).symbols;

/** errno of this thread. Each isolate (main or Worker) loads this module on its own thread. */
const errnoView = new Deno.UnsafePointerView(libc.__errno_location()!);

/**
 * Returns `rc`, or `-errno` when `rc` is negative. Use it around the call itself,
 * `orErrno(libc.x(...))`, so that nothing runs between the call and the read.
 */
function orErrno(rc: number): number {
  return rc < 0 ? -errnoView.getInt32() : rc;
}

/** `orErrno` for `ssize_t`/`long` results; counts never exceed 2^53 here. */
function orErrnoBig(rc: bigint): number {
  return rc < 0n ? -errnoView.getInt32() : Number(rc);
}

function orErrnoAddress(address: bigint): bigint {
  return address === MAP_FAILED_ADDRESS ? -BigInt(errnoView.getInt32()) : address;
}

const _SC_PAGESIZE = 30;

/** The page size of this machine, from `sysconf(_SC_PAGESIZE)`: the one name for it as a number. */
export const PAGE_SIZE: number = Number(libc.sysconf(_SC_PAGESIZE));

/** {@linkcode PAGE_SIZE} as a bigint, for address arithmetic: the one name for it as a bigint. */
export const PAGE_SIZE_N: bigint = BigInt(PAGE_SIZE);

/** A NUL-terminated copy of a string, for paths and names. */
export function cString(text: string): Uint8Array {
  return new TextEncoder().encode(`${text}\0`);
}

/** `syscall(SYS_userfaultfd, flags)`: a new userfaultfd, or `-errno`. */
export function userfaultfd(nr: bigint, flags: number): number {
  return orErrnoBig(libc.syscall(nr, BigInt(flags), 0n, 0n, 0n, 0n, 0n));
}

/** `ioctl(fd, request, arg)` with a struct argument: the result, or `-errno`. */
export function ioctl(fd: number, request: bigint, arg: Uint8Array): number {
  return orErrno(libc.ioctl(fd, request, arg));
}

/** `ioctl(fd, request, value)` with an integer argument: the result, or `-errno`. */
export function ioctlValue(fd: number, request: bigint, value: bigint): number {
  return orErrno(libc.ioctl_value(fd, request, value));
}

/** `read(fd, buf, length)`: bytes read, or `-errno`. */
export function read(fd: number, buf: Uint8Array, length: number = buf.byteLength): number {
  return orErrnoBig(libc.read(fd, buf, BigInt(length)));
}

/** `pread(fd, buf, length, offset)`: bytes read, or `-errno`. */
export function pread(fd: number, buf: Uint8Array, length: number, offset: bigint): number {
  return orErrnoBig(libc.pread(fd, buf, BigInt(length), offset));
}

const SEEK_END = 2;

/** The size of an open file, from `lseek(fd, 0, SEEK_END)` (no `--allow-read` needed), or `-errno`. */
export function fileSize(fd: number): number {
  return orErrnoBig(libc.lseek(fd, 0n, SEEK_END));
}

/** `write(fd, buf, length)`: bytes written, or `-errno`. */
export function write(fd: number, buf: Uint8Array, length: number = buf.byteLength): number {
  return orErrnoBig(libc.write(fd, buf, BigInt(length)));
}

/** `close(fd)`: 0, or `-errno`. */
export function close(fd: number): number {
  return orErrno(libc.close(fd));
}

/** `open(path, flags, mode)`: a file descriptor, or `-errno`. */
export function open(path: string, flags: number, mode = 0): number {
  const name = cString(path);
  return orErrno(libc.open(name, flags, BigInt(mode)));
}

const O_RDONLY_CLOEXEC = 0o2000000;
const readChunk = new Uint8Array(65536);

/**
 * The whole text of a file read with `open`/`read`/`close`, or `-errno`. For the
 * `/proc` and `/sys` files the library reads: Deno's own file APIs refuse those
 * without `--allow-all`, while `--allow-ffi` (which the library needs anyway)
 * is enough here.
 */
export function readTextFile(path: string): string | number {
  const fd = open(path, O_RDONLY_CLOEXEC);
  if (fd < 0) return fd;
  const parts: Uint8Array[] = [];
  try {
    for (;;) {
      const got = read(fd, readChunk, readChunk.byteLength);
      if (got < 0) return got;
      if (got === 0) break;
      parts.push(readChunk.slice(0, got));
    }
  } finally {
    close(fd);
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.byteLength;
  }
  return new TextDecoder().decode(all);
}

/** `dup(fd)`: a new descriptor, or `-errno`. */
export function dup(fd: number): number {
  return orErrno(libc.dup(fd));
}

const F_DUPFD_CLOEXEC = 1030;

/**
 * `fcntl(fd, F_DUPFD_CLOEXEC, 0)`: a new descriptor for the same open file, closed on
 * `exec` (a plain `dup` would leak into every child process), or `-errno`.
 */
export function dupCloexec(fd: number): number {
  return orErrno(libc.fcntl(fd, F_DUPFD_CLOEXEC, 0n));
}

/** `poll(fds, nfds, timeout)` on this thread: ready count, 0 on timeout, or `-errno`. */
export function poll(fds: Uint8Array, nfds: number, timeoutMs: number): number {
  return orErrno(libc.poll(fds, BigInt(nfds), timeoutMs));
}

/**
 * `poll(fds, nfds, timeout)` on one of Deno's blocking-pool threads. errno lives on
 * that thread and cannot be read here: a failure is reported as `-1` (EPERM's number
 * is never what poll fails with, so callers treat `-1` as "failed, errno unknown").
 * `fds` must stay untouched until the promise settles.
 */
export function pollOffThread(fds: Uint8Array, nfds: number, timeoutMs: number): Promise<number> {
  return libc.poll_nonblocking(fds, BigInt(nfds), timeoutMs);
}

/** `mmap(address, length, prot, flags, fd, offset)`: the address, or `-errno` as a negative bigint. */
export function mmap(
  address: bigint,
  length: bigint,
  prot: number,
  flags: number,
  fd: number,
  offset: bigint,
): bigint {
  return orErrnoAddress(libc.mmap(address, length, prot, flags, fd, offset));
}

/** `munmap(address, length)`: 0, or `-errno`. */
export function munmap(address: bigint, length: bigint): number {
  return orErrno(libc.munmap(address, length));
}

/** `madvise(address, length, advice)`: 0, or `-errno`. */
export function madvise(address: bigint, length: bigint, advice: number): number {
  return orErrno(libc.madvise(address, length, advice));
}

/**
 * `msync(address, length, flags)`: 0, or `-errno`. With `MS_ASYNC` it does nothing
 * to the memory, which makes it a cheap test of whether a range is mapped from end
 * to end (`-ENOMEM` when part of it is not), in O(mappings).
 */
export function msync(address: bigint, length: bigint, flags: number): number {
  return orErrno(libc.msync(address, length, flags));
}

/** `mprotect(address, length, prot)`: 0, or `-errno`. */
export function mprotect(address: bigint, length: bigint, prot: number): number {
  return orErrno(libc.mprotect(address, length, prot));
}

/** `mremap(old, oldLength, newLength, flags, newAddress)`: the new address, or `-errno` as a negative bigint. */
export function mremap(
  oldAddress: bigint,
  oldLength: bigint,
  newLength: bigint,
  flags: number,
  newAddress: bigint,
): bigint {
  return orErrnoAddress(libc.mremap(oldAddress, oldLength, newLength, flags, newAddress));
}

/** `memfd_create(name, flags)`: a file descriptor, or `-errno`. */
export function memfdCreate(name: string, flags: number): number {
  const cname = cString(name);
  return orErrno(libc.memfd_create(cname, flags));
}

/** `ftruncate(fd, length)`: 0, or `-errno`. */
export function ftruncate(fd: number, length: bigint): number {
  return orErrno(libc.ftruncate(fd, length));
}

/** `eventfd(initval, flags)`: a file descriptor, or `-errno`. */
export function eventfd(initval: number, flags: number): number {
  return orErrno(libc.eventfd(initval, flags));
}

/** The 8-byte counter value 1, written by {@linkcode eventfdSignal}. */
const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/**
 * Adds 1 to an eventfd's counter (`write(fd, &1, 8)`), which wakes whoever polls
 * it: the one way the library wakes a loop blocked in `poll()`. 8, or `-errno`.
 */
export function eventfdSignal(fd: number): number {
  return write(fd, ONE);
}

/** `getpid()` */
export function getpid(): number {
  return libc.getpid();
}

/** `gettid()`: the id of the calling OS thread. */
export function gettid(): number {
  return libc.gettid();
}

/**
 * `fork()`: the child's pid in the parent, 0 in the child, or `-errno`. The child is
 * a copy of this multi-threaded process with one thread: it may touch memory and
 * must leave through {@linkcode exitNow}.
 */
export function fork(): number {
  return orErrno(libc.fork());
}

/** `_exit(status)`: ends the process at once, without running anything else. */
export function exitNow(status: number): never {
  libc._exit(status);
  throw new Error("_exit returned");
}

const waitStatus = new Int32Array(1);
/** `waitpid(pid, &status, options)`: `[pid or -errno, status]`. */
export function waitpid(pid: number, options = 0): [number, number] {
  const rc = orErrno(libc.waitpid(pid, new Uint8Array(waitStatus.buffer), options));
  return [rc, waitStatus[0]!];
}

/** `memcpy(dst, src, length)` between raw addresses on this thread. */
export function memcpy(dst: bigint, src: bigint, length: bigint): void {
  libc.memcpy(dst, src, length);
}

/**
 * `process_vm_readv(pid, local, localCount, remote, remoteCount, 0)` with caller-built `struct iovec`
 * arrays: bytes copied, or `-errno`. Counts are bigints (cache them on hot paths).
 */
export function processVmReadvRaw(
  pid: number,
  local: Uint8Array,
  localCount: bigint,
  remote: Uint8Array,
  remoteCount: bigint,
): number {
  return orErrnoBig(libc.process_vm_readv(pid, local, localCount, remote, remoteCount, 0n));
}

/**
 * `process_vm_writev(pid, local, localCount, remote, remoteCount, 0)` with caller-built `struct iovec`
 * arrays: bytes copied, or `-errno`. The local side is read through this process's own mappings
 * (`copy_from_user`), the remote side pinned and written by the kernel.
 */
export function processVmWritevRaw(
  pid: number,
  local: Uint8Array,
  localCount: bigint,
  remote: Uint8Array,
  remoteCount: bigint,
): number {
  return orErrnoBig(libc.process_vm_writev(pid, local, localCount, remote, remoteCount, 0n));
}

/** Two `struct iovec` (`void *iov_base`@0, `size_t iov_len`@8): the local one, then the remote one. */
const iovecs = new BigUint64Array(4);
const localIovec = new Uint8Array(iovecs.buffer, 0, 16);
const remoteIovec = new Uint8Array(iovecs.buffer, 16, 16);

/**
 * `process_vm_readv(pid, [{local, length}], 1, [{remote, length}], 1, 0)`: copies
 * `length` bytes at `remote` in process `pid` to `local` in this one. Bytes copied
 * (fewer than asked when it stopped at a page it could not read), or `-errno`.
 * With `pid` = this process it is a copy whose source is read by the kernel: a
 * missing page registered with a userfaultfd waits for its handler like any access,
 * and a poisoned page ends the copy with `EFAULT` instead of raising `SIGBUS`.
 */
export function processVmReadv(pid: number, local: bigint, remote: bigint, length: number): number {
  iovecs[0] = local;
  iovecs[1] = BigInt(length);
  iovecs[2] = remote;
  iovecs[3] = iovecs[1]!;
  return orErrnoBig(libc.process_vm_readv(pid, localIovec, 1n, remoteIovec, 1n, 0n));
}

/** `process_vm_writev`: the other direction, `length` bytes from `local` here to `remote` in `pid`. */
export function processVmWritev(pid: number, local: bigint, remote: bigint, length: number): number {
  iovecs[0] = local;
  iovecs[1] = BigInt(length);
  iovecs[2] = remote;
  iovecs[3] = iovecs[1]!;
  return orErrnoBig(libc.process_vm_writev(pid, localIovec, 1n, remoteIovec, 1n, 0n));
}

/** `memset(address, value, length)` on one of Deno's blocking-pool threads: a writer that is not this thread. */
export function memsetOffThread(address: bigint, value: number, length: bigint): Promise<bigint> {
  return libc.memset_nonblocking(address, value, length);
}

/** `memcpy(dst, src, length)` on one of Deno's blocking-pool threads. */
export function memcpyOffThread(dst: bigint, src: bigint, length: bigint): Promise<bigint> {
  return libc.memcpy_nonblocking(dst, src, length);
}

/** The address of an `ArrayBuffer`'s (or view's) first byte, as a bigint. */
export function addressOf(buffer: ArrayBufferLike | ArrayBufferView): bigint {
  const pointer = Deno.UnsafePointer.of(buffer as BufferSource);
  return pointer === null ? 0n : Deno.UnsafePointer.value(pointer) as bigint;
}

/**
 * An `ArrayBuffer` over `length` bytes at `address`. The memory is not owned by
 * the buffer: it must not be touched after the mapping is gone (detach it with
 * `buffer.transfer(0)` first).
 */
export function bufferAt(address: bigint, length: number): ArrayBuffer {
  const pointer = Deno.UnsafePointer.create(address);
  if (pointer === null || length === 0) return new ArrayBuffer(0);
  return Deno.UnsafePointerView.getArrayBuffer(pointer, length);
}

// --- TCP sockets (the live migration) ---

/** `socket(domain, type, protocol)`: a descriptor, or `-errno`. */
export function socket(domain: number, type: number, protocol = 0): number {
  return orErrno(libc.socket(domain, type, protocol));
}

/** `bind(fd, address, length)` with a `struct sockaddr_in`/`_in6` in `address`: 0, or `-errno`. */
export function bind(fd: number, address: Uint8Array): number {
  return orErrno(libc.bind(fd, address, address.byteLength));
}

/** `listen(fd, backlog)`: 0, or `-errno`. */
export function listen(fd: number, backlog: number): number {
  return orErrno(libc.listen(fd, backlog));
}

/** `accept4(fd, NULL, NULL, flags)`: the connection's descriptor, or `-errno`. */
export function accept4(fd: number, flags: number): number {
  return orErrno(libc.accept4(fd, null, null, flags));
}

/** `connect(fd, address, length)`: 0, or `-errno` (`-EINPROGRESS` on a non-blocking socket). */
export function connect(fd: number, address: Uint8Array): number {
  return orErrno(libc.connect(fd, address, address.byteLength));
}

const socklen = new Uint32Array(1);
const socklenBytes = new Uint8Array(socklen.buffer);

/** `getsockname(fd, address, &length)` into `address` (its whole length offered): the length, or `-errno`. */
export function getsockname(fd: number, address: Uint8Array): number {
  socklen[0] = address.byteLength;
  const rc = orErrno(libc.getsockname(fd, address, socklenBytes));
  return rc < 0 ? rc : socklen[0]!;
}

const optionValue = new Int32Array(4);
const optionBytes = new Uint8Array(optionValue.buffer);

/** `setsockopt(fd, level, name, &value, 4)` with an `int` value: 0, or `-errno`. */
export function setsockoptInt(fd: number, level: number, name: number, value: number): number {
  optionValue[0] = value;
  return orErrno(libc.setsockopt(fd, level, name, optionBytes.subarray(0, 4), 4));
}

/** `setsockopt(fd, level, name, value, length)` with the option's bytes: 0, or `-errno`. */
export function setsockoptBytes(fd: number, level: number, name: number, value: Uint8Array): number {
  return orErrno(libc.setsockopt(fd, level, name, value, value.byteLength));
}

/** `getsockopt(fd, level, name, &value, &length)` of an `int` option: the value, or `-errno`. */
export function getsockoptInt(fd: number, level: number, name: number): number {
  socklen[0] = 4;
  const rc = orErrno(libc.getsockopt(fd, level, name, optionBytes.subarray(0, 4), socklenBytes));
  return rc < 0 ? rc : optionValue[0]!;
}

/** `shutdown(fd, how)`: 0, or `-errno`. Wakes every thread blocked in a `send` or `recv` on the socket. */
export function shutdown(fd: number, how: number): number {
  return orErrno(libc.shutdown(fd, how));
}

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK_FLAG = 0o4000;

/** Sets or clears `O_NONBLOCK` on `fd` (`fcntl` `F_GETFL`/`F_SETFL`): 0, or `-errno`. */
export function setNonblocking(fd: number, on: boolean): number {
  const flags = orErrno(libc.fcntl(fd, F_GETFL, 0n));
  if (flags < 0) return flags;
  const next = on ? flags | O_NONBLOCK_FLAG : flags & ~O_NONBLOCK_FLAG;
  return next === flags ? 0 : orErrno(libc.fcntl(fd, F_SETFL, BigInt(next)));
}

/** `send(fd, address, length, flags)` from raw memory on this thread: bytes sent, or `-errno`. */
export function sendAt(fd: number, address: number | bigint, length: number, flags: number): number {
  return orErrnoBig(libc.send(fd, BigInt(address), BigInt(length), flags));
}

/** `recv(fd, address, length, flags)` into raw memory on this thread: bytes received (0: the peer closed), or `-errno`. */
export function recvAt(fd: number, address: number | bigint, length: number, flags: number): number {
  return orErrnoBig(libc.recv(fd, BigInt(address), BigInt(length), flags));
}

/**
 * `send` on one of Deno's blocking-pool threads (this isolate goes on meanwhile):
 * bytes sent, or `-1` (errno lives on that thread: ask the socket's `SO_ERROR`).
 * The memory must stay mapped and untouched until the promise settles.
 */
export async function sendAtOffThread(
  fd: number,
  address: number | bigint,
  length: number,
  flags: number,
): Promise<number> {
  return Number(await libc.send_nonblocking(fd, BigInt(address), BigInt(length), flags));
}

/** `recv` on one of Deno's blocking-pool threads: bytes received (0: the peer closed), or `-1` (see `sendAtOffThread`). */
export async function recvAtOffThread(
  fd: number,
  address: number | bigint,
  length: number,
  flags: number,
): Promise<number> {
  return Number(await libc.recv_nonblocking(fd, BigInt(address), BigInt(length), flags));
}
