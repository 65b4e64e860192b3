/**
 * Resolving missing pages ahead of any fault, one page per ioctl, our side:
 * `UFFDIO_COPY` from a page-aligned source page, or `UFFDIO_ZEROPAGE`. The
 * ioctl's service cost per page, without the fault's own round trip (that needs
 * a handler thread: it comes with the fault handler). Between rounds (untimed)
 * `MADV_DONTNEED` makes every page missing again. Pairs with
 * `bench/reference/uffdio_resolve.c`.
 *
 * `--impl`:
 * - `method`: `uffd.copy({ address, length }, source)` / `uffd.zeropage(range)`,
 *   the public API, with a fresh range object per page as a caller would pass;
 * - `wrapper`: `uffdioCopy()` / `uffdioZeropage()` from `ffi/_uffd_ioctls.ts`.
 *
 * Both advance the destination address as a bigint (`dst += PAGE`), as JS must.
 *
 * ```sh
 * deno run -A bench/ours/uffdio_resolve.ts --impl=method --op=copy --bytes=67108864 --rounds=2 --warmup=4096
 * ```
 *
 * @module
 */

import { MADV_DONTNEED, Region, Userfaultfd } from "../../mod.ts";
import { uffdioCopy, uffdioZeropage } from "../../ffi/_uffd_ioctls.ts";
import { mapWithoutThp } from "../lib/fixtures.ts";
import { allocationPerOp, Args, check, emit, Stopwatch } from "../lib/measure.ts";

const args = new Args();
const impl = args.choice("impl", ["method", "wrapper"] as const);
const op = args.choice("op", ["copy", "zeropage"] as const);
const bytes = args.number("bytes", 64 * 2 ** 20);
const rounds = args.number("rounds", 1);
const pageSize = Region.pageSize;
const pages = Math.floor(bytes / pageSize);
const warmup = Math.min(args.number("warmup", 4096), pages);

using mem = mapWithoutThp(bytes);
using uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
using source = mapWithoutThp(pageSize);
source.bytes.fill(0x5a);
const src = source.address;
const fd = uffd.fd;
const PAGE = BigInt(pageSize);

function copyMethod(n: number): void {
  let dst = mem.address;
  for (let i = 0; i < n; i++, dst += PAGE) uffd.copy({ address: dst, length: pageSize }, src);
}
function copyWrapper(n: number): void {
  let dst = mem.address;
  for (let i = 0; i < n; i++, dst += PAGE) {
    if (uffdioCopy(fd, dst, src, PAGE, 0n) !== pageSize) throw new Error("UFFDIO_COPY failed");
  }
}
function zeropageMethod(n: number): void {
  let dst = mem.address;
  for (let i = 0; i < n; i++, dst += PAGE) uffd.zeropage({ address: dst, length: pageSize });
}
function zeropageWrapper(n: number): void {
  let dst = mem.address;
  for (let i = 0; i < n; i++, dst += PAGE) {
    if (uffdioZeropage(fd, dst, PAGE, 0n) !== pageSize) throw new Error("UFFDIO_ZEROPAGE failed");
  }
}
const run = op === "copy"
  ? (impl === "method" ? copyMethod : copyWrapper)
  : (impl === "method" ? zeropageMethod : zeropageWrapper);

const stopwatch = new Stopwatch();
const unused = new Stopwatch();
for (let round = 0; round <= rounds; round++) {
  const n = round === 0 ? warmup : pages; // round 0 is the warmup
  const timer = round === 0 ? unused : stopwatch;
  timer.start();
  run(n);
  timer.stop();
  if (op === "copy") check(mem.page(n - 1)[0] === 0x5a, "the last copied page does not hold the source's bytes");
  mem.advise(MADV_DONTNEED);
}
// Allocations per call, on pages made missing again (untimed).
const allocated = allocationPerOp((n) => {
  run(n);
  mem.advise(MADV_DONTNEED);
}, Math.min(pages, 4096));
emit({
  bench: "uffdio_resolve",
  impl: `ours:${impl}`,
  case: op === "copy" ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE",
  bytes,
  ops: rounds * pages,
  extra: { alloc_bytes_per_op: allocated },
}, stopwatch);
