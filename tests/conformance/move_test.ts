/**
 * UFFDIO_MOVE. Mirrors `uffd_move_test_common()` of
 * tools/testing/selftests/mm/uffd-unit-tests.c ("move", "move-pmd",
 * "move-pmd-split") and `move_page()` of uffd-common.c (ALLOW_SRC_HOLES,
 * EEXIST): a reader on another thread reads the registered destination, each
 * missing fault is resolved by moving the source page (or 2 MiB chunk) into
 * place, the reader sees the source's contents and the source is left empty.
 */

import assert from "node:assert/strict";
import { Feature, MADV_HUGEPAGE, MADV_NOHUGEPAGE, Region, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { needs } from "../helpers.ts";
import { assertUffdError, PAGE, serveUntil } from "./helpers.ts";

const HUGE = 2 * 1024 * 1024;

/** A `length`-byte range aligned to `align` inside a larger private mapping (for THP-sized chunks). */
function aligned(length: number, align: number, advice?: number): { region: Region; address: bigint } {
  const region = Region.map(length + align);
  const address = (region.address + BigInt(align - 1)) / BigInt(align) * BigInt(align);
  if (advice !== undefined) region.advise(advice, { address, length });
  return { region, address };
}

/** Fills page `i` of `length` bytes at `address` with a recognisable value. */
function stamp(address: bigint, length: number): void {
  const bytes = new Uint8Array(libc.bufferAt(address, length));
  for (let i = 0; i < length / PAGE; i++) bytes.fill((i * 7 + 1) & 0xff, i * PAGE, (i + 1) * PAGE);
}

async function moveTest(chunk: number, chunks: number, srcAdvice: number, dstAdvice: number): Promise<void> {
  const length = chunk * chunks;
  const src = aligned(length, chunk, srcAdvice);
  const dst = aligned(length, chunk, dstAdvice);
  using _src = src.region;
  using _dst = dst.region;
  stamp(src.address, length);
  const expected = new Uint8Array(libc.bufferAt(src.address, length)).slice();
  using uffd = Userfaultfd.open({ require: [Feature.MOVE] });
  const allowed = uffd.register({ address: dst.address, length }, { missing: true });
  assert.ok(allowed.has("MOVE"), [...allowed].join(" "));
  const scratch = new Uint8Array(length);
  const reader = libc.memcpyOffThread(libc.addressOf(scratch), dst.address, BigInt(length));
  const served = await serveUntil(uffd, reader, (fault) => {
    const offset = (fault.address - dst.address) / BigInt(chunk) * BigInt(chunk);
    const moved = uffd.move({ address: dst.address + offset, length: chunk }, src.address + offset, {
      allowSrcHoles: true,
    });
    assert.equal(moved, chunk);
  });
  assert.equal(served.faults.length, chunks, "one missing fault per chunk");
  for (const f of served.faults) assert.deepEqual([f.write, f.wp, f.minor], [false, false, false]);
  assert.deepEqual(scratch, expected, "the reader saw the source's contents");
  const left = new Uint8Array(libc.bufferAt(src.address, length));
  assert.ok(left.every((b) => b === 0), "the source is empty after the move");
}

Deno.test({
  name: "uffd-unit-tests.c move on anon: missing faults resolved by moving source pages",
  ignore: needs(Feature.MOVE),
  fn: () => moveTest(PAGE, 16, MADV_NOHUGEPAGE, MADV_NOHUGEPAGE),
});

Deno.test({
  name: "uffd-unit-tests.c move-pmd on anon: 2 MiB chunks between MADV_HUGEPAGE areas",
  ignore: needs(Feature.MOVE),
  fn: () => moveTest(HUGE, 2, MADV_HUGEPAGE, MADV_HUGEPAGE),
});

Deno.test({
  name: "uffd-unit-tests.c move-pmd-split on anon: 2 MiB chunks into a MADV_NOHUGEPAGE destination",
  ignore: needs(Feature.MOVE),
  fn: () => moveTest(HUGE, 2, MADV_HUGEPAGE, MADV_NOHUGEPAGE),
});

Deno.test({
  name:
    "uffd-common.c move_page: EEXIST, holes with and without ALLOW_SRC_HOLES, EINVAL outside private anonymous memory",
  ignore: needs(Feature.MOVE),
  fn() {
    using src = Region.map(4 * PAGE);
    using dst = Region.map(4 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.MOVE] });
    uffd.register(dst, { missing: true });
    src.page(0).fill(1);
    src.page(1).fill(2);
    assert.equal(uffd.move(dst.pages(0), src.address), PAGE);
    assert.deepEqual([dst.bytes[0], src.bytes[0]], [1, 0]);
    // The destination is present now.
    assertUffdError(() => uffd.move(dst.pages(0), src.pageAddress(1)), "EEXIST", /already mapped/);
    // A hole in the source: ENOENT, unless holes are allowed — then it counts as moved and the destination stays missing.
    assertUffdError(() => uffd.move(dst.pages(2), src.pageAddress(2)), "ENOENT", /allowSrcHoles/);
    assert.equal(uffd.move(dst.pages(2), src.pageAddress(2), { allowSrcHoles: true }), PAGE);
    assert.equal(uffd.move(dst.pages(1, 2), src.pageAddress(1), { allowSrcHoles: true }), 2 * PAGE);
    assert.equal(dst.bytes[PAGE], 2);
    assert.equal(uffd.zeropage(dst.pages(2)), PAGE, "page 2 was still missing");
    // Shared memory as the source, or a destination that is not registered: EINVAL.
    using shm = Region.map(PAGE, { shared: true });
    shm.bytes[0] = 1;
    assertUffdError(() => uffd.move(dst.pages(3), shm.address), "EINVAL", /private anonymous/);
    using plain = Region.map(PAGE);
    assertUffdError(() => uffd.move(plain, src.pageAddress(3), { allowSrcHoles: true }), "EINVAL");
    // Without the MOVE feature the library refuses before the syscall.
    using noMove = Userfaultfd.open({ decline: [Feature.MOVE] });
    const e = assertUffdError(
      () => noMove.move(dst.pages(3), src.pageAddress(3)),
      "EINVAL",
      /without the MOVE feature/,
    );
    assert.equal(e.beforeSyscall, true);
  },
});
