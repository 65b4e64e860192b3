/**
 * `deno task bench`: the real read path of page-fault messages. Each iteration
 * makes 32 writers (`memset` on Deno's blocking pool, whose 32 threads bound the
 * batch) block in missing faults on their own pages, waits (untimed) until all
 * of them sleep in `handle_userfault`, then times one call that reads and decodes
 * the whole queue; afterwards (untimed) one `UFFDIO_ZEROPAGE` releases them. The
 * baseline reads with the `ffi/` wrapper and decodes with `decodeUffdMsg()`;
 * against it, `Userfaultfd.readEvents()` (typed events). The C side is in
 * `bench/compare.ts`; the decoding alone is in `structs_bench.ts`.
 *
 * @module
 */

import { MADV_DONTNEED, Region, Userfaultfd } from "../mod.ts";
import { memsetOffThread } from "../ffi/_libc.ts";
import { decodeUffdMsg, SIZEOF_UFFD_MSG, type UffdMsg } from "../ffi/_structs.ts";
import { readMessages } from "../ffi/_uffd_ioctls.ts";
import { mapWithoutThp, waitBlocked } from "./lib/fixtures.ts";

const FAULTS = 32;
const page = BigInt(Region.pageSize);
// Kept until the bench process exits (the benches run after this module has loaded).
const mem = mapWithoutThp(FAULTS * Region.pageSize);
const uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const buffer = new Uint8Array(64 * SIZEOF_UFFD_MSG);
const decoded: UffdMsg[] = [];

async function timed(b: Deno.BenchContext, read: () => number): Promise<void> {
  const writers: Promise<bigint>[] = [];
  for (let i = 0; i < FAULTS; i++) writers.push(memsetOffThread(mem.address + BigInt(i) * page, 1, page));
  await waitBlocked(FAULTS);
  b.start();
  const n = read();
  b.end();
  uffd.zeropage(mem);
  await Promise.all(writers);
  mem.advise(MADV_DONTNEED);
  if (n !== FAULTS) throw new Error(`one read returned ${n} of ${FAULTS} queued faults`);
}

const group = `read ${FAULTS} queued page faults`;
Deno.bench("ffi/ readMessages() + decodeUffdMsg()", { group, baseline: true, n: 200, warmup: 20 }, async (b) => {
  await timed(b, () => {
    const got = readMessages(uffd.fd, buffer);
    decoded.length = 0;
    for (let offset = 0; offset + SIZEOF_UFFD_MSG <= got; offset += SIZEOF_UFFD_MSG) {
      decoded.push(decodeUffdMsg(buffer, offset));
    }
    return decoded.length;
  });
});

Deno.bench("Userfaultfd.readEvents()", { group, n: 200, warmup: 20 }, async (b) => {
  await timed(b, () => uffd.readEvents().length);
});
