/**
 * Copies between addresses of this process with `process_vm_writev(2)` on the
 * process itself, for code that reads memory another thread may unmap at any
 * moment (a live snapshot's copier): an address that is no longer mapped makes
 * the call fail with `EFAULT` (or stop short) instead of killing the process
 * with `SIGSEGV`, as `memcpy` would. The source is the call's local side, read
 * through the process's own mapping (`copy_from_user`, as `memcpy` reads it;
 * reading a write-protected page raises no fault); the destination is the
 * remote side, which the kernel pins and writes. `process_vm_readv` the other
 * way round pins the *source* and reads it through the kernel's own mapping of
 * the page, which on the CI VM costs ~10 µs for every page it reads the first
 * time (the hypervisor maps it then): 2–4× slower than this direction for a
 * snapshot, where every source page is read once (`bench/README.md`).
 *
 * Addresses and lengths are numbers (below 2^53, as every user-space address
 * is); the two `struct iovec`s live in one buffer allocated once per thread, so
 * a call allocates nothing but its result.
 *
 * @module
 */

import { getpid, processVmWritevRaw } from "./_libc.ts";

const TWO_32 = 4294967296;
/** `struct iovec` = { void *iov_base; size_t iov_len; }: two u64 as four u32 halves. */
const local = new Uint32Array(4);
const remote = new Uint32Array(4);
const localBytes = new Uint8Array(local.buffer);
const remoteBytes = new Uint8Array(remote.buffer);
const ONE = 1n;
const pid = getpid();

function put(iov: Uint32Array, address: number, length: number): void {
  iov[0] = address >>> 0;
  iov[1] = (address / TWO_32) >>> 0;
  iov[2] = length >>> 0;
  iov[3] = (length / TWO_32) >>> 0;
}

/**
 * Copies `length` bytes from `source` to `destination` (both addresses in this
 * process): the bytes copied (less than `length` when the source or destination
 * stops being mapped part way), or `-errno` (`-EFAULT`: not mapped at all).
 */
export function copyOwnMemory(destination: number, source: number, length: number): number {
  put(local, source, length);
  put(remote, destination, length);
  return processVmWritevRaw(pid, localBytes, ONE, remoteBytes, ONE);
}
