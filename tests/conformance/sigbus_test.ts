/**
 * UFFD_FEATURE_SIGBUS. Mirrors the kernel's "sigbus" and "sigbus-wp" tests
 * (tools/testing/selftests/mm/uffd-unit-tests.c, `faulting_process(1, wp)`): a
 * fault in a registered range raises SIGBUS instead of a message; after
 * UFFDIO_COPY (and, for wp, unprotecting) the access succeeds; no message is
 * ever queued.
 *
 * A SIGBUS kills a Deno process (there is no siglongjmp back into JavaScript),
 * so the signal itself is observed on a child process that must die of it. What
 * can be checked in-process is checked here: a system call touching the same
 * page fails with EFAULT instead of a signal, and the page works after COPY.
 */

import assert from "node:assert/strict";
import { Feature, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { needs } from "../helpers.ts";
import { describeChild, mapMemory, type MemType, needsHugetlbSetup, runChild, withHugePages } from "./helpers.ts";

const EFAULT = 14;
const FEATURES = [Feature.MISSING_SHMEM, Feature.MISSING_HUGETLBFS, Feature.WP_HUGETLBFS_SHMEM];

/** A read(2) from /dev/zero into `address`: the kernel writes the page on our behalf. */
function readInto(address: bigint, length: number): number {
  const zero = libc.open("/dev/zero", 0);
  try {
    return libc.read(zero, new Uint8Array(libc.bufferAt(address, length)), length);
  } finally {
    libc.close(zero);
  }
}

/** The child: registers one page with SIGBUS, prints "registered", touches it, prints "survived". */
function childSource(type: MemType, wp: boolean): string {
  return `
import { Feature, Userfaultfd } from "UFFD/mod.ts";
import { mapMemory } from "UFFD/tests/conformance/helpers.ts";
const mem = mapMemory(${JSON.stringify(type)}, 1);
const uffd = Userfaultfd.open({ require: [Feature.SIGBUS], features: ${JSON.stringify(FEATURES)} });
const page = { address: mem.range.address, length: mem.pageSize };
uffd.register(page, { missing: true, wp: ${wp} });
if (${wp}) uffd.copy(page, new Uint8Array(mem.pageSize), { wp: true });
console.log("registered");
${wp ? "mem.bytes[0] = 1;" : "console.log(mem.bytes[0]);"}
console.log("survived");
`;
}

async function sigbus(type: MemType, wp: boolean): Promise<void> {
  // In-process: EFAULT from a system call, no message, and the page works once resolved.
  {
    using mem = mapMemory(type, 1);
    using uffd = Userfaultfd.open({ require: [Feature.SIGBUS], features: FEATURES });
    const page = { address: mem.range.address, length: mem.pageSize };
    uffd.register(page, { missing: true, wp });
    if (wp) uffd.copy(page, new Uint8Array(mem.pageSize).fill(9), { wp: true });
    assert.equal(readInto(page.address, 64), -EFAULT, "a fault taken for a system call is EFAULT with SIGBUS");
    assert.deepEqual(uffd.readEvents(), [], "SIGBUS mode queues no message");
    if (wp) uffd.unprotect(page);
    else uffd.copy(page, new Uint8Array(mem.pageSize).fill(9));
    assert.equal(readInto(page.address, 64), 64, "resolved, the same call succeeds");
    assert.equal(mem.bytes[64], 9);
  }
  // A child touching the page itself dies of SIGBUS.
  const r = await runChild(childSource(type, wp), { timeoutMs: 15_000 });
  assert.equal(r.signal, "SIGBUS", describeChild(r));
  assert.match(r.stdout, /registered/, describeChild(r));
  assert.doesNotMatch(r.stdout, /survived/);
}

for (const type of ["anon", "shmem", "shmem-private"] as const) {
  Deno.test({
    name:
      `uffd-unit-tests.c sigbus on ${type}: a missing fault is SIGBUS (child), EFAULT for a syscall, COPY resolves it`,
    ignore: needs(Feature.SIGBUS),
    fn: () => sigbus(type, false),
  });
  Deno.test({
    name: `uffd-unit-tests.c sigbus-wp on ${type}: a write-protect fault is SIGBUS too; unprotect resolves it`,
    ignore: needs(Feature.SIGBUS),
    fn: () => sigbus(type, true),
  });
}

Deno.test({
  name: "uffd-unit-tests.c sigbus, sigbus-wp on hugetlb and hugetlb-private",
  ignore: needs(Feature.SIGBUS) || needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(8, async () => {
      for (const type of ["hugetlb", "hugetlb-private"] as const) {
        await t.step(`sigbus on ${type}`, () => sigbus(type, false));
        await t.step(`sigbus-wp on ${type}`, () => sigbus(type, true));
      }
    });
  },
});
