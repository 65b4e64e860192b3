/**
 * UFFDIO_POISON. Mirrors `uffd_poison_test()` ("poison") of
 * tools/testing/selftests/mm/uffd-unit-tests.c on every memory type: a range
 * registered for missing faults offers COPY and POISON; faults on odd pages are
 * resolved with a zero page and faults on even pages with POISON, and touching a
 * poisoned page raises SIGBUS. As for "sigbus", the signal is observed on a child
 * process; in-process, a system call touching a poisoned page fails with EFAULT.
 */

import assert from "node:assert/strict";
import { Feature, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { needs } from "../helpers.ts";
import {
  assertUffdError,
  describeChild,
  mapMemory,
  type MemType,
  needsHugetlbSetup,
  runChild,
  serveUntil,
  withHugePages,
} from "./helpers.ts";

const EFAULT = 14;

/** write(2) of `length` bytes at `address` to a memfd: the kernel reads the page on our behalf. */
function writeFrom(address: bigint, length: number): number {
  const fd = libc.memfdCreate("poison-probe", 1);
  try {
    return libc.write(fd, new Uint8Array(libc.bufferAt(address, length)), length);
  } finally {
    libc.close(fd);
  }
}

function childSource(type: MemType): string {
  return `
import { Feature, Userfaultfd } from "UFFD/mod.ts";
import * as libc from "UFFD/ffi/_libc.ts";
import { mapMemory, serveUntil } from "UFFD/tests/conformance/helpers.ts";
const mem = mapMemory(${JSON.stringify(type)}, 2);
const size = mem.pageSize;
const uffd = Userfaultfd.open({ require: [Feature.POISON] });
uffd.register(mem.range, { missing: true });
const scratch = new Uint8Array(8);
const at = (i) => ({ address: mem.range.address + BigInt(i * size), length: size });
// Odd page: the fault is resolved with zeros, the reader goes on.
await serveUntil(uffd, libc.memcpyOffThread(libc.addressOf(scratch), at(1).address, 8n), () => uffd.copy(at(1), new Uint8Array(size)));
console.log("odd page read");
// Even page: the fault is resolved with POISON, and the reading thread gets SIGBUS.
await serveUntil(uffd, libc.memcpyOffThread(libc.addressOf(scratch), at(0).address, 8n), () => uffd.poison(at(0)));
console.log("survived");
`;
}

async function poison(type: MemType): Promise<void> {
  {
    using mem = mapMemory(type, 4);
    using uffd = Userfaultfd.open({ require: [Feature.POISON] });
    const size = mem.pageSize;
    const at = (i: number) => ({ address: mem.range.address + BigInt(i * size), length: size });
    const allowed = uffd.register(mem.range, { missing: true });
    assert.ok(allowed.has("COPY") && allowed.has("POISON"), [...allowed].join(" "));
    // Even pages poisoned, odd pages served with zeros when a reader faults on them.
    assert.equal(uffd.poison(at(0)), size);
    assert.equal(uffd.poison(at(2)), size);
    for (const odd of [1, 3]) {
      const reader = libc.memcpyOffThread(libc.addressOf(new Uint8Array(8)), at(odd).address, 8n);
      const served = await serveUntil(uffd, reader, () => uffd.copy(at(odd), new Uint8Array(size)));
      assert.equal(served.faults.length, 1);
    }
    assert.ok(mem.bytes.subarray(size, 2 * size).every((b) => b === 0));
    for (const even of [0, 2]) {
      assert.equal(writeFrom(at(even).address, 64), -EFAULT, `a syscall reading poisoned page ${even}: EFAULT`);
    }
    assert.deepEqual(uffd.readEvents(), [], "a poisoned page raises no message");
    assertUffdError(() => uffd.poison(at(0)), "EEXIST", /already mapped/);
    assertUffdError(() => uffd.poison(at(1)), "EEXIST");
    // ZEROPAGE onto a poison marker: EEXIST on anonymous memory, but shmem's ZEROPAGE (like every COPY)
    // treats the marker as empty and replaces it. hugetlb has no ZEROPAGE at all.
    if (type === "shmem") assert.equal(uffd.zeropage(at(0)), size);
    else assertUffdError(() => uffd.zeropage(at(0)), type.startsWith("hugetlb") ? "EINVAL" : "EEXIST");
    // UFFDIO_COPY replaces a poison marker (markers count as empty), and the page is whole again.
    assert.equal(uffd.copy(at(2), new Uint8Array(size).fill(4)), size);
    assert.equal(writeFrom(at(2).address, 64), 64);
  }
  const r = await runChild(childSource(type), { timeoutMs: 15_000 });
  assert.equal(r.signal, "SIGBUS", describeChild(r));
  assert.match(r.stdout, /odd page read/, describeChild(r));
  assert.doesNotMatch(r.stdout, /survived/);
}

for (const type of ["anon", "shmem", "shmem-private"] as const) {
  Deno.test({
    name:
      `uffd-unit-tests.c poison on ${type}: odd pages served with zeros, even pages poisoned: SIGBUS, EFAULT, EEXIST`,
    ignore: needs(Feature.POISON),
    fn: () => poison(type),
  });
}

Deno.test({
  name: "uffd-unit-tests.c poison on hugetlb and hugetlb-private",
  ignore: needs(Feature.POISON) || needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(8, async () => {
      await t.step("hugetlb", () => poison("hugetlb"));
      await t.step("hugetlb-private", () => poison("hugetlb-private"));
    });
  },
});
