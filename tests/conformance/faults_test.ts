/**
 * Faults raised by other threads and served from the main isolate through
 * `readEvents()`: the fault paths of `uffd_handle_page_fault()` in
 * tools/testing/selftests/mm/uffd-common.c as the kernel's "events",
 * "events-wp", "minor" and "minor-wp" tests drive them (uffd-unit-tests.c), and
 * the `UFFDIO_COPY`/`UFFDIO_CONTINUE` error paths they exercise on purpose
 * (`retry_copy_page`, `continue_range`'s second CONTINUE, `__copy_page`'s
 * EEXIST-then-wake).
 *
 * The faulting thread is one of Deno's blocking-pool threads (`memcpyOffThread`,
 * `memsetOffThread` in ffi/_libc.ts): a thread that is not the one serving.
 */

import assert from "node:assert/strict";
import {
  Feature,
  kernelProfile,
  MAP_FIXED,
  MAP_SHARED,
  type PagefaultEvent,
  PROT_READ,
  PROT_WRITE,
  readPagemap,
  Region,
  UffdError,
  Userfaultfd,
} from "../../mod.ts";

/** `MADV_COLLAPSE` (Linux 6.1), not among the library's constants. */
const MADV_COLLAPSE = 25;
import * as libc from "../../ffi/_libc.ts";
import { needs, skipUnless, within } from "../helpers.ts";
import {
  assertUffdError,
  mapMemory,
  type MemType,
  needsHugetlbSetup,
  nextFault,
  P,
  PAGE,
  serveUntil,
  sleep,
  type TestMemory,
  withHugePages,
} from "./helpers.ts";

const FEATURES = [
  Feature.MISSING_SHMEM,
  Feature.MISSING_HUGETLBFS,
  Feature.WP_HUGETLBFS_SHMEM,
  Feature.PAGEFAULT_FLAG_WP,
];

/** The index of the page (of `pageSize`) a fault hit. */
function pageOf(mem: TestMemory, fault: PagefaultEvent): number {
  return Number((fault.address - mem.range.address) / BigInt(mem.pageSize));
}

function pageRangeOf(mem: TestMemory, index: number) {
  return { address: mem.range.address + BigInt(index * mem.pageSize), length: mem.pageSize };
}

/**
 * The missing-fault path: a reader on another thread reads every page; each
 * missing fault is resolved with UFFDIO_COPY of a page filled with its index + 1
 * (with `wp`, the copy stays write-protected and a writer's WP faults follow).
 */
async function missingThenWp(type: MemType, pages: number, wp: boolean): Promise<void> {
  using mem = mapMemory(type, pages);
  using uffd = Userfaultfd.open({ features: FEATURES, writers: "other-threads" });
  uffd.register(mem.range, { missing: true, wp });
  const length = pages * mem.pageSize;
  const scratch = new Uint8Array(length);
  const page = new Uint8Array(mem.pageSize);
  const reader = libc.memcpyOffThread(libc.addressOf(scratch), mem.range.address, BigInt(length));
  const missing = await serveUntil(uffd, reader, (fault) => {
    const index = pageOf(mem, fault);
    page.fill(index + 1);
    assert.equal(uffd.copy(pageRangeOf(mem, index), page, { wp }), mem.pageSize);
  });
  assert.equal(missing.faults.length, pages, "one missing fault per page");
  for (const f of missing.faults) assert.deepEqual([f.write, f.wp, f.minor], [false, false, false], "a read fault");
  for (let i = 0; i < pages; i++) assert.equal(scratch[i * mem.pageSize + 7], i + 1, `page ${i} as copied`);
  if (!wp) return;
  // Every copied page is write-protected: a writer faults on each, and unprotecting lets it through.
  const writer = libc.memsetOffThread(mem.range.address, 0xee, BigInt(length));
  const protectedFaults = await serveUntil(uffd, writer, (fault) => {
    uffd.unprotect(pageRangeOf(mem, pageOf(mem, fault)));
  });
  assert.equal(protectedFaults.faults.length, pages, "one write-protect fault per page");
  for (const f of protectedFaults.faults) assert.deepEqual([f.write, f.wp, f.minor], [true, true, false]);
  assert.ok(mem.bytes.every((b) => b === 0xee), "the writer's bytes landed");
}

/**
 * The minor-fault path: the page cache is filled through a second mapping
 * that is not registered, a reader reads the registered one, and each minor
 * fault is resolved by flipping the page's bits and UFFDIO_CONTINUE — whose
 * second call on the same page must be EEXIST. With `wp`, CONTINUE maps the
 * pages write-protected and a writer's WP faults follow.
 */
async function minor(type: "shmem" | "hugetlb", pages: number, wp: boolean): Promise<void> {
  using backing = mapMemory(type, pages);
  using registered = backing.alias()!;
  using uffd = Userfaultfd.open({
    features: [Feature.MINOR_SHMEM, Feature.MINOR_HUGETLBFS, ...FEATURES],
    writers: "other-threads",
  });
  uffd.register(registered, { minor: true, wp });
  const size = backing.pageSize;
  // Populating the side that is not registered raises no fault.
  for (let i = 0; i < pages; i++) backing.bytes.fill(i % 255, i * size, (i + 1) * size);
  assert.deepEqual(uffd.readEvents(), []);
  const scratch = new Uint8Array(pages * size);
  const reader = libc.memcpyOffThread(libc.addressOf(scratch), registered.address, BigInt(pages * size));
  const served = await serveUntil(uffd, reader, (fault) => {
    const index = Number((fault.address - registered.address) / BigInt(size));
    const bytes = backing.bytes.subarray(index * size, (index + 1) * size);
    for (let b = 0; b < bytes.length; b++) bytes[b] = ~bytes[b]! & 0xff;
    const range = { address: registered.address + BigInt(index * size), length: size };
    assert.equal(uffd.continue(range, { wp }), size);
    assertUffdError(() => uffd.continue(range, { wp }), "EEXIST", /UFFDIO_CONTINUE/);
  });
  assert.equal(served.faults.length, pages, "one minor fault per page");
  for (const f of served.faults) assert.deepEqual([f.write, f.wp, f.minor], [false, false, true], "a minor read fault");
  for (let i = 0; i < pages; i++) {
    assert.equal(scratch[i * size + 3], ~(i % 255) & 0xff, `page ${i} read back bit-flipped`);
  }
  if (!wp) return;
  assert.ok(readPagemap({ address: registered.address, length: PAGE })[0]!.uffdWp, "CONTINUE with wp protects");
  const writer = libc.memsetOffThread(registered.address, 1, BigInt(pages * size));
  const writes = await serveUntil(uffd, writer, (fault) => {
    const index = Number((fault.address - registered.address) / BigInt(size));
    uffd.unprotect({ address: registered.address + BigInt(index * size), length: size });
  });
  assert.equal(writes.faults.length, pages);
  for (const f of writes.faults) assert.equal(f.wp, true);
  assert.equal(backing.bytes[pages * size - 1], 1, "the write went to the shared page");
}

for (const type of ["anon", "shmem", "shmem-private"] as const) {
  Deno.test(`uffd-unit-tests.c events on ${type}: missing faults from another thread, each resolved by UFFDIO_COPY`, () =>
    missingThenWp(type, 8, false));
  Deno.test(`uffd-unit-tests.c events-wp on ${type}: COPY with MODE_WP, then write-protect faults resolved by unprotect`, () =>
    missingThenWp(type, 8, true));
}

Deno.test("uffd-unit-tests.c minor on shmem: minor faults resolved by CONTINUE, a second CONTINUE is EEXIST", () =>
  minor("shmem", 8, false));

/** UFFDIO_CONTINUE_MODE_WP (Linux 6.4) as the profile measured it; no feature bit says so. */
const continueWp = kernelProfile().userfaultfd.continueWp === true;
const continueWpReason = `kernel ${Deno.osRelease()} refuses UFFDIO_CONTINUE_MODE_WP (6.4+)`;

Deno.test({
  name: "uffd-unit-tests.c minor-wp on shmem: CONTINUE with MODE_WP maps pages protected; writes fault",
  ignore: needs(Feature.MINOR_SHMEM, Feature.WP_HUGETLBFS_SHMEM) || skipUnless(continueWp, continueWpReason),
  fn: () => minor("shmem", 8, true),
});

Deno.test({
  name: "minor-wp where the kernel refuses CONTINUE_MODE_WP: EINVAL with a hint, the reader still served after close",
  ignore: needs(Feature.MINOR_SHMEM, Feature.WP_HUGETLBFS_SHMEM) ||
    skipUnless(!continueWp, `kernel ${Deno.osRelease()} accepts UFFDIO_CONTINUE_MODE_WP`),
  async fn() {
    // The kernel test's minor-wp as the kernel would run it here: CONTINUE with MODE_WP is refused. The failure
    // path must leave no thread in a fault and unmap nothing while the reader may still copy from it.
    const failed = await minor("shmem", 2, true).then(() => undefined, (e) => e);
    assert.ok(failed instanceof UffdError, String(failed));
    assert.equal(failed.code, "EINVAL");
    assert.match(failed.hint ?? "", /wp mode needs Linux 6\.4/);
  },
});

Deno.test({
  name: "uffd-unit-tests.c events, events-wp, minor, minor-wp on hugetlb and hugetlb-private",
  ignore: needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(8, async () => {
      await t.step("events on hugetlb", () => missingThenWp("hugetlb", 2, false));
      await t.step("events on hugetlb-private", () => missingThenWp("hugetlb-private", 2, false));
      await t.step("events-wp on hugetlb", () => missingThenWp("hugetlb", 2, true));
      await t.step("events-wp on hugetlb-private", () => missingThenWp("hugetlb-private", 2, true));
      await t.step("minor on hugetlb", () => minor("hugetlb", 2, false));
      await t.step({
        name: "minor-wp on hugetlb",
        ignore: skipUnless(continueWp, continueWpReason),
        fn: () => minor("hugetlb", 2, true),
      });
    });
  },
});

Deno.test("uffd-common.c retry_copy_page: COPY onto a page another mapping already filled is EEXIST, never a count", () => {
  using shm = Region.map(2 * PAGE, { memfd: true });
  using alias = shm.alias();
  using uffd = Userfaultfd.open({ features: FEATURES });
  uffd.register(shm, { missing: true });
  uffd.register(alias, { missing: true });
  assert.equal(uffd.copy(shm.pages(0), new Uint8Array(PAGE).fill(3)), PAGE);
  // The page is in the page cache now: the alias's PTE is empty, but the page exists.
  const e = assertUffdError(() => uffd.copy(alias.pages(0), new Uint8Array(PAGE)), "EEXIST", /already mapped/);
  assert.equal(e.beforeSyscall, false);
  assert.equal(alias.bytes[0], 3, "the alias sees the first copy, not the refused one");
});

Deno.test("uffd-common.c __copy_page: COPY with DONTWAKE leaves the thread blocked; a racing COPY's EEXIST, then WAKE, frees it", async () => {
  using mem = Region.map(2 * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  let done = false;
  const writer = libc.memsetOffThread(mem.address + P + 8n, 0x44, 8n).then(() => done = true);
  const fault = await nextFault(uffd, "the writer's fault");
  assert.equal(fault.address, mem.address + P);
  assert.equal(uffd.copy(mem.pages(1), new Uint8Array(PAGE).fill(1), { dontWake: true }), PAGE);
  await sleep(50);
  assert.equal(done, false, "with DONTWAKE the writer stays blocked");
  // A second resolver racing the first gets EEXIST, and wakes the range itself.
  assertUffdError(() => uffd.copy(mem.pages(1), new Uint8Array(PAGE)), "EEXIST");
  uffd.wake(mem.pages(1));
  await within(writer, 30_000, "the woken writer");
  assert.deepEqual([...mem.page(1).subarray(6, 18)], [1, 1, 68, 68, 68, 68, 68, 68, 68, 68, 1, 1]);
});

Deno.test({
  name:
    "uffd-unit-tests.c minor-collapse on shmem: MADV_COLLAPSE after CONTINUE raises no fault and keeps the contents",
  ignore: needs(Feature.MINOR_SHMEM),
  async fn() {
    const huge = 2 * 1024 * 1024;
    using backing = Region.map(huge, { memfd: true });
    // A 2 MiB-aligned shared alias, so that the whole file can be mapped by one PMD (MAP_FIXED: through ffi).
    using reserve = Region.map(2 * huge);
    const aligned = (reserve.address + BigInt(huge - 1)) / BigInt(huge) * BigInt(huge);
    const alias = libc.mmap(aligned, BigInt(huge), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, backing.fd!, 0n);
    assert.equal(alias, aligned);
    using uffd = Userfaultfd.open({ require: [Feature.MINOR_SHMEM] });
    const range = { address: alias, length: huge };
    uffd.register(range, { minor: true });
    for (let i = 0; i < huge / PAGE; i++) backing.bytes.fill(i & 0xff, i * PAGE, (i + 1) * PAGE);
    const scratch = new Uint8Array(huge);
    const reader = libc.memcpyOffThread(libc.addressOf(scratch), alias, BigInt(huge));
    const served = await serveUntil(uffd, reader, () => {
      const bytes = backing.bytes;
      for (let b = 0; b < bytes.length; b++) bytes[b] = ~bytes[b]! & 0xff;
      uffd.continue(range); // every page at once
    });
    assert.equal(served.faults.length, 1);
    assert.equal(scratch[5 * PAGE], ~5 & 0xff);
    const rc = libc.madvise(alias, BigInt(huge), MADV_COLLAPSE);
    if (rc < 0) {
      console.log(`%cskip: MADV_COLLAPSE failed with errno ${-rc} (allowed by the kernel test)`, "color: yellow");
      return;
    }
    const again = new Uint8Array(libc.bufferAt(alias, huge)).slice();
    assert.deepEqual(again, scratch, "no corruption after the collapse");
    assert.deepEqual(uffd.readEvents(), [], "the collapse raised no fault");
  },
});
