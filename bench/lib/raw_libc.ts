/**
 * A second `Deno.dlopen` of libc, for the benchmarks only.
 *
 * The library's rule is that `ffi/` is the only place that opens libc. The
 * benchmarks break it on purpose, here and nowhere else: to measure what our
 * wrappers add, they need the bare symbol with nothing around it (no errno read,
 * no struct encoding), and to time both sides alike they read the same clock the
 * C references read (`clock_gettime(CLOCK_MONOTONIC)`). Nothing outside `bench/`
 * imports this module, and it is not published.
 *
 * @example
 * ```ts
 * import { monotonicNs } from "./raw_libc.ts";
 * const t0 = monotonicNs();
 * console.log(monotonicNs() >= t0); // true
 * ```
 *
 * @module
 */

const raw = Deno.dlopen(
  "libc.so.6",
  {
    ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
    read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
    clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  } as const,
).symbols;

/** The bare `ioctl(fd, request, arg)` symbol: no errno read, no wrapper. */
export const rawIoctl: (fd: number, request: bigint, arg: Uint8Array) => number = raw.ioctl;

/** The bare `read(fd, buf, count)` symbol: no errno read, no wrapper (the count is a bigint, as declared). */
export const rawRead: (fd: number, buf: Uint8Array, count: bigint) => bigint = raw.read;

const CLOCK_MONOTONIC = 1;
const CLOCK_THREAD_CPUTIME_ID = 3;
const timespec = new Int32Array(4);
const timespecBytes = new Uint8Array(timespec.buffer);

function clockNs(clock: number): number {
  raw.clock_gettime(clock, timespecBytes);
  const seconds = timespec[0]! + timespec[1]! * 4294967296;
  const nanoseconds = timespec[2]! + timespec[3]! * 4294967296;
  return seconds * 1e9 + nanoseconds;
}

/**
 * `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds, as a number (exact up to 2^53
 * ns, about 104 days of uptime). The clock the C references read.
 *
 * @example
 * ```ts
 * import { monotonicNs } from "./raw_libc.ts";
 * console.log(Number.isSafeInteger(monotonicNs())); // true
 * ```
 */
export function monotonicNs(): number {
  return clockNs(CLOCK_MONOTONIC);
}

/**
 * `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: the CPU time this thread has used, in
 * nanoseconds (a system call, not a vDSO read).
 *
 * @example
 * ```ts
 * import { threadCpuNs } from "./raw_libc.ts";
 * console.log(threadCpuNs() > 0); // true
 * ```
 */
export function threadCpuNs(): number {
  return clockNs(CLOCK_THREAD_CPUTIME_ID);
}
