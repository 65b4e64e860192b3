/**
 * A bare ioctl round trip on a userfaultfd, our side: `UFFDIO_WAKE` on one
 * registered page with nobody waiting, so the cost is the system call plus
 * whatever our layer adds. Pairs with `bench/reference/ioctl_roundtrip.c`.
 *
 * `--impl`:
 * - `wrapper`: `uffdioWake()` from `ffi/_uffd_ioctls.ts` (struct in a preallocated
 *   buffer, errno read with the call) — the layer every method sits on;
 * - `method`: `Userfaultfd.wake(region)` (range validation, then the wrapper);
 * - `raw-symbol`: the bare `ioctl` symbol from the benchmarks' own `dlopen`
 *   (`bench/lib/raw_libc.ts`) on a pre-encoded struct: Deno's FFI call alone.
 *
 * ```sh
 * deno run -A bench/ours/ioctl_roundtrip.ts --impl=wrapper --iterations=200000 --warmup=20000
 * ```
 *
 * @module
 */

import { Region, UFFDIO_WAKE, Userfaultfd } from "../../mod.ts";
import { uffdioWake } from "../../ffi/_uffd_ioctls.ts";
import { encodeUffdioRange } from "../../ffi/_structs.ts";
import { rawIoctl } from "../lib/raw_libc.ts";
import { allocationPerOp, Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["wrapper", "method", "raw-symbol"] as const);
const iterations = args.number("iterations", 200_000);
const warmup = args.number("warmup", 20_000);

using mem = Region.map(Region.pageSize);
using uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const fd = uffd.fd;
const start = mem.address;
const len = BigInt(mem.length);
const struct = encodeUffdioRange({ start, len });

function wrapper(n: number): void {
  for (let i = 0; i < n; i++) {
    if (uffdioWake(fd, start, len) !== 0) throw new Error("UFFDIO_WAKE failed");
  }
}
function method(n: number): void {
  for (let i = 0; i < n; i++) uffd.wake(mem);
}
function rawSymbol(n: number): void {
  for (let i = 0; i < n; i++) {
    if (rawIoctl(fd, UFFDIO_WAKE, struct) !== 0) throw new Error("UFFDIO_WAKE failed");
  }
}
const run = impl === "wrapper" ? wrapper : impl === "method" ? method : rawSymbol;

run(warmup);
const stopwatch = new Stopwatch();
stopwatch.start();
run(iterations);
stopwatch.stop();
check(!uffd.closed, "the userfaultfd closed under the loop");
const allocated = allocationPerOp(run, 10_000);
emit({
  bench: "ioctl_roundtrip",
  impl: `ours:${impl}`,
  case: "UFFDIO_WAKE",
  bytes: mem.length,
  ops: iterations,
  extra: { alloc_bytes_per_op: allocated },
}, stopwatch);
