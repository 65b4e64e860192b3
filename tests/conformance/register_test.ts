/**
 * Registration rules. Mirrors `uffd_register_ioctls_test()` ("register-ioctls")
 * of tools/testing/selftests/mm/uffd-unit-tests.c on every memory type it runs
 * on, plus the rules around it that a library must get right: overlapping
 * registrations, holes, huge page alignment, unregistering.
 *
 * Where the library is deliberately stricter than the kernel (it refuses ranges
 * with holes and overlapping registrations on the same userfaultfd before the
 * syscall), the kernel's own answer is pinned through `ffi/` beside it, so a
 * kernel change is noticed.
 */

import assert from "node:assert/strict";
import {
  Feature,
  type Ioctl,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
  Region,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { uffdioRegister, uffdioUnregister } from "../../ffi/_uffd_ioctls.ts";
import { ioctlNames } from "../../mod.ts";
import { assertUffdError, mapMemory, type MemType, needsHugetlbSetup, P, PAGE, withHugePages } from "./helpers.ts";

const EINVAL = 22;

/** The features the kernel test requires for register-ioctls (advertising bits; wanted, not required). */
const FEATURES = [
  Feature.MISSING_HUGETLBFS,
  Feature.MISSING_SHMEM,
  Feature.PAGEFAULT_FLAG_WP,
  Feature.WP_HUGETLBFS_SHMEM,
  Feature.MINOR_HUGETLBFS,
  Feature.MINOR_SHMEM,
];

/** Every combination of missing, wp and minor: what the kernel must allow or refuse. */
function registerIoctls(type: MemType): void {
  using mem = mapMemory(type, 1);
  const range = { address: mem.range.address, length: mem.pageSize };
  for (let bits = 0; bits < 8; bits++) {
    const mode = { missing: (bits & 1) !== 0, wp: (bits & 2) !== 0, minor: (bits & 4) !== 0 };
    using uffd = Userfaultfd.open({ features: FEATURES });
    const what = `${type} ${JSON.stringify(mode)}`;
    if (bits === 0) {
      // No mode at all: the library refuses it before the syscall, and so does the kernel.
      assert.equal(assertUffdError(() => uffd.register(range, mode), "EINVAL").beforeSyscall, true);
      assert.equal(uffdioRegister(uffd.fd, range.address, BigInt(range.length), 0n).rc, -EINVAL, what);
      continue;
    }
    if (mode.minor && type === "anon") {
      const e = assertUffdError(() => uffd.register(range, mode), "EINVAL", /minor needs shmem or hugetlbfs/);
      assert.equal(e.beforeSyscall, false, "the kernel's refusal");
      continue;
    }
    const allowed = uffd.register(range, mode);
    const expected: Ioctl[] = ["WAKE"];
    if (mode.missing) expected.push("COPY");
    if (mode.wp) expected.push("WRITEPROTECT");
    if (mode.minor) expected.push("CONTINUE");
    for (const ioctl of expected) assert.ok(allowed.has(ioctl), `${what}: ${ioctl} missing from ${[...allowed]}`);
    uffd.unregister(range);
    assert.deepEqual(uffd.registrations, []);
  }
}

for (const type of ["anon", "shmem", "shmem-private"] as const) {
  Deno.test(`uffd-unit-tests.c register-ioctls on ${type}: the ioctls each mode allows, EINVAL for none and minor on anon`, () => {
    registerIoctls(type);
  });
}

Deno.test({
  name: "uffd-unit-tests.c register-ioctls on hugetlb and hugetlb-private, and hugetlb alignment",
  ignore: needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(4, async () => {
      await t.step("hugetlb (memfd, shared)", () => registerIoctls("hugetlb"));
      await t.step("hugetlb-private (MAP_HUGETLB)", () => registerIoctls("hugetlb-private"));
      await t.step("a range aligned to base pages but not to huge pages is EINVAL", () => {
        using mem = Region.map(Region.hugePageSize, { hugetlb: true });
        using uffd = Userfaultfd.open();
        assertUffdError(() => uffd.register({ address: mem.address + P, length: PAGE }, { missing: true }), "EINVAL");
        assertUffdError(() => uffd.register({ address: mem.address, length: PAGE }, { missing: true }), "EINVAL");
        const allowed = uffd.register(mem, { missing: true });
        assert.equal(allowed.has("ZEROPAGE"), false, "hugetlb has no UFFDIO_ZEROPAGE");
      });
    });
  },
});

Deno.test("register rules: overlapping ranges, a second userfaultfd, holes, unregistering", async (t) => {
  using mem = Region.map(4 * PAGE);
  using uffd = Userfaultfd.open();
  await t.step("the same userfaultfd: the library refuses an overlap (EBUSY); the kernel re-registers", () => {
    uffd.register(mem.pages(0, 2), { missing: true });
    const e = assertUffdError(() => uffd.register(mem.pages(1, 2), { wp: true }), "EBUSY", /unregister it first/);
    assert.equal(e.beforeSyscall, true);
    // The kernel itself accepts registering again, even in another mode (it merges the modes).
    const { rc, ioctls } = uffdioRegister(uffd.fd, mem.address, 2n * P, 2n);
    assert.equal(rc, 0);
    assert.ok(ioctlNames(ioctls).includes("WRITEPROTECT"));
    uffd.unregister(mem.pages(0, 2));
  });
  await t.step("a second userfaultfd on the same range: EBUSY from the kernel", () => {
    uffd.register(mem.pages(3), { missing: true });
    using other = Userfaultfd.open();
    const e = assertUffdError(() => other.register(mem.pages(2, 2), { missing: true }), "EBUSY");
    assert.equal(e.beforeSyscall, false);
    assert.match(e.hint ?? "", /another userfaultfd/);
    uffd.unregister(mem.pages(3));
    other.register(mem.pages(2, 2), { missing: true });
  });
  await t.step("holes: the library refuses them (ENOMEM); the kernel registers what is mapped", () => {
    using holed = Region.map(3 * PAGE);
    assert.equal(libc.munmap(holed.address + P, P), 0);
    const e = assertUffdError(
      () => uffd.register(holed, { missing: true }),
      "ENOMEM",
      /part of the range is not mapped: \[0x[0-9a-f]+, 0x[0-9a-f]+\)/,
    );
    assert.equal(e.beforeSyscall, true);
    // The kernel accepts the same range as long as one mapping meets it…
    assert.equal(uffdioRegister(uffd.fd, holed.address, 3n * P, 1n).rc, 0);
    assert.equal(uffdioUnregister(uffd.fd, holed.address, 3n * P), 0);
    // …and refuses a range that meets no mapping at all.
    assert.equal(uffdioRegister(uffd.fd, holed.address + P, P, 1n).rc, -EINVAL);
    assertUffdError(() => uffd.register({ address: holed.address + P, length: PAGE }, { missing: true }), "ENOMEM");
  });
  await t.step("unregistering: a range never registered is fine; one that meets no mapping is EINVAL", () => {
    uffd.unregister(mem.pages(0));
    using gone = Region.map(PAGE);
    const address = gone.address;
    gone.unmap();
    assertUffdError(() => uffd.unregister({ address, length: PAGE }), "EINVAL", /inside mappings/);
  });
  await t.step("a new mapping over part of a registered range (MAP_FIXED, through ffi) can be registered", () => {
    using two = Region.map(2 * PAGE);
    uffd.register(two, { wp: true });
    const fresh = libc.mmap(
      two.address + P,
      P,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
      -1,
      0n,
    );
    assert.equal(fresh, two.address + P);
    // The first page is still registered: that part is still refused…
    assertUffdError(() => uffd.register(two, { missing: true }), "EBUSY");
    // …but the fresh page is not, whatever the library recorded before.
    uffd.register({ address: fresh, length: PAGE }, { missing: true });
    assert.deepEqual(uffd.registrations.map((r) => r.mode).sort(), ["missing", "wp"]);
    uffd.unregister(two);
  });
  await t.step("unknown mode bits are the kernel's to refuse", () => {
    assert.equal(uffdioRegister(uffd.fd, mem.address, P, 8n).rc, -EINVAL);
  });
});
