/**
 * UFFDIO_ZEROPAGE and UFFDIO_COPY results. Mirrors `uffd_zeropage_test()`
 * ("zeropage") of tools/testing/selftests/mm/uffd-unit-tests.c on every memory
 * type: the register result says whether ZEROPAGE is offered; where it is, the
 * page reads as zeros and a second ZEROPAGE (through the alias for shared memory,
 * `retry_uffdio_zeropage`) is EEXIST; where it is not (hugetlb), EINVAL. Also the
 * progress contract of the library: a partial result is a count, a refusal
 * with nothing done is an error — never a negative count.
 */

import assert from "node:assert/strict";
import { Region, Userfaultfd } from "../../mod.ts";
import { uffdioZeropage } from "../../ffi/_uffd_ioctls.ts";
import { assertUffdError, mapMemory, type MemType, needsHugetlbSetup, PAGE, withHugePages } from "./helpers.ts";

const EINVAL = 22;

function zeropage(type: MemType): void {
  using mem = mapMemory(type, 2);
  using alias = mem.alias();
  using uffd = Userfaultfd.open();
  const range = { address: mem.range.address, length: mem.pageSize };
  const offered = uffd.register(range, { missing: true }).has("ZEROPAGE");
  const aliasRange = alias ? { address: alias.address, length: mem.pageSize } : range;
  if (alias) uffd.register(aliasRange, { missing: true });
  const hugetlb = type === "hugetlb" || type === "hugetlb-private";
  assert.equal(offered, !hugetlb, "ZEROPAGE is offered on anonymous and shmem memory, not hugetlb");
  if (!offered) {
    assertUffdError(() => uffd.zeropage(range), "EINVAL", /not hugetlb/);
    assert.equal(uffdioZeropage(uffd.fd, range.address, BigInt(range.length), 0n), -EINVAL);
    return;
  }
  assert.equal(uffd.zeropage(range), mem.pageSize);
  assert.ok(mem.bytes.subarray(0, mem.pageSize).every((b) => b === 0), "the page reads as zeros");
  // Again, through the alias when there is one: the page exists now.
  assertUffdError(() => uffd.zeropage(aliasRange), "EEXIST", /already mapped/);
}

for (const type of ["anon", "shmem", "shmem-private"] as const) {
  Deno.test(`uffd-unit-tests.c zeropage on ${type}: offered, maps zeros, then EEXIST`, () => zeropage(type));
}

Deno.test({
  name: "uffd-unit-tests.c zeropage on hugetlb and hugetlb-private: not offered, EINVAL",
  ignore: needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(4, async () => {
      await t.step("hugetlb", () => zeropage("hugetlb"));
      await t.step("hugetlb-private", () => zeropage("hugetlb-private"));
    });
  },
});

Deno.test("UFFDIO_ZEROPAGE/COPY progress: a partial result is the count done; nothing done is the error", () => {
  using mem = Region.map(4 * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  uffd.zeropage(mem.pages(1));
  // Page 0 is missing, page 1 present: the kernel maps page 0, stops at page 1 and reports one page.
  assert.equal(uffd.zeropage(mem.pages(0, 2)), PAGE);
  // Now the first page of the range is present: nothing can be done, so it is EEXIST.
  assertUffdError(() => uffd.zeropage(mem.pages(0, 2)), "EEXIST");
  assert.equal(uffd.copy(mem.pages(2, 2), new Uint8Array(2 * PAGE).fill(5)), 2 * PAGE);
  assertUffdError(() => uffd.copy(mem.pages(3), new Uint8Array(PAGE)), "EEXIST");
  assert.equal(mem.bytes[3 * PAGE], 5, "a refused COPY leaves the page as it was");
});
