/**
 * `deno task bench`: resolving missing pages ahead of any fault — `UFFDIO_COPY`
 * from a page-aligned source page and `UFFDIO_ZEROPAGE` — 256 pages (1 MiB) per
 * iteration, one ioctl per page; `MADV_DONTNEED` between iterations (untimed)
 * makes them missing again. The baseline is the `ffi/` wrapper; against it, the
 * `Userfaultfd` method with a fresh range object per page. Divide by 256 for the
 * cost per page; the C side is in `bench/compare.ts`.
 *
 * @module
 */

import { MADV_DONTNEED, Region, Userfaultfd } from "../mod.ts";
import { uffdioCopy, uffdioZeropage } from "../ffi/_uffd_ioctls.ts";
import { mapWithoutThp } from "./lib/fixtures.ts";

const PAGES = 256;
const pageSize = Region.pageSize;
const PAGE = BigInt(pageSize);

// Kept until the bench process exits (the benches run after this module has loaded).
const mem = mapWithoutThp(PAGES * pageSize);
const uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const source = mapWithoutThp(pageSize);
source.bytes.fill(0x5a);
const src = source.address;
const fd = uffd.fd;

function timed(b: Deno.BenchContext, resolve: (dst: bigint) => void): void {
  mem.advise(MADV_DONTNEED);
  b.start();
  let dst = mem.address;
  for (let i = 0; i < PAGES; i++, dst += PAGE) resolve(dst);
  b.end();
}

const copyGroup = `UFFDIO_COPY, ${PAGES} pages`;
Deno.bench("ffi/ uffdioCopy()", { group: copyGroup, baseline: true }, (b) => {
  timed(b, (dst) => {
    if (uffdioCopy(fd, dst, src, PAGE, 0n) !== pageSize) throw new Error("UFFDIO_COPY failed");
  });
});
Deno.bench("Userfaultfd.copy()", { group: copyGroup }, (b) => {
  timed(b, (dst) => uffd.copy({ address: dst, length: pageSize }, src));
});

const zeroGroup = `UFFDIO_ZEROPAGE, ${PAGES} pages`;
Deno.bench("ffi/ uffdioZeropage()", { group: zeroGroup, baseline: true }, (b) => {
  timed(b, (dst) => {
    if (uffdioZeropage(fd, dst, PAGE, 0n) !== pageSize) throw new Error("UFFDIO_ZEROPAGE failed");
  });
});
Deno.bench("Userfaultfd.zeropage()", { group: zeroGroup }, (b) => {
  timed(b, (dst) => uffd.zeropage({ address: dst, length: pageSize }));
});
